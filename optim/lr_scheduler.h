// Learning-rate schedulers (PyTorch semantics): construct after the optimizer, call step()
// once per scheduler step after optimizer.step(). get_last_lr() is the rate now in effect.
#pragma once
#include <vector>

#include "lowbit/optim/optimizer.h"

namespace lowbit::optim {

class LRScheduler {
 public:
  explicit LRScheduler(Optimizer& opt);
  virtual ~LRScheduler() = default;
  /// Advances one step and writes the new rate into every param group.
  void step();
  std::vector<double> get_last_lr() const { return last_lr_; }
  int64_t last_epoch() const { return last_epoch_; }
  /// Restores the position (for resume): sets last_epoch and re-applies its rates.
  void set_last_epoch(int64_t epoch);
  /// The rate of group g at scheduler step `epoch` (closed form).
  virtual double lr_at(int64_t epoch, size_t g) const = 0;
  /// The class name (stored in checkpoints; a resume into another scheduler is refused).
  virtual const char* name() const = 0;

 protected:
  void apply();
  /// Extra per-step work (OneCycleLR cycles momentum).
  virtual void on_apply() {}
  Optimizer& opt_;
  std::vector<double> base_lrs_;
  std::vector<double> last_lr_;
  int64_t last_epoch_ = 0;
};

/// base_lr * gamma^(epoch / step_size)
class StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& opt, int64_t step_size, double gamma = 0.1);
  double lr_at(int64_t epoch, size_t g) const override;
  const char* name() const override { return "StepLR"; }
  int64_t step_size;
  double gamma;
};

/// eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2
class CosineAnnealingLR : public LRScheduler {
 public:
  CosineAnnealingLR(Optimizer& opt, int64_t T_max, double eta_min = 0.0);
  double lr_at(int64_t epoch, size_t g) const override;
  const char* name() const override { return "CosineAnnealingLR"; }
  int64_t T_max;
  double eta_min;
};

/// Linear warmup from base_lr/warmup_steps to base_lr over warmup_steps, then cosine decay to
/// min_lr at total_steps (torchtitan's "warmup + cosine").
class WarmupCosineLR : public LRScheduler {
 public:
  WarmupCosineLR(Optimizer& opt, int64_t warmup_steps, int64_t total_steps, double min_lr = 0.0);
  double lr_at(int64_t epoch, size_t g) const override;
  const char* name() const override { return "WarmupCosineLR"; }
  int64_t warmup_steps, total_steps;
  double min_lr;
};

/// torch.optim.lr_scheduler.OneCycleLR (two phases, cosine annealing). With cycle_momentum,
/// "beta1" (Adam family) or "momentum" (SGD) cycles inversely between max and base momentum.
class OneCycleLR : public LRScheduler {
 public:
  OneCycleLR(Optimizer& opt, double max_lr, int64_t total_steps, double pct_start = 0.3, double div_factor = 25.0,
             double final_div_factor = 1e4, bool cycle_momentum = true, double base_momentum = 0.85,
             double max_momentum = 0.95);
  double lr_at(int64_t epoch, size_t g) const override;
  const char* name() const override { return "OneCycleLR"; }
  double momentum_at(int64_t epoch) const;
  void on_apply() override;
  double max_lr, pct_start, div_factor, final_div_factor;
  int64_t total_steps;
  bool cycle_momentum;
  double base_momentum, max_momentum;
};

}  // namespace lowbit::optim
