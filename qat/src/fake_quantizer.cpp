#include "lowbit/qat/fake_quantizer.h"

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/core/format.h"

namespace lowbit::qat {

std::string to_string(const Granularity& g) {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, PerTensor>)
          return "PerTensor()";
        else if constexpr (std::is_same_v<T, PerAxis>)
          return fmt::format("PerAxis(axis={})", v.axis);
        else if constexpr (std::is_same_v<T, PerGroup>)
          return fmt::format("PerGroup(group_size={})", v.group_size);
        else if constexpr (std::is_same_v<T, PerRow>)
          return fmt::format("PerRow(dim={})", v.dim);
        else
          return "PerToken()";
      },
      g);
}

Shape block_size_for(const Granularity& g, const Shape& shape) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  LOWBIT_CHECK(nd >= 1, "block_size_for: {} needs a tensor with at least one dimension, got shape {}", to_string(g),
               shape_str(shape));
  Shape b(shape.size(), 1);
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, PerTensor>) {
          b = shape;
        } else if constexpr (std::is_same_v<T, PerAxis>) {
          const int64_t a = detail::wrap_dim(v.axis, nd, "PerAxis");
          b = shape;
          b[a] = 1;
        } else if constexpr (std::is_same_v<T, PerGroup>) {
          // a last dimension the group size does not divide ends in a shorter (ragged) group
          LOWBIT_CHECK(v.group_size > 0, "PerGroup(group_size={}): the group size must be positive", v.group_size);
          b.back() = v.group_size;
        } else if constexpr (std::is_same_v<T, PerRow>) {
          const int64_t d = detail::wrap_dim(v.dim, nd, "PerRow");
          b[d] = shape[d];
        } else {
          b.back() = shape.back();
        }
      },
      g);
  return b;
}

// ---------------- IntxFakeQuantizeConfig ----------------
IntxFakeQuantizeConfig::IntxFakeQuantizeConfig(std::string dt, std::optional<Granularity> gran,
                                               std::optional<int64_t> group_size, std::optional<bool> is_symmetric,
                                               std::optional<MappingType> mapping)
    : dtype(std::move(dt)), granularity(std::move(gran)) {
  LOWBIT_CHECK(!(group_size && granularity), "IntxFakeQuantizeConfig: pass either granularity or group_size, not both");
  if (group_size) granularity = PerGroup{*group_size};
  LOWBIT_CHECK(!(is_symmetric && mapping),
               "IntxFakeQuantizeConfig: pass either mapping_type or is_symmetric, not both");
  if (mapping) mapping_type = *mapping;
  if (is_symmetric) set_is_symmetric(*is_symmetric);
  validate();
}

IntxFakeQuantizeConfig IntxFakeQuantizeConfig::from_string_granularity(const std::string& dt, const std::string& g,
                                                                       std::optional<int64_t> group_size,
                                                                       std::optional<bool> is_symmetric) {
  std::optional<Granularity> gran;
  if (g == "per_token") {
    gran = PerToken{};
  } else if (g == "per_channel") {
    gran = PerAxis{0};
  } else if (g == "per_group") {
    LOWBIT_CHECK(group_size.has_value(), "IntxFakeQuantizeConfig: granularity 'per_group' needs group_size");
    gran = PerGroup{*group_size};
    group_size.reset();
  } else {
    throw Error(fmt::format("IntxFakeQuantizeConfig: unknown granularity '{}' (per_token, per_channel, per_group)", g));
  }
  return IntxFakeQuantizeConfig(dt, gran, group_size, is_symmetric);
}

void IntxFakeQuantizeConfig::validate() const {
  {
    static constexpr core::FormatKind kInteger = core::FormatKind::Integer;  // intN / uintN rows of the table
    const core::Format& f = core::format_by_name(dtype, "IntxFakeQuantizeConfig dtype", &kInteger);
    LOWBIT_CHECK(f.bits <= 8, "IntxFakeQuantizeConfig: dtype must have at most 8 bits, got {}", dtype);
  }
  LOWBIT_CHECK(mapping_type == MappingType::SYMMETRIC || mapping_type == MappingType::ASYMMETRIC,
               "IntxFakeQuantizeConfig: mapping_type must be SYMMETRIC or ASYMMETRIC, got {}",
               qat::to_string(mapping_type));
  LOWBIT_CHECK(scale_precision == kFloat32 || scale_precision == kBFloat16,
               "IntxFakeQuantizeConfig: scale_precision must be float32 or bfloat16, got {}",
               dtype_name(scale_precision));
  LOWBIT_CHECK(zero_point_precision == kInt32 || zero_point_precision == kFloat32,
               "IntxFakeQuantizeConfig: zero_point_precision must be int32 or float32, got {}",
               dtype_name(zero_point_precision));
  LOWBIT_CHECK(zero_point_domain != ZeroPointDomain::NONE || mapping_type == MappingType::SYMMETRIC,
               "IntxFakeQuantizeConfig: zero_point_domain NONE needs a symmetric mapping");
  LOWBIT_CHECK(zero_point_domain != ZeroPointDomain::FLOAT || mapping_type == MappingType::ASYMMETRIC,
               "IntxFakeQuantizeConfig: zero_point_domain FLOAT needs an asymmetric mapping");
  LOWBIT_CHECK(!(range_learning && is_dynamic), "IntxFakeQuantizeConfig: range_learning requires is_dynamic=False");
  LOWBIT_CHECK(!range_learning || zero_point_domain == ZeroPointDomain::INT,
               "IntxFakeQuantizeConfig: range_learning needs the INT zero-point domain, got {}",
               qat::to_string(zero_point_domain));
  if (granularity) {
    if (auto* g = std::get_if<PerGroup>(&*granularity))
      LOWBIT_CHECK(g->group_size > 0, "IntxFakeQuantizeConfig: group_size must be positive, got {}", g->group_size);
  }
}

std::string IntxFakeQuantizeConfig::to_string() const {
  auto torch_dtype = [](DType d) { return fmt::format("torch.{}", dtype_name(d)); };
  return fmt::format(
      "IntxFakeQuantizeConfig(dtype=torch.{}, granularity={}, mapping_type=<MappingType.{}: {}>, scale_precision={}, "
      "zero_point_precision={}, "
      "zero_point_domain=<ZeroPointDomain.{}: {}>, is_dynamic={}, range_learning={}, eps={})",
      dtype, granularity ? qat::to_string(*granularity) : "None", qat::to_string(mapping_type),
      static_cast<int>(mapping_type), torch_dtype(scale_precision), torch_dtype(zero_point_precision),
      qat::to_string(zero_point_domain), static_cast<int>(zero_point_domain), is_dynamic ? "True" : "False",
      range_learning ? "True" : "False", eps ? fmt::format("{}", *eps) : "None");
}

nn::Attributes IntxFakeQuantizeConfig::to_attributes(const std::string& prefix) const {
  nn::Attributes a;
  a[prefix + "dtype"] = dtype;
  if (granularity) {
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, PerTensor>) {
            a[prefix + "granularity"] = std::string("per_tensor");
          } else if constexpr (std::is_same_v<T, PerAxis>) {
            a[prefix + "granularity"] = std::string("per_axis");
            a[prefix + "axis"] = v.axis;
          } else if constexpr (std::is_same_v<T, PerGroup>) {
            a[prefix + "granularity"] = std::string("per_group");
            a[prefix + "group_size"] = v.group_size;
          } else if constexpr (std::is_same_v<T, PerRow>) {
            a[prefix + "granularity"] = std::string("per_row");
            a[prefix + "dim"] = v.dim;
          } else {
            a[prefix + "granularity"] = std::string("per_token");
          }
        },
        *granularity);
  }
  a[prefix + "mapping_type"] = std::string(qat::to_string(mapping_type));
  a[prefix + "scale_precision"] = std::string(dtype_name(scale_precision));
  a[prefix + "zero_point_precision"] = std::string(dtype_name(zero_point_precision));
  a[prefix + "zero_point_domain"] = std::string(qat::to_string(zero_point_domain));
  a[prefix + "is_dynamic"] = int64_t{is_dynamic};
  a[prefix + "range_learning"] = int64_t{range_learning};
  if (eps) a[prefix + "eps"] = *eps;
  return a;
}

IntxFakeQuantizeConfig IntxFakeQuantizeConfig::from_attributes(const nn::Attributes& a, const std::string& prefix,
                                                               const std::string& type) {
  IntxFakeQuantizeConfig c;
  c.dtype = nn::attr_string(a, prefix + "dtype", type);
  const std::string g = nn::attr_string(a, prefix + "granularity", type);
  if (g == "per_tensor") {
    c.granularity = PerTensor{};
  } else if (g == "per_axis") {
    c.granularity = PerAxis{nn::attr_int(a, prefix + "axis", type)};
  } else if (g == "per_group") {
    c.granularity = PerGroup{nn::attr_int(a, prefix + "group_size", type)};
  } else if (g == "per_row") {
    c.granularity = PerRow{nn::attr_int(a, prefix + "dim", type)};
  } else if (g == "per_token") {
    c.granularity = PerToken{};
  } else {
    throw Error(fmt::format("{}: unknown {}granularity '{}' (per_tensor, per_axis, per_group, per_row, per_token)",
                            type, prefix, g));
  }
  const auto one_of = [&](const std::string& key, auto... options) {
    const std::string v = nn::attr_string(a, prefix + key, type);
    for (const auto& [name, value] : {options...})
      if (v == name) return value;
    throw Error(fmt::format("{}: unknown {}{} '{}'", type, prefix, key, v));
  };
  using M = std::pair<const char*, MappingType>;
  c.mapping_type =
      one_of("mapping_type", M{"SYMMETRIC", MappingType::SYMMETRIC}, M{"ASYMMETRIC", MappingType::ASYMMETRIC},
             M{"SYMMETRIC_NO_CLIPPING_ERR", MappingType::SYMMETRIC_NO_CLIPPING_ERR});
  using Z = std::pair<const char*, ZeroPointDomain>;
  c.zero_point_domain = one_of("zero_point_domain", Z{"INT", ZeroPointDomain::INT}, Z{"FLOAT", ZeroPointDomain::FLOAT},
                               Z{"NONE", ZeroPointDomain::NONE});
  using D = std::pair<const char*, DType>;
  c.scale_precision = one_of("scale_precision", D{"float32", kFloat32}, D{"bfloat16", kBFloat16});
  c.zero_point_precision = one_of("zero_point_precision", D{"int32", kInt32}, D{"float32", kFloat32});
  c.is_dynamic = nn::attr_int(a, prefix + "is_dynamic", type) != 0;
  c.range_learning = nn::attr_int(a, prefix + "range_learning", type) != 0;
  if (a.count(prefix + "eps")) c.eps = nn::attr_double(a, prefix + "eps", type);
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", type, e.what()));
  }
  return c;
}

// ---------------- FakeQuantizer ----------------
FakeQuantizer::FakeQuantizer(const FakeQuantizeConfigBase& config) : config_(config.clone()) { config_->validate(); }

std::shared_ptr<nn::Module> FakeQuantizeConfigBase::quantized_linear(const nn::Linear&,
                                                                     const FakeQuantizeConfigBase*) const {
  throw Error(fmt::format("convert: {} has no real quantized linear", to_string()));
}

Tensor FakeQuantizer::forward(const Tensor& x_in) {
  if (!enabled) return x_in;
  return config_->fake_quantize(x_in, *this);
}

Tensor IntxFakeQuantizeConfig::fake_quantize(const Tensor& x_in, FakeQuantizer& fq) const {
  LOWBIT_CHECK(x_in.defined() && is_floating(x_in.dtype()), "FakeQuantizer: input must be floating, got {}",
               x_in.defined() ? detail::desc(x_in) : "undefined");
  LOWBIT_CHECK(granularity.has_value(), "FakeQuantizer: {} has no granularity", to_string());
  // float32 and bfloat16 inputs are computed in their own dtype (torchao); others in float32.
  // Range learning runs in float32.
  const Tensor x =
      (x_in.dtype() == kFloat32 || (x_in.dtype() == kBFloat16 && !range_learning)) ? x_in : x_in.to(kFloat32);
  const Granularity& g = *granularity;
  if (std::holds_alternative<PerAxis>(g) || std::holds_alternative<PerGroup>(g)) {
    LOWBIT_CHECK(x.dim() == 2, "FakeQuantizer: {} applies to 2-D weights, got input {}", qat::to_string(g),
                 shape_str(x.shape()));
    if (auto* a = std::get_if<PerAxis>(&g))
      LOWBIT_CHECK(a->axis == 0, "FakeQuantizer: only PerAxis(axis=0) is supported, got axis={}", a->axis);
  }
  const Shape block = std::holds_alternative<PerAxis>(g) ? Shape{1, x.size(1)} : block_size_for(g, x.shape());
  const auto [qmin, qmax] = range();
  Tensor& scale = fq.scale;
  Tensor& zero_point = fq.zero_point;
  Tensor y;
  if (range_learning) {
    if (!fq.range_initialized()) {
      LOWBIT_CHECK(fq.initializing(),
                   "FakeQuantizer: range_learning=True needs initialize_fake_quantizers(model, example_inputs) before "
                   "the first forward ({})",
                   to_string());
      NoGradGuard ng;
      auto [s, z] =
          choose_qparams_affine(x.detach(), mapping_type, block, qmin, qmax, eps, ZeroPointDomain::INT, kFloat32);
      s = clamp(s, 1e-9, std::nullopt);
      if (mapping_type == MappingType::ASYMMETRIC) {
        z = clamp(round(z), static_cast<double>(qmin), static_cast<double>(qmax));
        zero_point = fq.register_parameter("zero_point", z);
      } else {
        zero_point = fq.register_buffer("zero_point", zeros(s.shape()));
      }
      scale = fq.register_parameter("scale", s);
      fq.mark_range_initialized();
    }
    LOWBIT_CHECK(scale.shape() == blocks_shape(x.shape(), block, "FakeQuantizer"),
                 "FakeQuantizer: learned qparams of shape {} do not fit input {} (block {})", shape_str(scale.shape()),
                 shape_str(x.shape()), shape_str(block));
    y = fake_quantize_affine_learnable(x, block, scale, zero_point, qmin, qmax);
  } else if (is_dynamic || !scale.defined()) {
    auto r = fake_quantize_affine_dynamic(x, mapping_type, block, qmin, qmax, eps, zero_point_domain,
                                          zero_point_precision, scale_precision);
    y = r.y;
    scale = r.scale;
    zero_point = r.zero_point;
  } else {
    y = fake_quantize_affine(x, block, scale, zero_point, qmin, qmax, zero_point_domain);
  }
  return y.dtype() == x_in.dtype() ? y : y.to(x_in.dtype());
}

void initialize_fake_quantizers(nn::Module& model, const Tensor& example_inputs) {
  std::vector<FakeQuantizer*> flagged;
  for (auto& [name, m] : model.named_modules())
    if (auto* fq = dynamic_cast<FakeQuantizer*>(m.get())) {
      if (fq->config().needs_initialization()) {
        fq->initializing_ = true;
        flagged.push_back(fq);
      }
    }
  struct Reset {
    std::vector<FakeQuantizer*>& f;
    ~Reset() {
      for (auto* q : f) q->initializing_ = false;
    }
  } reset{flagged};
  NoGradGuard ng;
  (void)model.forward(example_inputs);
}

// ---------------- modules ----------------
FakeQuantizedLinear::FakeQuantizedLinear(int64_t in, int64_t out, bool has_bias, const FakeQuantizeConfigBase* act,
                                         const FakeQuantizeConfigBase* w)
    : nn::Linear(in, out, has_bias) {
  add_quantizers(act, w);
}
FakeQuantizedLinear::FakeQuantizedLinear(const Tensor& weight, const Tensor& bias, const FakeQuantizeConfigBase* act,
                                         const FakeQuantizeConfigBase* w)
    : nn::Linear(weight, bias) {
  add_quantizers(act, w);
}
void FakeQuantizedLinear::add_quantizers(const FakeQuantizeConfigBase* act, const FakeQuantizeConfigBase* w) {
  if (act)
    activation_fake_quantizer = register_module("activation_fake_quantizer", std::make_shared<FakeQuantizer>(*act));
  if (w) {
    weight_fake_quantizer = register_module("weight_fake_quantizer", std::make_shared<FakeQuantizer>(*w));
  }
}
// module swaps share the parameters and draw no random numbers
std::shared_ptr<FakeQuantizedLinear> FakeQuantizedLinear::from_linear(const nn::Linear& l,
                                                                      const FakeQuantizeConfigBase* act,
                                                                      const FakeQuantizeConfigBase* w) {
  auto m = std::make_shared<FakeQuantizedLinear>(l.weight, l.bias, act, w);
  m->train(l.is_training());
  return m;
}
std::shared_ptr<nn::Linear> FakeQuantizedLinear::to_linear() const {
  auto l = std::make_shared<nn::Linear>(weight, bias);
  l->train(is_training());
  return l;
}
Tensor FakeQuantizedLinear::forward(const Tensor& x) {
  const Tensor xq = activation_fake_quantizer ? activation_fake_quantizer->forward(x) : x;
  const Tensor wq = weight_fake_quantizer ? weight_fake_quantizer->forward(weight) : weight;
  const bool bias_grad = !weight_fake_quantizer || weight_fake_quantizer->config().bias_gets_gradient();
  return linear(xq, wq, bias.defined() && !bias_grad ? bias.detach() : bias);
}
void FakeQuantizedLinear::enable_fake_quant(bool on) {
  if (activation_fake_quantizer) activation_fake_quantizer->enabled = on;
  if (weight_fake_quantizer) weight_fake_quantizer->enabled = on;
}

FakeQuantizedEmbedding::FakeQuantizedEmbedding(int64_t n, int64_t d, const FakeQuantizeConfigBase& w)
    : nn::Embedding(n, d) {
  weight_fake_quantizer = register_module("weight_fake_quantizer", std::make_shared<FakeQuantizer>(w));
}
FakeQuantizedEmbedding::FakeQuantizedEmbedding(const Tensor& weight, const FakeQuantizeConfigBase& w)
    : nn::Embedding(weight) {
  weight_fake_quantizer = register_module("weight_fake_quantizer", std::make_shared<FakeQuantizer>(w));
}
std::shared_ptr<FakeQuantizedEmbedding> FakeQuantizedEmbedding::from_embedding(const nn::Embedding& e,
                                                                               const FakeQuantizeConfigBase& w) {
  auto m = std::make_shared<FakeQuantizedEmbedding>(e.weight, w);
  m->train(e.is_training());
  return m;
}
std::shared_ptr<nn::Embedding> FakeQuantizedEmbedding::to_embedding() const {
  auto e = std::make_shared<nn::Embedding>(weight);
  e->train(is_training());
  return e;
}
Tensor FakeQuantizedEmbedding::forward(const Tensor& idx) {
  return embedding(weight_fake_quantizer->forward(weight), idx);
}

}  // namespace lowbit::qat
