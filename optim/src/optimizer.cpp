// Update rules follow torch.optim's single-tensor implementations, in their order of float32
// operations (scalars are rounded to float32 where PyTorch multiplies a float tensor by a Python
// float). Each tensor is updated in one fused pass, split over threads.
#include "lowbit/optim/optimizer.h"

#include <omp.h>

#include <cmath>
#include <limits>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/parallel.h"

namespace lowbit::optim {

namespace {
// elementwise updates: tensors of at least kGrain elements split over the threads (the engine's
// detail::parallel_for) on kAlign-element boundaries, so each thread's vector loop stays aligned
constexpr int64_t kGrain = 65536, kAlign = 16;
void check_param(const Tensor& p, const char* opt, bool bf16_ok) {
  LOWBIT_CHECK(p.defined() && (p.dtype() == kFloat32 || (bf16_ok && p.dtype() == kBFloat16)),
               "{}: parameters must be float32{} tensors, got {}", opt, bf16_ok ? " or bfloat16" : "",
               p.defined() ? dtype_name(p.dtype()) : "undefined");
  LOWBIT_CHECK(p.is_leaf(), "{}: can't optimize a non-leaf Tensor (shape {})", opt, shape_str(p.shape()));
}
}  // namespace

Optimizer::Optimizer(std::vector<ParamGroup> groups, Options defaults, std::string name, bool bf16_params)
    : defaults_(std::move(defaults)), name_(std::move(name)), bf16_params_(bf16_params) {
  LOWBIT_CHECK(!groups.empty(), "{}: optimizer got an empty parameter list", name_);
  for (auto& g : groups) add_param_group(std::move(g));
}
void Optimizer::add_param_group(ParamGroup g) {
  LOWBIT_CHECK(!g.params.empty(), "{}: parameter group {} is empty", name_, groups_.size());
  for (auto& [k, v] : g.options)
    LOWBIT_CHECK(defaults_.count(k), "{}: unknown option '{}' in parameter group {}", name_, k, groups_.size());
  for (auto& [k, v] : defaults_)
    if (!g.options.count(k)) g.options[k] = v;
  for (size_t i = 0; i < g.params.size(); ++i) {
    const Tensor& p = g.params[i];
    check_param(p, name_.c_str(), bf16_params_);
    for (size_t j = 0; j < i; ++j)
      LOWBIT_CHECK(g.params[j].impl() != p.impl(),
                   "{}: parameter group {} contains the same parameter twice (positions {} and {})", name_,
                   groups_.size(), j, i);
    for (auto& og : groups_)
      for (auto& q : og.params)
        LOWBIT_CHECK(q.impl() != p.impl(), "{}: some parameters appear in more than one parameter group", name_);
  }
  groups_.push_back(std::move(g));
}
double Optimizer::opt(const ParamGroup& g, const char* key) const { return g.options.at(key); }
void Optimizer::zero_grad(bool set_to_none) {
  for (auto& g : groups_)
    for (auto& p : g.params) {
      if (set_to_none || !p.grad().defined())
        p.set_grad(Tensor());
      else
        p.grad().zero_();
    }
}
double Optimizer::lr(size_t g) const {
  LOWBIT_CHECK(g < groups_.size(), "{}: no parameter group {}", name_, g);
  return groups_[g].options.at("lr");
}
void Optimizer::set_lr(double lr) {
  for (auto& g : groups_) g.options["lr"] = lr;
}
ParamState& Optimizer::state_of(const Tensor& p) { return state_[p.impl()]; }
std::vector<StateAttribute> Optimizer::state_attributes(const Tensor&, const std::string&) const { return {}; }
const ParamState* Optimizer::find_state(const Tensor& p) const {
  auto it = state_.find(p.impl());
  return it == state_.end() ? nullptr : &it->second;
}

OptimizerState Optimizer::state_dict() const {
  OptimizerState s;
  int64_t index = 0;
  for (const auto& g : groups_) {
    s.groups.push_back(g.options);
    s.group_params.emplace_back();
    for (const auto& p : g.params) {
      s.group_params.back().push_back(index);
      if (auto* st = find_state(p)) s.state[index] = *st;
      ++index;
    }
  }
  return s;
}
bool Optimizer::state_layout(const Tensor& p, const std::string&, Shape& shape, DType& dtype) const {
  shape = p.shape();
  dtype = kFloat32;
  return true;
}

void Optimizer::load_state_dict(const OptimizerState& s) {
  LOWBIT_CHECK(s.groups.size() == groups_.size() && s.group_params.size() == groups_.size(),
               "{}.load_state_dict: loaded state has {} parameter groups, the optimizer has {}", name_, s.groups.size(),
               groups_.size());
  std::map<const TensorImpl*, ParamState> fresh;
  for (size_t g = 0; g < groups_.size(); ++g) {
    LOWBIT_CHECK(s.group_params[g].size() == groups_[g].params.size(),
                 "{}.load_state_dict: group {} has {} parameters in the loaded state but {} in the optimizer", name_, g,
                 s.group_params[g].size(), groups_[g].params.size());
    for (auto& [k, v] : s.groups[g])
      LOWBIT_CHECK(defaults_.count(k), "{}.load_state_dict: unknown option '{}' in group {}", name_, k, g);
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      auto it = s.state.find(s.group_params[g][i]);
      if (it == s.state.end()) continue;
      const Tensor& p = groups_[g].params[i];
      ParamState st;
      st.step = it->second.step;
      for (auto& [name, t] : it->second.tensors) {
        Shape want;
        DType wdt;
        LOWBIT_CHECK(state_layout(p, name, want, wdt), "{}.load_state_dict: unexpected state '{}' of parameter {}",
                     name_, name, s.group_params[g][i]);
        LOWBIT_CHECK(t.defined() && t.shape() == want && t.dtype() == wdt,
                     "{}.load_state_dict: state '{}' of parameter {} is {}, expected {} {}", name_, name,
                     s.group_params[g][i], t.defined() ? detail::desc(t) : "undefined", shape_str(want),
                     dtype_name(wdt));
        st.tensors[name] = t.clone();
      }
      fresh[p.impl()] = std::move(st);
    }
  }
  for (size_t g = 0; g < groups_.size(); ++g)
    for (auto& [k, v] : s.groups[g]) groups_[g].options[k] = v;
  state_ = std::move(fresh);
}

// ---------------- SGD ----------------
namespace {
Options sgd_defaults(const SGDOptions& o) {
  LOWBIT_CHECK(o.lr >= 0, "SGD: invalid learning rate: {}", o.lr);
  LOWBIT_CHECK(o.momentum >= 0, "SGD: invalid momentum value: {}", o.momentum);
  LOWBIT_CHECK(o.weight_decay >= 0, "SGD: invalid weight_decay value: {}", o.weight_decay);
  LOWBIT_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0),
               "SGD: Nesterov momentum requires a momentum and zero dampening");
  return {{"lr", o.lr},
          {"momentum", o.momentum},
          {"dampening", o.dampening},
          {"weight_decay", o.weight_decay},
          {"nesterov", o.nesterov ? 1.0 : 0.0},
          {"maximize", o.maximize ? 1.0 : 0.0}};
}
}  // namespace
SGD::SGD(std::vector<Tensor> params, SGDOptions o) : SGD(std::vector<ParamGroup>{{std::move(params), {}}}, o) {}
SGD::SGD(std::vector<ParamGroup> groups, SGDOptions o) : Optimizer(std::move(groups), sgd_defaults(o), "SGD") {}

void SGD::step() {
  NoGradGuard ng;
  for (auto& g : groups_) {
    const float lr = static_cast<float>(opt(g, "lr")), mom = static_cast<float>(opt(g, "momentum"));
    const float damp = static_cast<float>(1.0 - opt(g, "dampening")), wd = static_cast<float>(opt(g, "weight_decay"));
    const bool nesterov = opt(g, "nesterov") != 0, maximize = opt(g, "maximize") != 0;
    for (auto& p : g.params) {
      if (!p.grad().defined()) continue;
      const Tensor grad = p.grad().to(kFloat32);
      ParamState& st = state_of(p);
      const bool first = st.step == 0;
      ++st.step;
      float* w = p.data_ptr<float>();
      const float* gr = grad.data_ptr<float>();
      float* buf = nullptr;
      if (mom != 0.0f) {
        Tensor& b = st.tensors["momentum_buffer"];
        if (!b.defined()) b = empty(p.shape());
        buf = b.data_ptr<float>();
      }
      detail::parallel_for(
          p.numel(), kGrain,
          [&](int64_t s, int64_t e) {
#pragma omp simd
            for (int64_t i = s; i < e; ++i) {
              float d = maximize ? -gr[i] : gr[i];
              if (wd != 0.0f) d = d + wd * w[i];
              if (buf) {
                buf[i] = first ? d : buf[i] * mom + damp * d;
                d = nesterov ? d + mom * buf[i] : buf[i];
              }
              w[i] = w[i] - lr * d;
            }
          },
          kAlign);
    }
  }
}

// ---------------- Adam / AdamW ----------------
namespace {
Options adam_defaults(const AdamOptions& o, const char* name) {
  LOWBIT_CHECK(o.lr >= 0, "{}: invalid learning rate: {}", name, o.lr);
  LOWBIT_CHECK(o.eps >= 0, "{}: invalid epsilon value: {}", name, o.eps);
  LOWBIT_CHECK(o.beta1 >= 0 && o.beta1 < 1, "{}: invalid beta parameter at index 0: {}", name, o.beta1);
  LOWBIT_CHECK(o.beta2 >= 0 && o.beta2 < 1, "{}: invalid beta parameter at index 1: {}", name, o.beta2);
  LOWBIT_CHECK(o.weight_decay >= 0, "{}: invalid weight_decay value: {}", name, o.weight_decay);
  return {{"lr", o.lr},
          {"beta1", o.beta1},
          {"beta2", o.beta2},
          {"eps", o.eps},
          {"weight_decay", o.weight_decay},
          {"amsgrad", o.amsgrad ? 1.0 : 0.0},
          {"maximize", o.maximize ? 1.0 : 0.0}};
}
}  // namespace
Adam::Adam(std::vector<Tensor> params, AdamOptions o)
    : Adam(std::vector<ParamGroup>{{std::move(params), {}}}, o, "Adam", false) {}
Adam::Adam(std::vector<ParamGroup> groups, AdamOptions o) : Adam(std::move(groups), o, "Adam", false) {}
Adam::Adam(std::vector<ParamGroup> groups, AdamOptions o, std::string name, bool decoupled)
    : Optimizer(std::move(groups), adam_defaults(o, name.c_str()), name), decoupled_(decoupled) {}
AdamW::AdamW(std::vector<Tensor> params, AdamOptions o)
    : Adam(std::vector<ParamGroup>{{std::move(params), {}}}, o, "AdamW", true) {}
AdamW::AdamW(std::vector<ParamGroup> groups, AdamOptions o) : Adam(std::move(groups), o, "AdamW", true) {}

void Adam::step() {
  NoGradGuard ng;
  for (auto& g : groups_) {
    const double lr = opt(g, "lr"), b1 = opt(g, "beta1"), b2 = opt(g, "beta2"), eps = opt(g, "eps"),
                 wd = opt(g, "weight_decay");
    const bool amsgrad = opt(g, "amsgrad") != 0, maximize = opt(g, "maximize") != 0;
    for (auto& p : g.params) {
      if (!p.grad().defined()) continue;
      const Tensor grad = p.grad().to(kFloat32);
      ParamState& st = state_of(p);
      Tensor& m_t = st.tensors["exp_avg"];
      Tensor& v_t = st.tensors["exp_avg_sq"];
      if (!m_t.defined()) {
        m_t = zeros(p.shape());
        v_t = zeros(p.shape());
        if (amsgrad) st.tensors["max_exp_avg_sq"] = zeros(p.shape());
      }
      const int64_t step = ++st.step;
      const double bc1 = 1.0 - std::pow(b1, static_cast<double>(step));
      const double bc2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(step)));
      // float32 scalars as PyTorch applies them to float tensors
      const float decay = static_cast<float>(1.0 - lr * wd), wd_f = static_cast<float>(wd);
      const float w1 = static_cast<float>(1.0 - b1), b2f = static_cast<float>(b2), w2 = static_cast<float>(1.0 - b2);
      const float bc2s = static_cast<float>(bc2_sqrt), eps_f = static_cast<float>(eps),
                  neg_step = static_cast<float>(-(lr / bc1));
      const bool decoupled = decoupled_;
      float* w = p.data_ptr<float>();
      const float* gr = grad.data_ptr<float>();
      float* m = m_t.data_ptr<float>();
      float* v = v_t.data_ptr<float>();
      float* vmax = amsgrad ? st.tensors["max_exp_avg_sq"].data_ptr<float>() : nullptr;
      detail::parallel_for(
          p.numel(), kGrain,
          [&](int64_t s, int64_t e) {
            if (vmax) {
              for (int64_t i = s; i < e; ++i) {
                float gi = maximize ? -gr[i] : gr[i];
                if (decoupled)
                  w[i] = w[i] * decay;
                else if (wd_f != 0.0f)
                  gi = gi + wd_f * w[i];
                m[i] = m[i] + w1 * (gi - m[i]);
                v[i] = v[i] * b2f + w2 * gi * gi;
                vmax[i] = std::max(vmax[i], v[i]);
                const float denom = std::sqrt(vmax[i]) / bc2s + eps_f;
                w[i] = w[i] + neg_step * (m[i] / denom);
              }
              return;
            }
#pragma omp simd
            for (int64_t i = s; i < e; ++i) {
              float gi = maximize ? -gr[i] : gr[i];
              float wi = w[i];
              if (decoupled)
                wi = wi * decay;
              else
                gi = gi + wd_f * wi;
              const float mi = m[i] + w1 * (gi - m[i]);
              const float vi = v[i] * b2f + w2 * gi * gi;
              m[i] = mi;
              v[i] = vi;
              const float denom = std::sqrt(vi) / bc2s + eps_f;
              w[i] = wi + neg_step * (mi / denom);
            }
          },
          kAlign);
    }
  }
}

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type, bool error_if_nonfinite) {
  LOWBIT_CHECK(norm_type == 2.0 || std::isinf(norm_type), "clip_grad_norm_: norm_type must be 2 or inf, got {}",
               norm_type);
  NoGradGuard ng;
  std::vector<double> terms(params.size(), 0.0);
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    if (p.grad().defined()) terms[i] = grad_norm_term(p.grad(), norm_type);
  }
  return clip_grad_norm_from_terms(params, terms, max_norm, norm_type, error_if_nonfinite);
}

double grad_norm_term(const Tensor& grad, double norm_type) {
  NoGradGuard ng;
  const Tensor g = grad.to(kFloat32);
  return std::isinf(norm_type) ? static_cast<double>(amax(abs(g)).item<float>()) : sum(mul(g, g)).item<double>();
}

double clip_grad_norm_from_terms(const std::vector<Tensor>& params, const std::vector<double>& terms, double max_norm,
                                 double norm_type, bool error_if_nonfinite) {
  LOWBIT_CHECK(terms.size() == params.size(), "clip_grad_norm_from_terms: {} terms for {} parameters", terms.size(),
               params.size());
  NoGradGuard ng;
  double total = 0;
  for (double t : terms) total = std::isinf(norm_type) ? std::max(total, t) : total + t;
  if (!std::isinf(norm_type)) total = std::sqrt(total);
  LOWBIT_CHECK(!error_if_nonfinite || std::isfinite(total),
               "clip_grad_norm_: the total norm of order {} for gradients is non-finite, so it cannot be clipped",
               norm_type);
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1.0) {
    for (const auto& p : params) {
      if (!p.grad().defined()) continue;
      p.grad().copy_(mul(p.grad(), coef));
    }
  }
  return total;
}

}  // namespace lowbit::optim
