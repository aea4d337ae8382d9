#include "lowbit/optim/lr_scheduler.h"

#include <cmath>

namespace lowbit::optim {

namespace {
constexpr double kPi = 3.14159265358979323846;
double cos_anneal(double start, double end, double pct) {
  return end + (start - end) / 2.0 * (std::cos(kPi * pct) + 1.0);
}
}  // namespace

LRScheduler::LRScheduler(Optimizer& opt) : opt_(opt) {
  for (size_t g = 0; g < opt.param_groups().size(); ++g) base_lrs_.push_back(opt.lr(g));
  last_lr_ = base_lrs_;
}
void LRScheduler::apply() {
  last_lr_.clear();
  for (size_t g = 0; g < opt_.param_groups().size(); ++g) {
    const double lr = lr_at(last_epoch_, g);
    opt_.param_groups()[g].options["lr"] = lr;
    last_lr_.push_back(lr);
  }
  on_apply();
}
void LRScheduler::step() {
  ++last_epoch_;
  apply();
}
void LRScheduler::set_last_epoch(int64_t epoch) {
  LOWBIT_CHECK(epoch >= 0, "LRScheduler: last_epoch must be >= 0, got {}", epoch);
  last_epoch_ = epoch;
  apply();
}

StepLR::StepLR(Optimizer& opt, int64_t s, double g) : LRScheduler(opt), step_size(s), gamma(g) {
  LOWBIT_CHECK(s > 0, "StepLR: step_size must be positive, got {}", s);
  apply();
}
double StepLR::lr_at(int64_t e, size_t g) const {
  return base_lrs_[g] * std::pow(gamma, static_cast<double>(e / step_size));
}

CosineAnnealingLR::CosineAnnealingLR(Optimizer& opt, int64_t t, double eta) : LRScheduler(opt), T_max(t), eta_min(eta) {
  LOWBIT_CHECK(t > 0, "CosineAnnealingLR: T_max must be positive, got {}", t);
  apply();
}
double CosineAnnealingLR::lr_at(int64_t e, size_t g) const {
  return eta_min +
         (base_lrs_[g] - eta_min) * (1.0 + std::cos(kPi * static_cast<double>(e) / static_cast<double>(T_max))) / 2.0;
}

WarmupCosineLR::WarmupCosineLR(Optimizer& opt, int64_t w, int64_t t, double m)
    : LRScheduler(opt), warmup_steps(w), total_steps(t), min_lr(m) {
  LOWBIT_CHECK(w >= 0 && t > w, "WarmupCosineLR: need 0 <= warmup_steps ({}) < total_steps ({})", w, t);
  apply();
}
double WarmupCosineLR::lr_at(int64_t e, size_t g) const {
  if (e < warmup_steps) return base_lrs_[g] * static_cast<double>(e + 1) / static_cast<double>(warmup_steps);
  const double pct =
      std::min(1.0, static_cast<double>(e - warmup_steps) / static_cast<double>(total_steps - warmup_steps));
  return cos_anneal(base_lrs_[g], min_lr, pct);
}

OneCycleLR::OneCycleLR(Optimizer& opt, double mx, int64_t total, double pct, double div, double final_div, bool cycle,
                       double base_m, double max_m)
    : LRScheduler(opt),
      max_lr(mx),
      pct_start(pct),
      div_factor(div),
      final_div_factor(final_div),
      total_steps(total),
      cycle_momentum(cycle),
      base_momentum(base_m),
      max_momentum(max_m) {
  LOWBIT_CHECK(total > 1, "OneCycleLR: total_steps must be > 1, got {}", total);
  LOWBIT_CHECK(pct > 0 && pct < 1, "OneCycleLR: expected pct_start in (0, 1), got {}", pct);
  for (auto& b : base_lrs_) b = max_lr / div_factor;
  apply();
}
void OneCycleLR::on_apply() {
  if (!cycle_momentum) return;
  const double m = momentum_at(last_epoch_);
  for (auto& g : opt_.param_groups()) {
    if (g.options.count("beta1"))
      g.options["beta1"] = m;
    else if (g.options.count("momentum"))
      g.options["momentum"] = m;
  }
}
double OneCycleLR::lr_at(int64_t e, size_t) const {
  LOWBIT_CHECK(e <= total_steps, "OneCycleLR: tried to step {} times; the specified number of total steps is {}", e,
               total_steps);
  const double initial = max_lr / div_factor, min_lr = initial / final_div_factor;
  const double end1 = pct_start * static_cast<double>(total_steps) - 1.0, end2 = static_cast<double>(total_steps) - 1.0;
  const double step = static_cast<double>(e);
  if (step <= end1) return cos_anneal(initial, max_lr, step / end1);
  return cos_anneal(max_lr, min_lr, (step - end1) / (end2 - end1));
}
double OneCycleLR::momentum_at(int64_t e) const {
  const double end1 = pct_start * static_cast<double>(total_steps) - 1.0, end2 = static_cast<double>(total_steps) - 1.0;
  const double step = static_cast<double>(e);
  if (step <= end1) return cos_anneal(max_momentum, base_momentum, step / end1);
  return cos_anneal(base_momentum, max_momentum, (step - end1) / (end2 - end1));
}

}  // namespace lowbit::optim
