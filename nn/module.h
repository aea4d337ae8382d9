// nn::Module: a tree of named parameters, buffers and children, as in torch.nn.Module.
// Names are PyTorch's dotted paths ("blocks.0.attn.qkv.weight"); registration order is kept.
#pragma once
#include <functional>
#include <map>
#include <variant>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/autograd/tensor.h"

namespace lowbit::nn {

/// Constructor tag: build a module without its children or tensors — a file's loader
/// (io::load_model) attaches them. Allocates nothing and draws no random numbers.
struct Unbuilt {};

/// Ordered (name, tensor) pairs, as returned by state_dict().
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

/// What load_state_dict found (strict mode throws instead when any list is non-empty).
struct LoadResult {
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
  std::vector<std::string> shape_mismatches;  // "key: expected [..], got [..]"
};

/// A value a checkpoint stores on a module's group: an integer, a float, a string or a list of
/// integers (HDF5 attributes of those types; never numbers inside strings).
using AttrValue = std::variant<int64_t, double, std::string, std::vector<int64_t>>;
using Attributes = std::map<std::string, AttrValue>;

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
  /// Bytes of the state_dict's tensors (parameters and buffers, as stored).
  int64_t num_bytes() const;

  /// What rebuilds this module besides its tensors: constructor arguments (Dropout's p,
  /// LayerNorm's eps) and, for quantized modules, their scheme as structured values. A
  /// checkpoint writes them on the module's group next to `module_type` = type_name();
  /// build_module() reads them back. See docs/checkpoint-format.md.
  virtual Attributes checkpoint_attributes() const { return {}; }
  /// Attaches a child built from a file: replaces an existing child of that name, else adds it
  /// (ModuleList and Sequential append, and need the names "0", "1", ... in order).
  virtual void attach_child(const std::string& name, std::shared_ptr<Module> child);
  /// Called by io::load_model once every child of a module built from a file is attached:
  /// modules that need particular children check here that the file gave them (an error names
  /// what is missing), so a bad file fails at load, not in the first forward.
  virtual void check_loaded() const {}

  /// PyTorch-style repr of the module tree.
  std::string to_string() const;

 protected:
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  /// The direct child named `name` (throws if absent). Forwards that call their children through
  /// it see replacements made by replace_module (QAT prepare / convert swap modules in place).
  Module& child(const std::string& name) const;
  /// Called after replace_module put `child` in place of this module's direct child `name`:
  /// modules with typed members pointing at children update them here.
  virtual void on_child_replaced(const std::string& name, const std::shared_ptr<Module>& child) {
    (void)name;
    (void)child;
  }
  bool training_ = true;

 private:
  void collect(const std::string& prefix, bool recurse, bool params, NamedTensors& out) const;
  NamedTensors params_;
  NamedTensors buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

std::ostream& operator<<(std::ostream& os, const Module& m);

// ---- rebuilding modules from files ----
/// Builds one module from its stored attributes and its own tensors (parameters and buffers by
/// local name: "weight", "qdata"); children are built separately and attached. Factories check
/// what they are given and throw lowbit::Error naming the problem.
using ModuleFactory = std::function<std::shared_ptr<Module>(const Attributes& attrs, const NamedTensors& tensors)>;
/// Registers (or replaces) the factory of a module type. nn's own types are registered already;
/// qat registers its quantized modules (qat::register_module_types).
void register_module_type(const std::string& type_name, ModuleFactory factory);
/// The module a file describes: the factory of type_name applied to attrs and tensors.
std::shared_ptr<Module> build_module(const std::string& type_name, const Attributes& attrs,
                                     const NamedTensors& tensors);
/// "Dropout, Embedding, ..." -- the registered types, for errors and docs.
std::string module_type_names();

/// Typed reads of an attribute for factories: throw naming the module type and the key when it
/// is missing or of another type.
int64_t attr_int(const Attributes& attrs, const std::string& key, const std::string& type_name);
double attr_double(const Attributes& attrs, const std::string& key, const std::string& type_name);
std::string attr_string(const Attributes& attrs, const std::string& key, const std::string& type_name);
std::vector<int64_t> attr_ints(const Attributes& attrs, const std::string& key, const std::string& type_name);
/// A boolean stored as the integer 0 or 1 (any other value is an error).
bool attr_flag(const Attributes& attrs, const std::string& key, const std::string& type_name);
/// The tensor named `name` among a module's own tensors, or undefined.
Tensor find_tensor(const NamedTensors& tensors, const std::string& name);

/// Replaces the contents of `dst`'s impl with `src` (shape, dtype, storage), keeping every
/// handle to dst valid. Used by to(dtype) and by loaders.
void assign_tensor(const Tensor& dst, const Tensor& src);

}  // namespace lowbit::nn
