// Optimizers with PyTorch semantics: param groups with per-group options, SGD, Adam, AdamW
// (amsgrad, maximize), state_dict/load_state_dict, gradient clipping.
// The Adam family's update is one fused, multi-threaded pass per tensor (memory-bound).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "lowbit/autograd/tensor.h"

namespace lowbit::optim {

/// Hyperparameters by name ("lr", "weight_decay", "beta1", "beta2", "eps", "momentum", ...).
using Options = std::map<std::string, double>;

struct ParamGroup {
  std::vector<Tensor> params;
  Options options;  // missing keys take the optimizer's defaults
};

/// Per-parameter state: a step count and named tensors ("exp_avg", "momentum_buffer", ...).
struct ParamState {
  int64_t step = 0;
  std::map<std::string, Tensor> tensors;
};

/// Serializable optimizer state; parameters are identified by their index over all groups
/// (as in PyTorch); checkpoints map indices to parameter names.
struct OptimizerState {
  std::vector<Options> groups;
  std::vector<std::vector<int64_t>> group_params;
  std::map<int64_t, ParamState> state;
};

/// A checkpoint attribute of a state tensor (the code book's name, the block size): text, or an
/// integer when `text` is empty.
struct StateAttribute {
  std::string name, text;
  int64_t number = 0;
};

class Optimizer {
 public:
  /// bf16_params: the optimizer also updates bfloat16 parameters (the low-bit Adams).
  Optimizer(std::vector<ParamGroup> groups, Options defaults, std::string name, bool bf16_params = false);
  virtual ~Optimizer() = default;
  virtual void step() = 0;
  /// Clears the gradients of all parameters (set_to_none, PyTorch's default) or zeroes them.
  void zero_grad(bool set_to_none = true);
  void add_param_group(ParamGroup group);
  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  const std::string& name() const { return name_; }
  /// Learning rate of group g (schedulers write it).
  double lr(size_t g = 0) const;
  void set_lr(double lr);

  OptimizerState state_dict() const;
  /// Restores groups' options and per-parameter state; throws naming the first mismatch
  /// (group count, parameter count per group, state tensor shapes).
  void load_state_dict(const OptimizerState& s);
  /// The shape and dtype a state tensor `key` of parameter p must have (load_state_dict and
  /// checkpoint reading check it before anything is allocated); false for a key this optimizer
  /// does not keep. Default: the parameter's shape, float32, any key.
  virtual bool state_layout(const Tensor& p, const std::string& key, Shape& shape, DType& dtype) const;
  /// Attributes the state tensor `key` of p carries in checkpoints: written with it, and checked
  /// when a checkpoint is read (a mismatch throws naming both). Default: none.
  virtual std::vector<StateAttribute> state_attributes(const Tensor& p, const std::string& key) const;
  /// State of one parameter (created empty on first use).
  ParamState& state_of(const Tensor& p);
  const ParamState* find_state(const Tensor& p) const;

 protected:
  double opt(const ParamGroup& g, const char* key) const;
  std::vector<ParamGroup> groups_;
  Options defaults_;
  std::map<const TensorImpl*, ParamState> state_;

 private:
  std::string name_;
  bool bf16_params_ = false;
};

struct SGDOptions {
  double lr = 1e-3, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false, maximize = false;
};
class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, SGDOptions o);
  SGD(std::vector<ParamGroup> groups, SGDOptions o);
  void step() override;
};

struct AdamOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool amsgrad = false, maximize = false;
};
/// Adam: L2 penalty added to the gradient.
class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, AdamOptions o);
  Adam(std::vector<ParamGroup> groups, AdamOptions o);
  void step() override;

 protected:
  Adam(std::vector<ParamGroup> groups, AdamOptions o, std::string name, bool decoupled);
  bool decoupled_;
};
/// AdamW: decoupled weight decay (default 1e-2, as PyTorch).
class AdamW : public Adam {
 public:
  AdamW(std::vector<Tensor> params, AdamOptions o = with_default_decay());
  AdamW(std::vector<ParamGroup> groups, AdamOptions o = with_default_decay());
  static AdamOptions with_default_decay() {
    AdamOptions o;
    o.weight_decay = 1e-2;
    return o;
  }
};

/// Scales gradients so their total norm is at most max_norm; returns the total norm before
/// clipping (norm_type 2 or infinity). Non-finite total norms throw when error_if_nonfinite.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type = 2.0,
                       bool error_if_nonfinite = false);
/// One parameter's term of clip_grad_norm_: its gradient's squared 2-norm (float32 sum of
/// squares, as a double), or its max-abs for norm_type inf.
double grad_norm_term(const Tensor& grad, double norm_type = 2.0);
/// The second half of clip_grad_norm_, from one term per parameter (its squared 2-norm, or its
/// max-abs for norm_type inf; 0 without a gradient) -- for callers that assemble the terms
/// elsewhere (data-parallel ranks that each hold part of the gradients). Scales the gradients
/// that are present.
double clip_grad_norm_from_terms(const std::vector<Tensor>& params, const std::vector<double>& terms, double max_norm,
                                 double norm_type = 2.0, bool error_if_nonfinite = false);

}  // namespace lowbit::optim
