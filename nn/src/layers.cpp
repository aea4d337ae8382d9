#include "lowbit/nn/layers.h"

#include <cmath>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"

namespace lowbit::nn {

namespace {
const char* py_bool(bool b) { return b ? "True" : "False"; }
std::string shape_tuple(const Shape& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}
}  // namespace

// ---------------- Linear ----------------
Linear::Linear(int64_t in, int64_t out, bool has_bias, Generator* gen) : in_features(in), out_features(out) {
  LOWBIT_CHECK(in > 0 && out > 0, "Linear: in_features ({}) and out_features ({}) must be positive", in, out);
  weight = register_parameter("weight", empty({out, in}));
  if (has_bias) bias = register_parameter("bias", empty({out}));
  reset_parameters(gen);
}
Linear::Linear(const Tensor& w, const Tensor& b) {
  LOWBIT_CHECK(w.defined() && w.dim() == 2 && w.size(0) > 0 && w.size(1) > 0,
               "Linear: weight must be a non-empty [out_features, in_features] tensor, got {}",
               w.defined() ? shape_str(w.shape()) : "undefined");
  LOWBIT_CHECK(!b.defined() || (b.dim() == 1 && b.size(0) == w.size(0)), "Linear: bias must have shape [{}], got {}",
               w.size(0), shape_str(b.shape()));
  in_features = w.size(1);
  out_features = w.size(0);
  weight = register_parameter("weight", w);
  if (b.defined()) bias = register_parameter("bias", b);
}
void Linear::reset_parameters(Generator* gen) {
  NoGradGuard ng;
  // kaiming_uniform_(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)); bias the same
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  weight.uniform_(-bound, bound, gen);
  if (bias.defined()) bias.uniform_(-bound, bound, gen);
}
std::string Linear::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, bias={}", in_features, out_features, py_bool(bias.defined()));
}
Tensor Linear::forward(const Tensor& x) { return linear(x, weight, bias); }

// ---------------- Embedding ----------------
Embedding::Embedding(int64_t n, int64_t d, Generator* gen) : num_embeddings(n), embedding_dim(d) {
  LOWBIT_CHECK(n > 0 && d > 0, "Embedding: num_embeddings ({}) and embedding_dim ({}) must be positive", n, d);
  Tensor w = empty({n, d});
  w.normal_(0.0, 1.0, gen);
  weight = register_parameter("weight", w);
}
Embedding::Embedding(const Tensor& w) {
  LOWBIT_CHECK(w.defined() && w.dim() == 2 && w.size(0) > 0 && w.size(1) > 0,
               "Embedding: weight must be a non-empty [num_embeddings, embedding_dim] tensor, got {}",
               w.defined() ? shape_str(w.shape()) : "undefined");
  num_embeddings = w.size(0);
  embedding_dim = w.size(1);
  weight = register_parameter("weight", w);
}
std::string Embedding::extra_repr() const { return fmt::format("{}, {}", num_embeddings, embedding_dim); }
Tensor Embedding::forward(const Tensor& idx) { return embedding(weight, idx); }

// ---------------- norms ----------------
LayerNorm::LayerNorm(Shape shape, double eps_, bool affine, bool has_bias)
    : normalized_shape(std::move(shape)), eps(eps_) {
  if (affine) {
    weight = register_parameter("weight", ones(normalized_shape));
    if (has_bias) bias = register_parameter("bias", zeros(normalized_shape));
  }
}
std::string LayerNorm::extra_repr() const {
  return fmt::format("{}, eps={}, elementwise_affine={}", shape_tuple(normalized_shape), eps,
                     py_bool(weight.defined()));
}
Tensor LayerNorm::forward(const Tensor& x) { return layer_norm(x, normalized_shape, weight, bias, eps); }

RMSNorm::RMSNorm(Shape shape, std::optional<double> eps_, bool affine) : normalized_shape(std::move(shape)), eps(eps_) {
  if (affine) weight = register_parameter("weight", ones(normalized_shape));
}
std::string RMSNorm::extra_repr() const {
  return fmt::format("{}, eps={}, elementwise_affine={}", shape_tuple(normalized_shape),
                     eps ? fmt::format("{}", *eps) : "None", py_bool(weight.defined()));
}
Tensor RMSNorm::forward(const Tensor& x) { return rms_norm(x, normalized_shape, weight, eps); }

// ---------------- dropout and activations ----------------
Dropout::Dropout(double p_, Generator* g) : p(p_), gen(g) {
  LOWBIT_CHECK(p >= 0.0 && p <= 1.0, "Dropout: probability has to be between 0 and 1, but got {}", p);
}
std::string Dropout::extra_repr() const { return fmt::format("p={}, inplace=False", p); }
Tensor Dropout::forward(const Tensor& x) { return dropout(x, p, is_training(), gen); }
Tensor ReLU::forward(const Tensor& x) { return relu(x); }
GELU::GELU(std::string a) : approximate(std::move(a)) {
  LOWBIT_CHECK(approximate == "none" || approximate == "tanh", "GELU: approximate must be 'none' or 'tanh', got '{}'",
               approximate);
}
std::string GELU::extra_repr() const { return fmt::format("approximate='{}'", approximate); }
Tensor GELU::forward(const Tensor& x) { return gelu(x, approximate); }
Tensor SiLU::forward(const Tensor& x) { return silu(x); }
Tensor Tanh::forward(const Tensor& x) { return tanh(x); }
std::string Flatten::extra_repr() const { return fmt::format("start_dim={}, end_dim={}", start_dim, end_dim); }
Tensor Flatten::forward(const Tensor& x) { return x.flatten(start_dim, end_dim); }

// ---------------- containers ----------------
Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (auto& m : children()) h = m->forward(h);
  return h;
}
ModuleList::ModuleList(std::vector<std::shared_ptr<Module>> modules) {
  for (auto& m : modules) push_back(std::move(m));
}
void ModuleList::push_back(std::shared_ptr<Module> m) { add_child(std::to_string(size()), std::move(m)); }
std::shared_ptr<Module> ModuleList::operator[](size_t i) const {
  LOWBIT_CHECK(i < size(), "{}: index {} is out of range (size {})", type_name(), i, size());
  return named_children()[i].second;
}
void ModuleDict::insert(const std::string& key, std::shared_ptr<Module> m) { add_child(key, std::move(m)); }
bool ModuleDict::contains(const std::string& key) const {
  for (auto& [n, _] : named_children())
    if (n == key) return true;
  return false;
}
std::shared_ptr<Module> ModuleDict::operator[](const std::string& key) const {
  for (auto& [n, m] : named_children())
    if (n == key) return m;
  throw Error(fmt::format("ModuleDict: no module named '{}'", key));
}

void Linear::check_low_precision_input(const Tensor& x, const char* op) const {
  LOWBIT_CHECK(x.defined() && (x.dtype() == kFloat32 || x.dtype() == kBFloat16) && x.dtype() == weight.dtype(),
               "{}: input must be float32 or bfloat16 of the weight's dtype ({}), got {}", op,
               dtype_name(weight.dtype()), x.defined() ? detail::desc(x) : "undefined");
  LOWBIT_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "{}: input {} does not end in in_features={}", op,
               shape_str(x.shape()), in_features);
}

Tensor Linear::output_with_bias(const Tensor& y2, const Tensor& x) const {
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  Tensor y = y2.reshape(out_shape);
  if (bias.defined()) y = add(y, bias.dtype() == y.dtype() ? bias : bias.to(y.dtype()));
  return y;
}

std::shared_ptr<Module> replace_linears(
    const std::shared_ptr<Module>& model,
    const std::function<std::shared_ptr<Module>(const Linear&, const std::string& fqn)>& make) {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> swaps;
  for (auto& [fqn, m] : model->named_modules()) {
    if (m->type_name() != "Linear") continue;
    const auto* lin = dynamic_cast<const Linear*>(m.get());
    if (!lin) continue;
    if (auto r = make(*lin, fqn)) swaps.emplace_back(fqn, std::move(r));
  }
  std::shared_ptr<Module> root = model;
  for (auto& [fqn, r] : swaps) {
    if (fqn.empty())
      root = r;
    else
      root->replace_module(fqn, r);
  }
  return root;
}

std::pair<Tensor, Tensor> linear_tensors_from_file(const NamedTensors& t, const char* ty) {
  for (const auto& [name, _] : t)
    LOWBIT_CHECK(name == "weight" || name == "bias", "{}: unexpected tensor '{}'", ty, name);
  const Tensor w = find_tensor(t, "weight"), b = find_tensor(t, "bias");
  LOWBIT_CHECK(w.defined() && w.dim() == 2 && (w.dtype() == kFloat32 || w.dtype() == kBFloat16),
               "{}: weight must be a float32 or bfloat16 matrix", ty);
  LOWBIT_CHECK(!b.defined() || (b.dim() == 1 && b.size(0) == w.size(0) && b.dtype() == w.dtype()),
               "{}: bias must be a vector of out_features={} of the weight's dtype", ty, w.size(0));
  return {w, b};
}

}  // namespace lowbit::nn
