#include "lowbit/qat/quantized_linear.h"

#include "lowbit/qat/float8_quantized.h"
#include "lowbit/qat/mx_quantized.h"

#include <algorithm>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/core/format.h"
#include "int_kernels.h"

namespace lowbit::qat {

namespace {
// bits and signedness come from the format table (the name must be an integer format)
const core::Format& int_format(const std::string& dtype) {
  static constexpr core::FormatKind kInteger = core::FormatKind::Integer;
  return core::format_by_name(dtype, "QuantizedLinear weight_dtype", &kInteger);
}
int bits_of(const std::string& dtype) { return int_format(dtype).bits; }
bool is_signed_dtype(const std::string& dtype) { return int_format(dtype).is_signed; }
}  // namespace

std::shared_ptr<QuantizedLinear> QuantizedLinear::from_linear(const nn::Linear& l,
                                                              const std::optional<IntxFakeQuantizeConfig>& act,
                                                              const IntxFakeQuantizeConfig& wcfg) {
  wcfg.validate();
  LOWBIT_CHECK(wcfg.granularity.has_value(), "QuantizedLinear: weight config {} has no granularity", wcfg.to_string());
  LOWBIT_CHECK(wcfg.zero_point_domain == ZeroPointDomain::INT,
               "QuantizedLinear: only the INT zero-point domain is supported, got {}",
               qat::to_string(wcfg.zero_point_domain));
  auto m = std::make_shared<QuantizedLinear>();
  m->in_features = l.in_features;
  m->out_features = l.out_features;
  m->weight_dtype = wcfg.dtype;
  m->weight_mapping = wcfg.mapping_type;
  m->activation_config = act;
  const Tensor w = l.weight.detach().to(kFloat32);
  m->block_size = std::holds_alternative<PerAxis>(*wcfg.granularity) ? Shape{1, w.size(1)}
                                                                     : block_size_for(*wcfg.granularity, w.shape());
  const auto [qmin, qmax] = wcfg.range();
  // the same qparams and codes the weight fake quantizer produces
  auto [s, z] =
      choose_qparams_affine(w, wcfg.mapping_type, m->block_size, qmin, qmax, wcfg.eps, ZeroPointDomain::INT, kInt32);
  const Tensor codes = quantize_affine(w, m->block_size, s, z, qmin >= 0 ? kUInt8 : kInt8, qmin, qmax);
  const core::Format& fmt = int_format(wcfg.dtype);
  if (fmt.per_byte == 2) {
    // the format table's packing, row by row: two codes per byte, element 2i in the low nibble
    // (an odd in_features leaves the last high nibble of each row 0)
    const int64_t k = m->in_features, row_bytes = (k + 1) / 2;
    Tensor packed = empty({m->out_features, row_bytes}, kUInt8);
    const auto* c = static_cast<const uint8_t*>(codes.raw_data());
    for (int64_t r = 0; r < m->out_features; ++r)
      core::pack(fmt, c + r * k, packed.data_ptr<uint8_t>() + r * row_bytes, k);
    m->qdata = m->register_buffer("qdata", packed);
  } else {
    m->qdata = m->register_buffer("qdata", codes);
  }
  m->scale = m->register_buffer("scale", s);
  m->zero_point = m->register_buffer("zero_point", z.to(kInt8));
  if (l.bias.defined()) m->bias = m->register_parameter("bias", l.bias);
  return m;
}

std::shared_ptr<nn::Module> IntxFakeQuantizeConfig::quantized_linear(const nn::Linear& linear,
                                                                     const FakeQuantizeConfigBase* activation) const {
  std::optional<IntxFakeQuantizeConfig> act;
  if (activation) {
    const auto* a = dynamic_cast<const IntxFakeQuantizeConfig*>(activation);  // QuantizedLinear pairs intx with intx
    LOWBIT_CHECK(a != nullptr, "convert: QuantizedLinear takes an intx activation config, got {}",
                 activation->to_string());
    act = *a;
  }
  return QuantizedLinear::from_linear(linear, act, *this);
}

bool QuantizedLinear::is_packed() const { return int_format(weight_dtype).per_byte == 2; }

Tensor QuantizedLinear::weight_codes() const {
  if (!is_packed()) return qdata.dtype() == kInt8 ? qdata : qdata.to(kInt32);
  const core::Format& fmt = int_format(weight_dtype);
  Tensor nibbles = empty({out_features, in_features}, kUInt8);
  const int64_t row_bytes = (in_features + 1) / 2;
  for (int64_t r = 0; r < out_features; ++r)
    core::unpack(fmt, qdata.data_ptr<uint8_t>() + r * row_bytes, nibbles.data_ptr<uint8_t>() + r * in_features,
                 in_features);
  if (!fmt.is_signed) return nibbles;
  Tensor out = empty({out_features, in_features}, kInt8);
  const uint8_t* c = nibbles.data_ptr<uint8_t>();
  int8_t* o = out.data_ptr<int8_t>();
  for (int64_t i = 0; i < out.numel(); ++i)
    o[i] = static_cast<int8_t>(c[i] >= 8 ? c[i] - 16 : c[i]);  // 4-bit two's complement
  return out;
}

Tensor QuantizedLinear::dequantized_weight() const {
  const auto [qmin, qmax] = quant_range(weight_dtype);
  Tensor codes = weight_codes();
  if (codes.dtype() == kInt32) codes = codes.to(kInt8);
  return dequantize_affine(codes, block_size, scale, zero_point.to(kInt32), qmin, qmax);
}

int64_t QuantizedLinear::weight_bytes() const {
  return static_cast<int64_t>(qdata.nbytes() + scale.nbytes() + zero_point.nbytes());
}

std::string QuantizedLinear::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, bias={}, weight_dtype={}, block_size={}, activation={}",
                     in_features, out_features, bias.defined() ? "True" : "False", weight_dtype, shape_str(block_size),
                     activation_config ? activation_config->to_string() : "None");
}

nn::Attributes QuantizedLinear::checkpoint_attributes() const {
  const bool packed = is_packed();
  nn::Attributes a = {{"quant_scheme", std::string("intx_affine")},
                      {"weight_format", weight_dtype},
                      {"bits", int64_t{bits_of(weight_dtype)}},
                      {"shape", std::vector<int64_t>{out_features, in_features}},
                      {"block_size", std::vector<int64_t>(block_size.begin(), block_size.end())},
                      {"mapping_type", std::string(qat::to_string(weight_mapping))},
                      {"zero_point_domain", std::string("INT")},
                      {"packing", std::string(packed ? "nibbles" : "none")},
                      {"nibble_order", std::string(packed ? "low_first" : "none")},
                      {"scale_dtype", std::string("float32")},
                      {"activation", activation_config ? activation_config->to_string() : std::string("none")}};
  if (activation_config) a.merge(activation_config->to_attributes("activation_"));
  return a;
}

std::shared_ptr<QuantizedLinear> QuantizedLinear::from_attributes(const nn::Attributes& a, const nn::NamedTensors& t) {
  const std::string type = "QuantizedLinear";
  const std::string scheme = nn::attr_string(a, "quant_scheme", type);
  LOWBIT_CHECK(scheme == "intx_affine", "{}: unknown quant_scheme '{}' (intx_affine)", type, scheme);
  static constexpr core::FormatKind kInteger = core::FormatKind::Integer;
  const core::Format& fmt =
      core::format_by_name(nn::attr_string(a, "weight_format", type), type + " weight_format", &kInteger);
  LOWBIT_CHECK(fmt.bits <= 8 && nn::attr_int(a, "bits", type) == fmt.bits,
               "{}: bits {} does not match weight_format {} ({} bits, at most 8)", type, nn::attr_int(a, "bits", type),
               fmt.name, fmt.bits);
  const auto shape = nn::attr_ints(a, "shape", type), block = nn::attr_ints(a, "block_size", type);
  LOWBIT_CHECK(shape.size() == 2 && shape[0] > 0 && shape[1] > 0,
               "{}: shape must be [out_features, in_features], got {}", type, shape_str(shape));
  LOWBIT_CHECK(block.size() == 2 && block[0] >= 1 && block[1] >= 1, "{}: block_size must be 2 positive sizes, got {}",
               type, shape_str(block));
  const std::string mapping = nn::attr_string(a, "mapping_type", type);
  LOWBIT_CHECK(mapping == "SYMMETRIC" || mapping == "ASYMMETRIC", "{}: unknown mapping_type '{}'", type, mapping);
  LOWBIT_CHECK(nn::attr_string(a, "zero_point_domain", type) == "INT", "{}: only the INT zero-point domain is stored",
               type);
  const bool packed = fmt.per_byte == 2;
  LOWBIT_CHECK(nn::attr_string(a, "packing", type) == (packed ? "nibbles" : "none") &&
                   nn::attr_string(a, "nibble_order", type) == (packed ? "low_first" : "none"),
               "{}: {} codes are stored {}", type, fmt.name,
               packed ? "as nibbles, low nibble first (packing = nibbles, nibble_order = low_first)" : "one per byte");
  auto m = std::make_shared<QuantizedLinear>();
  m->out_features = shape[0];
  m->in_features = shape[1];
  m->weight_dtype = fmt.name;
  m->weight_mapping = mapping == "ASYMMETRIC" ? MappingType::ASYMMETRIC : MappingType::SYMMETRIC;
  m->block_size = Shape(block.begin(), block.end());
  if (a.count("activation_dtype"))
    m->activation_config = IntxFakeQuantizeConfig::from_attributes(a, "activation_", type);
  // the tensors must be exactly what from_linear writes for this scheme
  const Shape blocks = blocks_shape(Shape(shape.begin(), shape.end()), m->block_size, "QuantizedLinear");
  const Shape code_shape = {shape[0], packed ? (shape[1] + 1) / 2 : shape[1]};
  const DType code_dtype = packed || !fmt.is_signed ? kUInt8 : kInt8;
  const auto expect = [&](const char* name, const Shape& s, DType d) -> Tensor {
    const Tensor x = nn::find_tensor(t, name);
    LOWBIT_CHECK(x.defined() && x.shape() == s && x.dtype() == d, "{}: tensor '{}' must be {} {}, got {}", type, name,
                 shape_str(s), dtype_name(d), x.defined() ? detail::desc(x) : "nothing");
    return x;
  };
  m->qdata = m->register_buffer("qdata", expect("qdata", code_shape, code_dtype));
  m->scale = m->register_buffer("scale", expect("scale", blocks, kFloat32));
  m->zero_point = m->register_buffer("zero_point", expect("zero_point", blocks, kInt8));
  const Tensor bias = nn::find_tensor(t, "bias");
  if (bias.defined()) m->bias = m->register_parameter("bias", expect("bias", {shape[0]}, kFloat32));
  for (const auto& [name, _] : t)
    LOWBIT_CHECK(name == "qdata" || name == "scale" || name == "zero_point" || name == "bias",
                 "{}: unexpected tensor '{}'", type, name);
  if (!packed) {  // codes one per byte must lie in the format's range
    const int64_t n = m->qdata.numel();
    int64_t bad = 0;
    if (code_dtype == kInt8) {
      const int8_t* c = m->qdata.data_ptr<int8_t>();
      for (int64_t i = 0; i < n; ++i) bad += c[i] < fmt.qmin || c[i] > fmt.qmax;
    } else {
      const uint8_t* c = m->qdata.data_ptr<uint8_t>();
      for (int64_t i = 0; i < n; ++i) bad += c[i] > fmt.qmax;
    }
    LOWBIT_CHECK(bad == 0, "{}: {} codes outside the {} range [{}, {}]", type, bad, fmt.name, fmt.qmin, fmt.qmax);
  }
  return m;
}

void register_module_types() {
  nn::register_module_type("QuantizedLinear", [](const nn::Attributes& a, const nn::NamedTensors& t) {
    return std::static_pointer_cast<nn::Module>(QuantizedLinear::from_attributes(a, t));
  });
  nn::register_module_type("Float8QuantizedLinear", [](const nn::Attributes& a, const nn::NamedTensors& t) {
    return std::static_pointer_cast<nn::Module>(Float8QuantizedLinear::from_attributes(a, t));
  });
  nn::register_module_type("MXQuantizedLinear", [](const nn::Attributes& a, const nn::NamedTensors& t) {
    return std::static_pointer_cast<nn::Module>(MXQuantizedLinear::from_attributes(a, t));
  });
  nn::register_module_type("NVFP4QuantizedLinear", [](const nn::Attributes& a, const nn::NamedTensors& t) {
    return std::static_pointer_cast<nn::Module>(NVFP4QuantizedLinear::from_attributes(a, t));
  });
}

// Whether every zero point is 0 (symmetric weights), cached per zero_point (storage, version).
bool QuantizedLinear::zero_points_all_zero() const {
  std::lock_guard<std::mutex> lock(pack_mutex_);
  const std::pair<const void*, uint64_t> key{zero_point.raw_data(), zero_point.version()};
  if (zp_zero_key_ != key) {
    const int8_t* p = zero_point.data_ptr<int8_t>();
    zp_all_zero_ = std::all_of(p, p + zero_point.numel(), [](int8_t v) { return v == 0; });
    zp_zero_key_ = key;
  }
  return zp_all_zero_;
}

// int8 per-token dynamic activations x symmetric (zero point 0) signed weights of at most 8 bits,
// blocks of whole rows or groups along K, a layout the VNNI kernel takes.
bool QuantizedLinear::integer_gemm_ok() const {
  if (!kernels::simd_available() || !activation_config || !activation_config->granularity) return false;
  const auto& a = *activation_config;
  const auto [aqmin, aqmax] = a.range();
  const auto [wqmin, wqmax] = quant_range(weight_dtype);
  return std::holds_alternative<PerToken>(*a.granularity) && a.is_dynamic &&
         a.zero_point_domain == ZeroPointDomain::INT && aqmin >= -128 && aqmax <= 127 && wqmin >= -128 &&
         wqmax <= 127 && is_signed_dtype(weight_dtype) && block_size.size() == 2 && block_size[0] == 1 &&
         kernels::grouped_s8_supported(out_features, in_features, block_size[1]) && zero_points_all_zero();
}

// weight-only signed codes: 1..4 bits live in sign-extended nibbles, 5..8 bits in int8
bool QuantizedLinear::weight_only_gemv_ok(int64_t rows) const {
  return kernels::simd_available() && !activation_config && rows <= 16 && block_size.size() == 2 &&
         block_size[0] == 1 &&
         kernels::weight_only_supported(bits_of(weight_dtype) <= 4 ? 4 : 8, is_signed_dtype(weight_dtype), in_features,
                                        block_size[1]);
}

std::string QuantizedLinear::kernel_for(int64_t rows) const {
  if (kernel == Kernel::Integer && integer_gemm_ok()) return "int8 GEMM (VNNI)";
  if (kernel == Kernel::Integer && weight_only_gemv_ok(rows)) return "weight-only GEMV";
  return "dequantize + float32 GEMM";
}

std::shared_ptr<const kernels::GroupedS8Weight> QuantizedLinear::packed_weight() const {
  std::lock_guard<std::mutex> lock(pack_mutex_);
  std::vector<std::pair<const void*, uint64_t>> key;
  for (const Tensor* t : {&qdata, &scale, &zero_point}) key.emplace_back(t->raw_data(), t->version());
  if (!packed_ || key != packed_key_) {
    Tensor codes = weight_codes();
    packed_ = std::make_shared<const kernels::GroupedS8Weight>(kernels::pack_grouped_s8(
        codes.data_ptr<int8_t>(), scale.data_ptr<float>(), out_features, in_features, block_size[1]));
    packed_key_ = key;
  }
  return packed_;
}

Tensor QuantizedLinear::forward_integer_gemm(const Tensor& x) const {
  const auto& a = *activation_config;
  const auto [qmin, qmax] = a.range();
  const int64_t m = x.size(0);
  auto [codes, s, z] =
      quantize_affine_dynamic(x, a.mapping_type, {1, in_features}, kInt8, qmin, qmax, a.eps, a.zero_point_precision);
  uint8_t* u = static_cast<uint8_t*>(codes.raw_data());  // int8 q -> uint8 q + 128
  const int64_t n = codes.numel();
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) u[i] ^= 0x80;
  std::vector<float> offset(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i)
    offset[i] =
        128.0f + (z.dtype() == kFloat32 ? z.data_ptr<float>()[i] : static_cast<float>(z.data_ptr<int32_t>()[i]));
  auto w = packed_weight();
  Tensor out = empty({m, out_features}, kFloat32);
  const Tensor b = bias.defined() ? bias.detach().to(kFloat32) : Tensor();
  kernels::gemm_u8s8_grouped(u, m, *w, s.data_ptr<float>(), offset.data(), b.defined() ? b.data_ptr<float>() : nullptr,
                             out.data_ptr<float>());
  return out;
}

Tensor QuantizedLinear::forward_weight_only_gemv(const Tensor& x) const {
  Tensor out = empty({x.size(0), out_features}, kFloat32);
  const Tensor b = bias.defined() ? bias.detach().to(kFloat32) : Tensor();
  kernels::gemv_weight_only(x.data_ptr<float>(), x.size(0), static_cast<const uint8_t*>(qdata.raw_data()),
                            bits_of(weight_dtype) <= 4 ? 4 : 8, out_features, in_features, block_size[1],
                            scale.data_ptr<float>(), zero_points_all_zero() ? nullptr : zero_point.data_ptr<int8_t>(),
                            b.defined() ? b.data_ptr<float>() : nullptr, out.data_ptr<float>());
  return out;
}

Tensor QuantizedLinear::forward(const Tensor& x) {
  LOWBIT_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == in_features,
               "QuantizedLinear: input {} must have last dimension in_features={}",
               x.defined() ? detail::desc(x) : "undefined", in_features);
  const bool needs_grad = detail::any_requires_grad({&x});
  if (kernel == Kernel::Integer && !needs_grad &&
      x.dtype() == kFloat32) {  // other dtypes: the exact path, in their own dtype
    const int64_t rows = x.numel() / in_features;
    Shape out_shape = x.shape();
    out_shape.back() = out_features;
    const bool gemm = integer_gemm_ok(), gemv = !gemm && weight_only_gemv_ok(rows);
    if (gemm || gemv) {
      const Tensor x2 = x.reshape({rows, in_features});
      return (gemm ? forward_integer_gemm(x2) : forward_weight_only_gemv(x2)).reshape(out_shape);
    }
  }
  Tensor xq = x;
  if (activation_config) {
    // dynamic: qparams from this input, as the prepared module; straight-through gradient to x
    {
      std::lock_guard<std::mutex> lock(pack_mutex_);
      const std::string key = activation_config->to_string();
      if (!act_quantizer_ || act_quantizer_key_ != key) {
        act_quantizer_ = std::make_shared<FakeQuantizer>(*activation_config);
        act_quantizer_key_ = key;
      }
    }
    xq = act_quantizer_->forward(x);
  }
  if (xq.dtype() == kFloat32) return linear(xq, dequantized_weight(), bias);
  // other floating inputs (bfloat16): weight and bias in the input's dtype, as the prepared module
  return linear(xq, dequantized_weight().to(xq.dtype()), bias.defined() ? bias.to(xq.dtype()) : bias);
}

}  // namespace lowbit::qat
