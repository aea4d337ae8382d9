// nn::Module: a tree of named parameters, buffers and children, as in torch.nn.Module.
// Names are PyTorch's dotted paths ("blocks.0.attn.qkv.weight"); registration order is kept.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/autograd/tensor.h"

namespace lowbit::nn {

/// Ordered (name, tensor) pairs, as returned by state_dict().
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

/// What load_state_dict found (strict mode throws instead when any list is non-empty).
struct LoadResult {
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
  std::vector<std::string> shape_mismatches;  // "key: expected [..], got [..]"
};

class Module : public std::enable_shared_from_this<Module> {
 public:
  virtual ~Module() = default;
  /// Class name as printed ("Linear").
  virtual std::string type_name() const = 0;
  /// The part inside the parentheses of the repr ("in_features=4, out_features=2, bias=True").
  virtual std::string extra_repr() const { return ""; }
  /// Single-input forward; modules with other signatures throw.
  virtual Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) { return forward(x); }

  // ---- registration (returns a handle that shares the registered tensor) ----
  Tensor register_parameter(const std::string& name, Tensor t, bool requires_grad = true);
  Tensor register_buffer(const std::string& name, Tensor t);
  /// Points an existing parameter entry at another tensor (weight tying); throws if absent.
  void replace_parameter(const std::string& name, Tensor t);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

  // ---- traversal ----
  NamedTensors named_parameters(bool recurse = true) const;
  std::vector<Tensor> parameters(bool recurse = true) const;
  NamedTensors named_buffers(bool recurse = true) const;
  /// Every module in the tree with its dotted name; the root is "".
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules();
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const { return children_; }
  std::vector<std::shared_ptr<Module>> children() const;
  /// The submodule at a dotted path ("blocks.0.attn"); throws naming the missing part.
  std::shared_ptr<Module> get_submodule(const std::string& path);
  /// Replaces the submodule at a dotted path (how prepare/convert swap Linear for variants).
  void replace_module(const std::string& path, std::shared_ptr<Module> replacement);
  /// Runs fn on every module, children first, then this one (like torch's apply).
  void apply(const std::function<void(Module&)>& fn);

  // ---- modes and state ----
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  /// Clears gradients (set_to_none, like PyTorch's default) or zeroes them in place.
  void zero_grad(bool set_to_none = true);
  /// Converts floating parameters and buffers in place (handles stay valid).
  void to(DType dtype);
  /// Parameters then buffers of each module, in registration order (PyTorch's order).
  NamedTensors state_dict() const;
  /// Copies values into this module's tensors. strict: any missing/unexpected key or shape
  /// mismatch throws one lowbit::Error listing all of them; non-strict loads what matches.
  LoadResult load_state_dict(const NamedTensors& state, bool strict = true);
  /// Total number of parameter elements.
  int64_t num_parameters() const;

  /// Attributes a checkpoint stores on this module's group (quantized modules describe their
  /// scheme here; see docs/checkpoint-format.md). Empty by default.
  virtual std::map<std::string, std::string> checkpoint_attributes() const { return {}; }

  /// PyTorch-style repr of the module tree.
  std::string to_string() const;

 protected:
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  bool training_ = true;

 private:
  void collect(const std::string& prefix, bool recurse, bool params, NamedTensors& out) const;
  NamedTensors params_;
  NamedTensors buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

std::ostream& operator<<(std::ostream& os, const Module& m);

/// Replaces the contents of `dst`'s impl with `src` (shape, dtype, storage), keeping every
/// handle to dst valid. Used by to(dtype) and by loaders.
void assign_tensor(const Tensor& dst, const Tensor& src);

}  // namespace lowbit::nn
