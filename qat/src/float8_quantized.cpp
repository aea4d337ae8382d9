// torchao's float8 inference configs and the module they convert a Linear into.
#include "lowbit/qat/float8_quantized.h"

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/minifloat.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/qat/quantize.h"

namespace lowbit::qat {

namespace {
bool per_tensor(const Granularity& g) { return std::holds_alternative<PerTensor>(g); }
std::string gran_name(const Granularity& g) { return per_tensor(g) ? "PerTensor" : "PerRow"; }
Granularity gran_of(const std::string& s, const char* what) {
  LOWBIT_CHECK(s == "PerTensor" || s == "PerRow", "{}: granularity must be 'PerTensor' or 'PerRow', got '{}'", what, s);
  return s == "PerTensor" ? Granularity{PerTensor{}} : Granularity{PerRow{}};
}
DType float8_dtype_of(const std::string& s, const char* what) {
  LOWBIT_CHECK(s == "float8_e4m3fn" || s == "float8_e5m2", "{}: dtype must be float8_e4m3fn or float8_e5m2, got '{}'",
               what, s);
  return s == "float8_e5m2" ? kFloat8_e5m2 : kFloat8_e4m3fn;
}
std::string opt_str(const std::optional<double>& v) { return v ? fmt::format("{}", *v) : "None"; }
// the QAT options, where not the defaults
std::string qat_options(Float8FakeQuantizeConfig::Backward b, bool guard) {
  std::string s;
  if (b == Float8FakeQuantizeConfig::Backward::TorchaoParity) s += ", qat_backward=torchao_parity";
  if (guard) s += ", qat_guard_zero_blocks=True";
  return s;
}
std::shared_ptr<Float8FakeQuantizeConfig> with_qat_options(std::shared_ptr<Float8FakeQuantizeConfig> c,
                                                           Float8FakeQuantizeConfig::Backward b, bool guard) {
  c->backward = b;
  c->guard_zero_blocks = guard;
  return c;
}
}  // namespace

// ---- configs ----
std::string Float8DynamicActivationFloat8WeightConfig::to_string() const {
  return fmt::format(
      "Float8DynamicActivationFloat8WeightConfig(activation_dtype=torch.{}, weight_dtype=torch.{}, granularity={}, "
      "activation_value_lb={}, activation_value_ub={}{})",
      dtype_name(activation_dtype), dtype_name(weight_dtype), qat::to_string(granularity), opt_str(activation_value_lb),
      opt_str(activation_value_ub), qat_options(qat_backward, qat_guard_zero_blocks));
}
void Float8DynamicActivationFloat8WeightConfig::validate() const {
  fake_quantize_configs();  // the fake-quantize configs check dtypes, granularity and bounds
}
FakeQuantizeConfigs Float8DynamicActivationFloat8WeightConfig::fake_quantize_configs() const {
  auto a = std::make_shared<Float8FakeQuantizeConfig>(activation_dtype, granularity, activation_value_lb,
                                                      activation_value_ub);
  return {with_qat_options(a, qat_backward, qat_guard_zero_blocks),
          with_qat_options(std::make_shared<Float8FakeQuantizeConfig>(weight_dtype, granularity), qat_backward,
                           qat_guard_zero_blocks)};
}
std::string Float8WeightOnlyConfig::to_string() const {
  return fmt::format("Float8WeightOnlyConfig(weight_dtype=torch.{}, granularity={}{})", dtype_name(weight_dtype),
                     qat::to_string(granularity), qat_options(qat_backward, qat_guard_zero_blocks));
}
void Float8WeightOnlyConfig::validate() const { fake_quantize_configs(); }
FakeQuantizeConfigs Float8WeightOnlyConfig::fake_quantize_configs() const {
  return {nullptr, with_qat_options(std::make_shared<Float8FakeQuantizeConfig>(weight_dtype, granularity), qat_backward,
                                    qat_guard_zero_blocks)};
}

std::shared_ptr<nn::Module> Float8FakeQuantizeConfig::quantized_linear(const nn::Linear& linear,
                                                                       const FakeQuantizeConfigBase* activation) const {
  return std::make_shared<Float8QuantizedLinear>(linear, *this,
                                                 activation_of_kind<Float8FakeQuantizeConfig>(activation, "a float8"));
}

// ---- the module ----
Float8QuantizedLinear::Float8QuantizedLinear(const nn::Linear& linear, const Float8FakeQuantizeConfig& wc,
                                             std::optional<Float8FakeQuantizeConfig> ac)
    : in_features(linear.in_features), out_features(linear.out_features), weight_config(wc), activation_config(ac) {
  NoGradGuard ng;
  const auto q = wc.quantize(linear.weight.detach());
  weight = register_buffer("weight", q.codes);
  weight_scale = register_buffer("weight_scale", q.scale);
  if (linear.bias.defined()) bias = register_buffer("bias", linear.bias.detach());
}

Float8QuantizedLinear::Float8QuantizedLinear(Tensor codes, Tensor scale, Tensor b, Float8FakeQuantizeConfig wc,
                                             std::optional<Float8FakeQuantizeConfig> ac)
    : weight_config(wc), activation_config(ac) {
  const char* ty = "Float8QuantizedLinear";
  LOWBIT_CHECK(codes.defined() && codes.dim() == 2 && codes.dtype() == wc.dtype,
               "{}: weight must be a matrix of {} codes, got {}", ty, dtype_name(wc.dtype),
               codes.defined() ? detail::desc(codes) : "undefined");
  out_features = codes.size(0);
  in_features = codes.size(1);
  const Shape want = per_tensor(wc.granularity) ? Shape{1, 1} : Shape{out_features, 1};
  LOWBIT_CHECK(scale.defined() && scale.dtype() == kFloat32 && scale.shape() == want,
               "{}: weight_scale must be float32 of shape {}, got {}", ty, shape_str(want),
               scale.defined() ? detail::desc(scale) : "undefined");
  LOWBIT_CHECK(!b.defined() || (b.dim() == 1 && b.size(0) == out_features && is_floating(b.dtype())),
               "{}: bias must be a floating vector of out_features={}, got {}", ty, out_features, detail::desc(b));
  weight = register_buffer("weight", codes);
  weight_scale = register_buffer("weight_scale", scale);
  if (b.defined()) bias = register_buffer("bias", b);
}

std::string Float8QuantizedLinear::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, bias={}, weight={}, activation={}", in_features, out_features,
                     bias.defined() ? "True" : "False", weight_config.to_string(),
                     activation_config ? activation_config->to_string() : "None");
}

Tensor Float8QuantizedLinear::dequantized_weight() const {
  NoGradGuard ng;
  return mul(weight.to(kFloat32), weight_scale);
}

Tensor Float8QuantizedLinear::forward(const Tensor& x) {
  LOWBIT_CHECK(
      x.defined() && (x.dtype() == kFloat32 || x.dtype() == kBFloat16) && x.dim() >= 1 && x.size(-1) == in_features,
      "Float8QuantizedLinear: input must be float32 or bfloat16 ending in in_features={}, got {}", in_features,
      x.defined() ? detail::desc(x) : "undefined");
  NoGradGuard ng;
  if (!activation_config) {  // the fake-quantized weight, rounded to x's dtype as the fake quantizer does
    const Tensor w = x.dtype() == kFloat32 ? dequantized_weight() : dequantized_weight().to(x.dtype());
    return linear(x, w, bias.defined() ? bias.to(x.dtype()) : Tensor());
  }
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  const Tensor x2 = x.reshape({-1, in_features});
  const auto qx = activation_config->quantize(x2);
  // codes as bfloat16 (exact), float32 sums, then (s_x[i] * s_w[j])
  Tensor acc = gemm_bf16(qx.codes.to(kBFloat16), false, weight.to(kBFloat16), true);
  const float* sx = qx.scale.data_ptr<float>();
  const float* sw = weight_scale.data_ptr<float>();
  const bool xt = qx.scale.numel() == 1, wt = weight_scale.numel() == 1;
  float* ap = acc.data_ptr<float>();
  const int64_t n = out_features;
  detail::parallel_for(acc.size(0), std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(n, 1)),
                       [&](int64_t r0, int64_t r1) {
                         for (int64_t i = r0; i < r1; ++i)
                           for (int64_t j = 0; j < n; ++j) ap[i * n + j] *= sx[xt ? 0 : i] * sw[wt ? 0 : j];
                       });
  Tensor out = bias.defined() ? add(acc, bias.to(kFloat32)) : acc;
  return out.to(x.dtype()).reshape(out_shape);
}

nn::Attributes Float8QuantizedLinear::checkpoint_attributes() const {
  nn::Attributes a = {{"quant_scheme", std::string("float8")},
                      {"weight_dtype", std::string(dtype_name(weight_config.dtype))},
                      {"weight_granularity", gran_name(weight_config.granularity)},
                      {"shape", std::vector<int64_t>{out_features, in_features}},
                      {"activation", std::string(activation_config ? "dynamic" : "none")}};
  if (activation_config) {
    a["activation_dtype"] = std::string(dtype_name(activation_config->dtype));
    a["activation_granularity"] = gran_name(activation_config->granularity);
    if (activation_config->hp_value_lb) a["activation_value_lb"] = *activation_config->hp_value_lb;
    if (activation_config->hp_value_ub) a["activation_value_ub"] = *activation_config->hp_value_ub;
  }
  return a;
}

std::shared_ptr<Float8QuantizedLinear> Float8QuantizedLinear::from_attributes(const nn::Attributes& a,
                                                                              const nn::NamedTensors& t) {
  const char* ty = "Float8QuantizedLinear";
  LOWBIT_CHECK(nn::attr_string(a, "quant_scheme", ty) == "float8", "{}: quant_scheme must be 'float8'", ty);
  for (const auto& [name, _] : t)
    LOWBIT_CHECK(name == "weight" || name == "weight_scale" || name == "bias", "{}: unexpected tensor '{}'", ty, name);
  const Float8FakeQuantizeConfig wc(float8_dtype_of(nn::attr_string(a, "weight_dtype", ty), ty),
                                    gran_of(nn::attr_string(a, "weight_granularity", ty), ty));
  std::optional<Float8FakeQuantizeConfig> ac;
  const std::string act = nn::attr_string(a, "activation", ty);
  LOWBIT_CHECK(act == "none" || act == "dynamic", "{}: activation must be 'none' or 'dynamic', got '{}'", ty, act);
  if (act == "dynamic") {
    auto opt = [&](const char* k) -> std::optional<double> {
      return a.count(k) ? std::optional<double>(nn::attr_double(a, k, ty)) : std::nullopt;
    };
    ac = Float8FakeQuantizeConfig(float8_dtype_of(nn::attr_string(a, "activation_dtype", ty), ty),
                                  gran_of(nn::attr_string(a, "activation_granularity", ty), ty),
                                  opt("activation_value_lb"), opt("activation_value_ub"));
  }
  const std::vector<int64_t> shape = nn::attr_ints(a, "shape", ty);
  const Tensor w = nn::find_tensor(t, "weight");
  LOWBIT_CHECK(shape.size() == 2 && w.defined() && w.shape() == Shape(shape.begin(), shape.end()),
               "{}: weight {} does not match the stated shape", ty, w.defined() ? shape_str(w.shape()) : "missing");
  return std::make_shared<Float8QuantizedLinear>(w, nn::find_tensor(t, "weight_scale"), nn::find_tensor(t, "bias"), wc,
                                                 ac);
}

}  // namespace lowbit::qat
