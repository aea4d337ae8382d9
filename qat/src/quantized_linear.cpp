#include "lowbit/qat/quantized_linear.h"

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"

namespace lowbit::qat {

namespace {
int bits_of(const std::string& dtype) {
  const auto [lo, hi] = quant_range(dtype);
  int b = 0;
  while ((int64_t{1} << b) < hi - lo + 1) ++b;
  return b;
}
}  // namespace

std::shared_ptr<QuantizedLinear> QuantizedLinear::from_linear(const nn::Linear& l, const std::optional<IntxFakeQuantizeConfig>& act,
                                                              const IntxFakeQuantizeConfig& wcfg) {
  wcfg.validate();
  LOWBIT_CHECK(wcfg.granularity.has_value(), "QuantizedLinear: weight config {} has no granularity", wcfg.to_string());
  LOWBIT_CHECK(wcfg.zero_point_domain == ZeroPointDomain::INT, "QuantizedLinear: only the INT zero-point domain is supported, got {}",
               qat::to_string(wcfg.zero_point_domain));
  auto m = std::make_shared<QuantizedLinear>();
  m->in_features = l.in_features;
  m->out_features = l.out_features;
  m->weight_dtype = wcfg.dtype;
  m->activation_config = act;
  const Tensor w = l.weight.detach().to(kFloat32);
  m->block_size = std::holds_alternative<PerAxis>(*wcfg.granularity) ? Shape{1, w.size(1)} : block_size_for(*wcfg.granularity, w.shape());
  const auto [qmin, qmax] = wcfg.range();
  // the same qparams and codes the weight fake quantizer produces
  auto [s, z] = choose_qparams_affine(w, wcfg.mapping_type, m->block_size, qmin, qmax, wcfg.eps, ZeroPointDomain::INT, kInt32);
  const Tensor codes = quantize_affine(w, m->block_size, s, z, qmin >= 0 ? kUInt8 : kInt8, qmin, qmax);
  const int64_t n = codes.numel();
  if (bits_of(wcfg.dtype) <= 4) {
    LOWBIT_CHECK(m->in_features % 2 == 0, "QuantizedLinear: packing 4-bit codes needs an even in_features, got {}", m->in_features);
    Tensor packed = empty({m->out_features, m->in_features / 2}, kUInt8);
    const uint8_t* c = static_cast<const uint8_t*>(codes.raw_data());
    uint8_t* p = packed.data_ptr<uint8_t>();
    for (int64_t i = 0; i < n / 2; ++i) p[i] = static_cast<uint8_t>((c[2 * i] & 0x0f) | ((c[2 * i + 1] & 0x0f) << 4));
    m->qdata = m->register_buffer("qdata", packed);
  } else {
    m->qdata = m->register_buffer("qdata", codes);
  }
  m->scale = m->register_buffer("scale", s);
  m->zero_point = m->register_buffer("zero_point", z.to(kInt8));
  if (l.bias.defined()) m->bias = m->register_parameter("bias", l.bias);
  return m;
}

Tensor QuantizedLinear::weight_codes() const {
  if (qdata.dtype() != kUInt8 || qdata.size(1) * 2 != in_features) {
    return qdata.dtype() == kInt8 ? qdata : qdata.to(kInt32);
  }
  const bool is_unsigned = weight_dtype[0] == 'u';
  Tensor out = empty({out_features, in_features}, is_unsigned ? kUInt8 : kInt8);
  const uint8_t* p = qdata.data_ptr<uint8_t>();
  for (int64_t i = 0; i < qdata.numel(); ++i) {
    const uint8_t lo = p[i] & 0x0f, hi = p[i] >> 4;
    if (is_unsigned) {
      out.data_ptr<uint8_t>()[2 * i] = lo;
      out.data_ptr<uint8_t>()[2 * i + 1] = hi;
    } else {  // sign-extend 4-bit two's complement
      out.data_ptr<int8_t>()[2 * i] = static_cast<int8_t>(lo >= 8 ? lo - 16 : lo);
      out.data_ptr<int8_t>()[2 * i + 1] = static_cast<int8_t>(hi >= 8 ? hi - 16 : hi);
    }
  }
  return out;
}

Tensor QuantizedLinear::dequantized_weight() const {
  const auto [qmin, qmax] = quant_range(weight_dtype);
  Tensor codes = weight_codes();
  if (codes.dtype() == kInt32) codes = codes.to(kInt8);
  return dequantize_affine(codes, block_size, scale, zero_point.to(kInt32), qmin, qmax);
}

int64_t QuantizedLinear::weight_bytes() const { return static_cast<int64_t>(qdata.nbytes() + scale.nbytes() + zero_point.nbytes()); }

std::string QuantizedLinear::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, bias={}, weight_dtype={}, block_size={}, activation={}", in_features, out_features,
                     bias.defined() ? "True" : "False", weight_dtype, shape_str(block_size),
                     activation_config ? activation_config->to_string() : "None");
}

std::map<std::string, std::string> QuantizedLinear::checkpoint_attributes() const {
  const bool packed = qdata.dtype() == kUInt8 && qdata.dim() == 2 && qdata.size(1) * 2 == in_features;
  return {{"quant_scheme", "intx_affine"},
          {"dtype", weight_dtype},
          {"bits", std::to_string(bits_of(weight_dtype))},
          {"shape", shape_str(Shape{out_features, in_features})},
          {"block_size", shape_str(block_size)},
          {"mapping_type", "symmetric"},
          {"zero_point_domain", "int"},
          {"packing", packed ? "nibbles" : "none"},
          {"nibble_order", packed ? "low_first" : "none"},
          {"scale_dtype", "float32"},
          {"activation", activation_config ? activation_config->to_string() : "none"}};
}

Tensor QuantizedLinear::forward(const Tensor& x) {
  Tensor xq = x;
  if (activation_config) {
    FakeQuantizer fq(*activation_config);  // dynamic: qparams from this input, as the prepared module
    NoGradGuard ng;
    xq = fq.forward(x);
  }
  return linear(xq, dequantized_weight(), bias);
}

}  // namespace lowbit::qat
