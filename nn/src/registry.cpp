// Rebuilding modules from files: the table of module factories (nn's own types here; qat adds
// its quantized modules) and the typed attribute readers factories use.
#include <cmath>
#include <mutex>

#include "lowbit/nn/layers.h"
#include "lowbit/nn/module.h"
#include "lowbit/nn/transformer.h"

namespace lowbit::nn {

namespace {
const char* kind_of(const AttrValue& v) {
  switch (v.index()) {
    case 0: return "an integer";
    case 1: return "a float";
    case 2: return "a string";
    default: return "an integer list";
  }
}
template <typename T>
const T& typed(const Attributes& a, const std::string& key, const std::string& type, const char* want) {
  auto it = a.find(key);
  LOWBIT_CHECK(it != a.end(), "{}: missing attribute '{}'", type, key);
  const T* v = std::get_if<T>(&it->second);
  LOWBIT_CHECK(v != nullptr, "{}: attribute '{}' must be {}, got {}", type, key, want, kind_of(it->second));
  return *v;
}
// a factory's own tensors: exactly the expected names
void expect_tensors(const NamedTensors& t, std::initializer_list<const char*> required,
                    std::initializer_list<const char*> optional, const std::string& type) {
  for (const char* r : required) LOWBIT_CHECK(find_tensor(t, r).defined(), "{}: missing tensor '{}'", type, r);
  for (const auto& [name, _] : t) {
    bool known = false;
    for (const char* r : required) known |= name == r;
    for (const char* o : optional) known |= name == o;
    LOWBIT_CHECK(known, "{}: unexpected tensor '{}'", type, name);
  }
}
void expect_float(const Tensor& t, const std::string& type, const char* name) {
  LOWBIT_CHECK(!t.defined() || is_floating(t.dtype()), "{}: tensor '{}' must be floating, got {}", type, name,
               dtype_name(t.dtype()));
}

std::shared_ptr<Module> no_tensors(const NamedTensors& t, const std::string& type, std::shared_ptr<Module> m) {
  expect_tensors(t, {}, {}, type);
  return m;
}

std::map<std::string, ModuleFactory> builtin_factories() {
  std::map<std::string, ModuleFactory> f;
  f["Linear"] = [](const Attributes&, const NamedTensors& t) {
    expect_tensors(t, {"weight"}, {"bias"}, "Linear");
    expect_float(find_tensor(t, "weight"), "Linear", "weight");
    expect_float(find_tensor(t, "bias"), "Linear", "bias");
    return std::make_shared<Linear>(find_tensor(t, "weight"), find_tensor(t, "bias"));
  };
  f["Embedding"] = [](const Attributes&, const NamedTensors& t) {
    expect_tensors(t, {"weight"}, {}, "Embedding");
    expect_float(find_tensor(t, "weight"), "Embedding", "weight");
    return std::make_shared<Embedding>(find_tensor(t, "weight"));
  };
  f["LayerNorm"] = [](const Attributes& a, const NamedTensors& t) {
    expect_tensors(t, {}, {"weight", "bias"}, "LayerNorm");
    const Shape shape = attr_ints(a, "normalized_shape", "LayerNorm");
    const double eps = attr_double(a, "eps", "LayerNorm");
    LOWBIT_CHECK(!shape.empty() && shape.size() <= 8, "LayerNorm: normalized_shape must have 1 to 8 dims, got {}",
                 shape_str(shape));
    LOWBIT_CHECK(std::isfinite(eps) && eps > 0, "LayerNorm: eps must be positive and finite, got {}", eps);
    const Tensor w = find_tensor(t, "weight"), b = find_tensor(t, "bias");
    LOWBIT_CHECK(!b.defined() || w.defined(), "LayerNorm: a bias without a weight");
    for (const Tensor* x : {&w, &b}) {
      LOWBIT_CHECK(!x->defined() || (x->shape() == shape && is_floating(x->dtype())),
                   "LayerNorm: affine tensors must be floating with shape {}, got {}", shape_str(shape),
                   detail::desc(*x));
    }
    // the module's own tensors are the file's: no allocation from the attributes
    auto m = std::make_shared<LayerNorm>(Shape{1}, eps, false, false);
    m->normalized_shape = shape;
    if (w.defined()) m->weight = m->register_parameter("weight", w);
    if (b.defined()) m->bias = m->register_parameter("bias", b);
    return m;
  };
  // transformer modules: built empty, their children come from the file (check_loaded)
  f["CausalSelfAttention"] = [](const Attributes& a, const NamedTensors& t) {
    const char* ty = "CausalSelfAttention";
    return no_tensors(
        t, ty,
        std::make_shared<CausalSelfAttention>(attr_int(a, "d_model", ty), attr_int(a, "n_heads", ty),
                                              attr_double(a, "dropout", ty), attr_flag(a, "causal", ty), Unbuilt{}));
  };
  f["TransformerBlock"] = [](const Attributes&, const NamedTensors& t) {
    return no_tensors(t, "TransformerBlock", std::make_shared<TransformerBlock>(Unbuilt{}));
  };
  f["GPT"] = [](const Attributes& a, const NamedTensors& t) {
    const char* ty = "GPT";
    GPTConfig c;
    c.vocab_size = attr_int(a, "vocab_size", ty);
    c.context = attr_int(a, "context", ty);
    c.d_model = attr_int(a, "d_model", ty);
    c.n_heads = attr_int(a, "n_heads", ty);
    c.n_layers = attr_int(a, "n_layers", ty);
    c.d_ff = attr_int(a, "d_ff", ty);
    c.dropout = attr_double(a, "dropout", ty);
    c.tie_weights = attr_flag(a, "tie_weights", ty);
    LOWBIT_CHECK(c.vocab_size > 0 && c.context > 0 && c.d_model > 0 && c.n_heads > 0 && c.n_layers >= 0 &&
                     c.d_ff >= 0 && c.d_model % c.n_heads == 0,
                 "GPT: vocab_size ({}), context ({}), d_model ({}) and n_heads ({}) must be positive, n_layers ({}) "
                 "and d_ff ({}) not negative, d_model divisible by n_heads",
                 c.vocab_size, c.context, c.d_model, c.n_heads, c.n_layers, c.d_ff);
    LOWBIT_CHECK(c.dropout >= 0.0 && c.dropout <= 1.0, "GPT: dropout must be in [0, 1], got {}", c.dropout);
    return no_tensors(t, ty, std::make_shared<GPT>(c, Unbuilt{}));
  };
  f["Dropout"] = [](const Attributes& a, const NamedTensors& t) {
    const double p = attr_double(a, "p", "Dropout");
    LOWBIT_CHECK(p >= 0.0 && p <= 1.0, "Dropout: p must be in [0, 1], got {}", p);
    return no_tensors(t, "Dropout", std::make_shared<Dropout>(p));
  };
  f["GELU"] = [](const Attributes& a, const NamedTensors& t) {
    const std::string approx = attr_string(a, "approximate", "GELU");
    LOWBIT_CHECK(approx == "none" || approx == "tanh", "GELU: approximate must be 'none' or 'tanh', got '{}'", approx);
    return no_tensors(t, "GELU", std::make_shared<GELU>(approx));
  };
  f["Flatten"] = [](const Attributes& a, const NamedTensors& t) {
    return no_tensors(
        t, "Flatten",
        std::make_shared<Flatten>(attr_int(a, "start_dim", "Flatten"), attr_int(a, "end_dim", "Flatten")));
  };
  f["ReLU"] = [](const Attributes&, const NamedTensors& t) { return no_tensors(t, "ReLU", std::make_shared<ReLU>()); };
  f["SiLU"] = [](const Attributes&, const NamedTensors& t) { return no_tensors(t, "SiLU", std::make_shared<SiLU>()); };
  f["Tanh"] = [](const Attributes&, const NamedTensors& t) { return no_tensors(t, "Tanh", std::make_shared<Tanh>()); };
  f["Sequential"] = [](const Attributes&, const NamedTensors& t) {
    return no_tensors(t, "Sequential", std::make_shared<Sequential>());
  };
  f["ModuleList"] = [](const Attributes&, const NamedTensors& t) {
    return no_tensors(t, "ModuleList", std::make_shared<ModuleList>());
  };
  f["ModuleDict"] = [](const Attributes&, const NamedTensors& t) {
    return no_tensors(t, "ModuleDict", std::make_shared<ModuleDict>());
  };
  return f;
}

struct Registry {
  std::mutex mu;
  std::map<std::string, ModuleFactory> factories = builtin_factories();
};
Registry& registry() {
  static Registry r;
  return r;
}
}  // namespace

void register_module_type(const std::string& type_name, ModuleFactory factory) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.factories[type_name] = std::move(factory);
}

std::string module_type_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::string out;
  for (const auto& [name, _] : r.factories) out += (out.empty() ? "" : ", ") + name;
  return out;
}

std::shared_ptr<Module> build_module(const std::string& type_name, const Attributes& attrs,
                                     const NamedTensors& tensors) {
  ModuleFactory f;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.factories.find(type_name);
    if (it != r.factories.end()) f = it->second;
  }
  LOWBIT_CHECK(f != nullptr, "unknown module type '{}' (known: {})", type_name, module_type_names());
  return f(attrs, tensors);
}

int64_t attr_int(const Attributes& a, const std::string& key, const std::string& type) {
  return typed<int64_t>(a, key, type, "an integer");
}
double attr_double(const Attributes& a, const std::string& key, const std::string& type) {
  return typed<double>(a, key, type, "a float");
}
std::string attr_string(const Attributes& a, const std::string& key, const std::string& type) {
  return typed<std::string>(a, key, type, "a string");
}
std::vector<int64_t> attr_ints(const Attributes& a, const std::string& key, const std::string& type) {
  return typed<std::vector<int64_t>>(a, key, type, "an integer list");
}
bool attr_flag(const Attributes& a, const std::string& key, const std::string& type) {
  const int64_t v = attr_int(a, key, type);
  LOWBIT_CHECK(v == 0 || v == 1, "{}: attribute '{}' must be 0 or 1, got {}", type, key, v);
  return v == 1;
}
Tensor find_tensor(const NamedTensors& tensors, const std::string& name) {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  return Tensor();
}

// ---- what each layer stores to be rebuilt ----
Attributes LayerNorm::checkpoint_attributes() const {
  return {{"normalized_shape", std::vector<int64_t>(normalized_shape.begin(), normalized_shape.end())}, {"eps", eps}};
}
Attributes Dropout::checkpoint_attributes() const { return {{"p", p}}; }
Attributes GELU::checkpoint_attributes() const { return {{"approximate", approximate}}; }
Attributes Flatten::checkpoint_attributes() const { return {{"start_dim", start_dim}, {"end_dim", end_dim}}; }

void Module::attach_child(const std::string& name, std::shared_ptr<Module> child) {
  for (const auto& [n, _] : named_children())
    if (n == name) return replace_module(name, std::move(child));
  add_child(name, child);
  on_child_replaced(name, child);  // typed members (TransformerBlock::attn, ...) follow
}
void ModuleList::attach_child(const std::string& name, std::shared_ptr<Module> child) {
  for (const auto& [n, _] : named_children())
    if (n == name) return replace_module(name, std::move(child));
  LOWBIT_CHECK(name == std::to_string(size()), "{}: child '{}' out of order (expected '{}')", type_name(), name,
               size());
  push_back(std::move(child));
}

}  // namespace lowbit::nn
