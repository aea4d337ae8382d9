// Layers with PyTorch's names, shapes, default initializations and reprs.
#pragma once
#include <functional>
#include <map>
#include <optional>

#include "lowbit/autograd/generator.h"
#include "lowbit/nn/module.h"

namespace lowbit::nn {

/// y = x·Wᵀ + b. weight (out, in), bias (out). Init as torch: U(-1/sqrt(in), 1/sqrt(in)).
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, Generator* gen = nullptr);
  /// Wraps existing tensors (weight [out, in], bias [out] or undefined) as the parameters, shared
  /// and not copied: no initialization, no random numbers drawn (module swaps use this).
  Linear(const Tensor& weight, const Tensor& bias);
  std::string type_name() const override { return "Linear"; }
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x) override;
  /// Resets weight and bias to PyTorch's default initialization.
  void reset_parameters(Generator* gen = nullptr);
  int64_t in_features, out_features;
  Tensor weight, bias;

 protected:
  /// For linears that run their gemms in low precision (float8, MX, NVFP4): x must be float32 or
  /// bfloat16 of the weight's dtype and end in in_features; errors name `op`.
  void check_low_precision_input(const Tensor& x, const char* op) const;
  /// The gemm's (rows, out_features) result y2 in x's leading shape, plus the bias in y2's dtype.
  Tensor output_with_bias(const Tensor& y2, const Tensor& x) const;
};

/// Lookup table (num_embeddings, embedding_dim); init N(0, 1) as torch.
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, Generator* gen = nullptr);
  /// Wraps an existing [num_embeddings, embedding_dim] tensor as the weight (shared; no random numbers drawn).
  explicit Embedding(const Tensor& weight);
  std::string type_name() const override { return "Embedding"; }
  std::string extra_repr() const override;
  /// indices: int64/int32 of any shape -> indices.shape + (embedding_dim)
  Tensor forward(const Tensor& indices) override;
  int64_t num_embeddings, embedding_dim;
  Tensor weight;
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(Shape normalized_shape, double eps = 1e-5, bool elementwise_affine = true, bool bias = true);
  explicit LayerNorm(int64_t dim, double eps = 1e-5) : LayerNorm(Shape{dim}, eps) {}
  std::string type_name() const override { return "LayerNorm"; }
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x) override;
  Attributes checkpoint_attributes() const override;
  Shape normalized_shape;
  double eps;
  Tensor weight, bias;  // undefined when not affine
};

class RMSNorm : public Module {
 public:
  explicit RMSNorm(Shape normalized_shape, std::optional<double> eps = std::nullopt, bool elementwise_affine = true);
  explicit RMSNorm(int64_t dim) : RMSNorm(Shape{dim}) {}
  std::string type_name() const override { return "RMSNorm"; }
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x) override;
  Shape normalized_shape;
  std::optional<double> eps;
  Tensor weight;
};

/// Active only in training mode; uses the default generator unless given one.
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5, Generator* gen = nullptr);
  std::string type_name() const override { return "Dropout"; }
  std::string extra_repr() const override;
  Attributes checkpoint_attributes() const override;
  Tensor forward(const Tensor& x) override;
  double p;
  Generator* gen;
};

class ReLU : public Module {
 public:
  std::string type_name() const override { return "ReLU"; }
  Tensor forward(const Tensor& x) override;
};
class GELU : public Module {
 public:
  explicit GELU(std::string approximate = "none");
  std::string type_name() const override { return "GELU"; }
  std::string extra_repr() const override;
  Attributes checkpoint_attributes() const override;
  Tensor forward(const Tensor& x) override;
  std::string approximate;
};
class SiLU : public Module {
 public:
  std::string type_name() const override { return "SiLU"; }
  Tensor forward(const Tensor& x) override;
};
class Tanh : public Module {
 public:
  std::string type_name() const override { return "Tanh"; }
  Tensor forward(const Tensor& x) override;
};
class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1) : start_dim(start_dim), end_dim(end_dim) {}
  std::string type_name() const override { return "Flatten"; }
  std::string extra_repr() const override;
  Attributes checkpoint_attributes() const override;
  Tensor forward(const Tensor& x) override;
  int64_t start_dim, end_dim;
};

/// A list of modules (named "0", "1", ...) with no forward of its own.
class ModuleList : public Module {
 public:
  ModuleList() = default;
  explicit ModuleList(std::vector<std::shared_ptr<Module>> modules);
  std::string type_name() const override { return "ModuleList"; }
  void push_back(std::shared_ptr<Module> m);
  size_t size() const { return named_children().size(); }
  std::shared_ptr<Module> operator[](size_t i) const;
  void attach_child(const std::string& name, std::shared_ptr<Module> child) override;
};

/// A ModuleList whose forward runs the children in order.
class Sequential : public ModuleList {
 public:
  using ModuleList::ModuleList;
  std::string type_name() const override { return "Sequential"; }
  Tensor forward(const Tensor& x) override;
};

/// Modules by name, in insertion order.
class ModuleDict : public Module {
 public:
  ModuleDict() = default;
  std::string type_name() const override { return "ModuleDict"; }
  void insert(const std::string& key, std::shared_ptr<Module> m);
  std::shared_ptr<Module> operator[](const std::string& key) const;
  bool contains(const std::string& key) const;
  size_t size() const { return named_children().size(); }
};

/// Replaces every plain Linear (type_name "Linear": not a fake-quantized, float8, MX or quantized
/// one) for which make(linear, fqn) returns a module ("" is the root's fqn; nullptr keeps the
/// Linear). All replacements are built before any is installed; a root Linear's replacement is
/// returned as the new root, else the model itself.
std::shared_ptr<Module> replace_linears(
    const std::shared_ptr<Module>& model,
    const std::function<std::shared_ptr<Module>(const Linear&, const std::string& fqn)>& make);
/// The weight and bias of a Linear-like module read from a file: only tensors "weight" and
/// "bias"; the weight a float32 or bfloat16 matrix; the bias, if any, a vector of out_features of
/// the weight's dtype. Errors name `type`.
std::pair<Tensor, Tensor> linear_tensors_from_file(const NamedTensors& tensors, const char* type);

}  // namespace lowbit::nn
