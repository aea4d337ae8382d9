// MX QAT and inference (torchao's prototype/qat/mx.py and MXDynamicActivationMXWeightConfig; spec
// §4.6, §9 item 8): MXFakeQuantizeConfig, the config that prepares and converts with it, and
// MXQuantizedLinear, the module MX QAT converts to.
#include <fmt/format.h>

#include <atomic>
#include <cmath>
#include <cstring>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/minifloat.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/core/blocks.h"
#include "lowbit/core/cast2d.h"
#include "lowbit/core/scale.h"
#include "lowbit/mx/mx.h"
#include "lowbit/mx/nvfp4.h"
#include "lowbit/qat/mx_quantized.h"
#include "lowbit/qat/quantize.h"
#include "int_kernels.h"

namespace lowbit::qat {

namespace {
using core::Cast2D;
using core::CastOutput;
using core::ScaleAxis;

// The MX cast of a rows x cols float32 matrix along its rows (blocks of the config's size).
Cast2D mx_cast(const Tensor& x32, const MXFakeQuantizeConfig& c, CastOutput out) {
  const core::Format& e = mx::mx_element(c.dtype);
  const core::E8M0Rounding mode = c.scaling_mode;
  return core::cast_blocked_2d(
      x32.data_ptr<float>(), x32.size(0), x32.size(1), e, ScaleAxis::Row, c.block_size,
      [&e, mode](float amax) { return core::e8m0_scale(amax, e, mode).multiplier; }, out);
}
// mx_cast's codes dequantized (decode(code) / multiplier): float32, or bfloat16 with *subnormal
// set when a block's smallest nonzero value is below bfloat16's normal range (mx_cast's
// bf16_subnormal). One pass when the blocks tile the rows: per chunk of blocks the amaxes as
// integer maxima, the e8m0 multipliers in one vectorized call (equal to e8m0_scale's), each value
// rounded on the float itself and multiplied back by the block's exact inverse multiplier (a power
// of two: the same float32 result as the division). 13x faster than the two-pass cast for the
// float32 form (26.8 -> 3.5 ms for 16M values, 2 threads).
Tensor mx_dequantized_rows(const Tensor& x32, const MXFakeQuantizeConfig& c, bool bf16, bool* subnormal = nullptr) {
  const int64_t k = x32.size(1), bs = c.block_size;
  if (k % bs != 0) {
    if (!bf16) return core::dequantize_f32(mx_cast(x32, c, CastOutput::Codes));
    Cast2D q = mx_cast(x32, c, CastOutput::Bf16Dequantized);
    if (subnormal) *subnormal = q.bf16_subnormal;
    return q.values;
  }
  const core::Format& e = mx::mx_element(c.dtype);
  const float smallest = static_cast<float>(core::decode(e, 1)), normal = std::ldexp(1.0f, -126);
  Tensor y = empty(x32.shape(), bf16 ? kBFloat16 : kFloat32);
  const float* xp = x32.data_ptr<float>();
  const int64_t nb = x32.numel() / bs, per_chunk = std::max<int64_t>(1, 1024 / bs);
  const int64_t chunks = (nb + per_chunk - 1) / per_chunk;
  std::atomic<bool> sub{false};
  detail::parallel_for(chunks, 8, [&](int64_t c0, int64_t c1) {
    std::vector<uint32_t> amax(static_cast<size_t>(per_chunk));
    std::vector<uint8_t> bytes(amax.size());
    std::vector<float> bm(amax.size()), binv(amax.size()), mult(static_cast<size_t>(bf16 ? per_chunk * bs : 0)),
        inv(mult.size());
    bool chunk_sub = false;
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t b0 = ch * per_chunk, n = std::min(nb, b0 + per_chunk) - b0;
      if (ch + 2 < c1)  // two chunks ahead, as to_mx: the amax pass would otherwise wait on each line
        for (int64_t i = (ch + 2) * per_chunk * bs; i < (ch + 3) * per_chunk * bs; i += 16) __builtin_prefetch(xp + i);
      for (int64_t b = 0; b < n; ++b) amax[static_cast<size_t>(b)] = core::amax_bits_of_run(xp + (b0 + b) * bs, bs);
      core::e8m0_scales(amax.data(), n, e, c.scaling_mode, bytes.data(), bm.data());
      for (int64_t b = 0; b < n; ++b) {
        const float iv = 1.0f / bm[static_cast<size_t>(b)];
        binv[static_cast<size_t>(b)] = iv;
        chunk_sub |= smallest * iv < normal;
      }
      const float* xc = xp + b0 * bs;
      if (bf16) {  // the bfloat16 rounding takes per-element multipliers: spread them
        for (int64_t b = 0; b < n; ++b) {
          std::fill_n(mult.data() + b * bs, bs, bm[static_cast<size_t>(b)]);
          std::fill_n(inv.data() + b * bs, bs, binv[static_cast<size_t>(b)]);
        }
        minifloat_round_scaled_bf16(*e.minifloat, xc, 0.0f, mult.data(), 1.0f, inv.data(),
                                    static_cast<uint16_t*>(y.raw_data()) + b0 * bs, n * bs);
      } else {
        minifloat_round_blocks_f32(*e.minifloat, xc, bs, n, bm.data(), binv.data(), y.data_ptr<float>() + b0 * bs);
      }
    }
    if (chunk_sub) sub = true;
  });
  if (subnormal) *subnormal = sub;
  return y;
}
// the float value of every e8m0 byte (2^(b - 127); 255: NaN)
struct E8M0Table {
  float v[256];
  E8M0Table() {
    for (uint32_t b = 0; b < 256; ++b) v[b] = e8m0_decode(b);
  }
};
const E8M0Table& e8m0_values() {
  static const E8M0Table t;
  return t;
}
// the input check every MX / NVFP4 fake quantizer makes
void check_fake_quant_input(const Tensor& x, const std::string& config) {
  LOWBIT_CHECK(x.defined() && (x.dtype() == kFloat32 || x.dtype() == kBFloat16) && x.dim() >= 1,
               "{}: input must be a float32 or bfloat16 tensor, got {}", config,
               x.defined() ? detail::desc(x) : "undefined");
}
// y (x's fake quantization) with a straight-through gradient to x, in x's dtype
Tensor straight_through(Tensor y, const Tensor& x, const char* node) {
  if (!detail::any_requires_grad({&x})) return y;
  const DType dt = x.dtype();
  detail::record(y, node, {x}, [dt](const Tensor& g) { return std::vector<Tensor>{g.dtype() == dt ? g : g.to(dt)}; });
  return y;
}
}  // namespace

// ---- MXFakeQuantizeConfig ----
MXFakeQuantizeConfig::MXFakeQuantizeConfig(core::FormatId d, int64_t b, core::E8M0Rounding m)
    : dtype(d), block_size(b), scaling_mode(m) {
  validate();
}

std::string MXFakeQuantizeConfig::to_string() const {
  return fmt::format("MXFakeQuantizeConfig(dtype={}, block_size={}, scaling_mode={}, kernel_preference=EMULATED{})",
                     mx::element_name(dtype), block_size, core::to_string(scaling_mode),
                     torchao_bias_parity ? ", torchao_bias_parity=True" : "");
}

void MXFakeQuantizeConfig::validate() const {
  mx::mx_element(dtype);
  LOWBIT_CHECK(block_size >= 1 && block_size <= (int64_t{1} << 20),
               "MXFakeQuantizeConfig: block_size must be in [1, 2^20], got {}", block_size);
}

Tensor MXFakeQuantizeConfig::fake_quantize(const Tensor& x_in, FakeQuantizer&) const {
  check_fake_quant_input(x_in, to_string());
  const Tensor x32 = x_in.detach().to(kFloat32);
  const int64_t k = x32.size(-1), rows = k ? x32.numel() / k : 0;
  Tensor y32 = mx_dequantized_rows(x32.reshape({rows, k}), *this, false).reshape(x32.shape());
  // torchao dequantizes to the input dtype
  return straight_through(x_in.dtype() == kFloat32 ? y32 : y32.to(x_in.dtype()), x_in, "MXFakeQuantizeBackward");
}

std::shared_ptr<nn::Module> MXFakeQuantizeConfig::quantized_linear(const nn::Linear& linear,
                                                                   const FakeQuantizeConfigBase* activation) const {
  return std::make_shared<MXQuantizedLinear>(linear, *this,
                                             activation_of_kind<MXFakeQuantizeConfig>(activation, "an MX"));
}

// ---- MXDynamicActivationMXWeightConfig ----
std::string MXDynamicActivationMXWeightConfig::to_string() const {
  return fmt::format(
      "MXDynamicActivationMXWeightConfig(block_size={}, activation_dtype={}, weight_dtype={}, "
      "kernel_preference=EMULATED, scaling_mode={})",
      block_size, mx::element_name(activation_dtype), mx::element_name(weight_dtype), core::to_string(scaling_mode));
}
void MXDynamicActivationMXWeightConfig::validate() const {
  LOWBIT_CHECK(activation_dtype == weight_dtype,
               "MXDynamicActivationMXWeightConfig: activation_dtype ({}) and weight_dtype ({}) must be equal",
               mx::element_name(activation_dtype), mx::element_name(weight_dtype));
  fake_quantize_configs();
}
FakeQuantizeConfigs MXDynamicActivationMXWeightConfig::fake_quantize_configs() const {
  return {std::make_shared<MXFakeQuantizeConfig>(activation_dtype, block_size, scaling_mode),
          std::make_shared<MXFakeQuantizeConfig>(weight_dtype, block_size, scaling_mode)};
}

// ---- MXQuantizedLinear ----
MXQuantizedLinear::MXQuantizedLinear(const nn::Linear& linear, const MXFakeQuantizeConfig& wc,
                                     std::optional<MXFakeQuantizeConfig> ac)
    : in_features(linear.in_features), out_features(linear.out_features), weight_config(wc), activation_config(ac) {
  NoGradGuard ng;
  const core::Format& e = mx::mx_element(wc.dtype);
  LOWBIT_CHECK(e.per_byte != 2 || in_features % 2 == 0,
               "MXQuantizedLinear: {} packs two elements per byte; in_features must be even, got {}",
               mx::element_name(wc.dtype), in_features);
  const Cast2D c = mx_cast(linear.weight.detach().to(kFloat32), wc, CastOutput::Codes);
  Tensor scale = empty(c.scale.shape(), kFloat8_e8m0fnu);
  const float* m = c.scale.data_ptr<float>();
  uint8_t* sb = static_cast<uint8_t*>(scale.raw_data());
  for (int64_t i = 0; i < scale.numel(); ++i)
    sb[i] = static_cast<uint8_t>(e8m0_encode(1.0f / m[i]));  // the exact power of two the multiplier inverts
  Tensor codes;
  if (e.per_byte == 2) {
    codes = empty({out_features, in_features / 2}, kFloat4_e2m1fn_x2);
    core::pack(e, static_cast<const uint8_t*>(c.values.raw_data()), static_cast<uint8_t*>(codes.raw_data()),
               c.values.numel());
  } else {
    codes = c.values;  // float8 dtype, or uint8 fp6 codes
  }
  weight = register_buffer("weight", codes);
  weight_scale = register_buffer("weight_scale", scale);
  if (linear.bias.defined()) bias = register_buffer("bias", linear.bias.detach().clone());
}

MXQuantizedLinear::MXQuantizedLinear(Tensor codes, Tensor scale, Tensor b, int64_t in, MXFakeQuantizeConfig wc,
                                     std::optional<MXFakeQuantizeConfig> ac)
    : in_features(in), weight_config(wc), activation_config(ac) {
  const char* ty = "MXQuantizedLinear";
  wc.validate();
  if (ac) ac->validate();
  const core::Format& e = mx::mx_element(wc.dtype);
  const DType want = e.per_byte == 2 ? kFloat4_e2m1fn_x2 : core::code_dtype(e);
  LOWBIT_CHECK(in >= 1 && (e.per_byte != 2 || in % 2 == 0), "{}: in_features must be positive (even for fp4), got {}",
               ty, in);
  LOWBIT_CHECK(
      codes.defined() && codes.dim() == 2 && codes.dtype() == want && codes.size(1) == (e.per_byte == 2 ? in / 2 : in),
      "{}: weight must be a matrix of {} codes with {} columns, got {}", ty, dtype_name(want),
      e.per_byte == 2 ? in / 2 : in, codes.defined() ? detail::desc(codes) : "undefined");
  out_features = codes.size(0);
  const Shape sshape{out_features, (in + wc.block_size - 1) / wc.block_size};
  LOWBIT_CHECK(scale.defined() && scale.dtype() == kFloat8_e8m0fnu && scale.shape() == sshape,
               "{}: weight_scale must be float8_e8m0fnu of shape {}, got {}", ty, shape_str(sshape),
               scale.defined() ? detail::desc(scale) : "undefined");
  if (e.bits < 8) {  // fp6 codes live in the low 6 bits; fp4 nibbles are always valid
    const uint8_t* p = static_cast<const uint8_t*>(codes.raw_data());
    int64_t bad = 0;
    if (e.per_byte == 1)
      for (int64_t i = 0; i < codes.numel(); ++i) bad += p[i] >> e.bits != 0;
    LOWBIT_CHECK(bad == 0, "{}: {} weight codes do not fit {} bits", ty, bad, e.bits);
  }
  LOWBIT_CHECK(!b.defined() || (b.dim() == 1 && b.size(0) == out_features && is_floating(b.dtype())),
               "{}: bias must be a floating vector of out_features={}, got {}", ty, out_features, detail::desc(b));
  weight = register_buffer("weight", codes);
  weight_scale = register_buffer("weight_scale", scale);
  if (b.defined()) bias = register_buffer("bias", b);
}

std::string MXQuantizedLinear::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, bias={}, weight={}, activation={}", in_features, out_features,
                     bias.defined() ? "True" : "False", weight_config.to_string(),
                     activation_config ? activation_config->to_string() : "None");
}

Tensor MXQuantizedLinear::dequantized_weight() const {
  NoGradGuard ng;
  const core::Format& e = mx::mx_element(weight_config.dtype);
  const int64_t n = out_features, k = in_features, bs = weight_config.block_size, nb = weight_scale.size(1);
  std::vector<uint8_t> codes(static_cast<size_t>(n * k));
  if (e.per_byte == 2)
    core::unpack(e, static_cast<const uint8_t*>(weight.raw_data()), codes.data(), n * k);
  else
    std::memcpy(codes.data(), weight.raw_data(), codes.size());
  float value[256];
  for (uint32_t c = 0; c < 256; ++c) value[c] = c < (1u << e.bits) ? core::decode(e, c) : 0.0f;
  Tensor out = empty({n, k}, kFloat32);
  float* o = out.data_ptr<float>();
  const uint8_t* sb = static_cast<const uint8_t*>(weight_scale.raw_data());
  const float* scale_of = e8m0_values().v;
  detail::parallel_for(n, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < k; ++j)
        o[r * k + j] = value[codes[static_cast<size_t>(r * k + j)]] * scale_of[sb[r * nb + j / bs]];
  });
  return out;
}

// what the cached forms of the weight were made from: (storage, version) of weight and weight_scale
std::vector<std::pair<const void*, uint64_t>> MXQuantizedLinear::weight_key() const {
  return {{weight.raw_data(), weight.version()}, {weight_scale.raw_data(), weight_scale.version()}};
}

std::pair<Tensor, bool> MXQuantizedLinear::bf16_weight() const {
  std::lock_guard<std::mutex> lock(pack_mutex_);
  const auto key = weight_key();
  if (!bf16_weight_.defined() || key != bf16_key_) {
    // the weight's values are exact in bfloat16 unless one is below bfloat16's normal range
    const double smallest = core::decode(mx::mx_element(weight_config.dtype), 1);
    bool sub = false;
    const uint8_t* sb = static_cast<const uint8_t*>(weight_scale.raw_data());
    for (int64_t i = 0; i < weight_scale.numel() && !sub; ++i)
      sub = sb[i] != 255 && smallest * std::ldexp(1.0, sb[i] - 127) < std::ldexp(1.0, -126);
    bf16_weight_ = dequantized_weight().to(kBFloat16);
    bf16_weight_sub_ = sub;
    bf16_key_ = key;
  }
  return {bf16_weight_, bf16_weight_sub_};
}

bool MXQuantizedLinear::integer_gemm_ok() const {
  if (!kernels::simd_available() || !activation_config) return false;
  const core::Format &we = mx::mx_element(weight_config.dtype), &ae = mx::mx_element(activation_config->dtype);
  return core::int8_value_multiplier(we) > 0 && core::int8_value_multiplier(ae) > 0 &&
         activation_config->block_size == weight_config.block_size &&
         kernels::mx_int8_supported(out_features, in_features, weight_config.block_size, we.per_byte == 2);
}

std::string MXQuantizedLinear::kernel_name() const {
  return kernel == Kernel::Integer && integer_gemm_ok() ? "int8 GEMM (VNNI)" : "dequantize + bfloat16 GEMM";
}

std::shared_ptr<const kernels::MXInt8Weight> MXQuantizedLinear::packed_weight() const {
  std::lock_guard<std::mutex> lock(pack_mutex_);
  const auto key = weight_key();
  if (!packed_ || key != packed_key_) {
    const core::Format& e = mx::mx_element(weight_config.dtype);
    const int mult = core::int8_value_multiplier(e);
    const int64_t n = out_features, k = in_features;
    std::vector<uint8_t> codes(static_cast<size_t>(n * k));
    core::unpack(e, static_cast<const uint8_t*>(weight.raw_data()), codes.data(), n * k);
    const int lut_size = 1 << e.bits;
    std::vector<int8_t> lut(static_cast<size_t>(lut_size));
    for (int c = 0; c < lut_size; ++c) lut[c] = static_cast<int8_t>(std::lrint(core::decode(e, c) * mult));
    std::vector<float> scales(static_cast<size_t>(weight_scale.numel()));
    const uint8_t* sb = static_cast<const uint8_t*>(weight_scale.raw_data());
    for (size_t i = 0; i < scales.size(); ++i) scales[i] = e8m0_values().v[sb[i]] / static_cast<float>(mult);
    packed_ = std::make_shared<const kernels::MXInt8Weight>(
        kernels::pack_mx_int8(codes.data(), lut.data(), lut_size, scales.data(), n, k, weight_config.block_size));
    packed_key_ = key;
  }
  return packed_;
}

// the activation's MX cast (to_mx: the same codes and scales as the fake quantizer's cast) as u8
// (value x multiplier + 128) and its block scales / multiplier
Tensor MXQuantizedLinear::forward_integer_gemm(const Tensor& x2) const {
  const core::Format& e = mx::mx_element(activation_config->dtype);
  const int mult = core::int8_value_multiplier(e);
  const mx::MXTensor q =
      mx::to_mx(x2, activation_config->dtype, activation_config->block_size, activation_config->scaling_mode);
  const Tensor codes_t = q.codes();  // one code per byte (fp4 unpacked)
  const int64_t m = x2.size(0), k = in_features, g = q.scale.size(1);
  uint8_t lut[64] = {};  // MX elements of up to 6 bits (int8_value_multiplier excludes float8)
  for (uint32_t c = 0; c < (1u << e.bits); ++c)
    lut[c] = static_cast<uint8_t>(std::lrint(core::decode(e, c) * mult) + 128);
  const Tensor a = empty({m, k}, kUInt8), as = empty({m, g}, kFloat32);
  const uint8_t* codes = static_cast<const uint8_t*>(codes_t.raw_data());
  uint8_t* ap = a.data_ptr<uint8_t>();
  const uint8_t* sb = static_cast<const uint8_t*>(q.scale.raw_data());
  float* asp = as.data_ptr<float>();
  const E8M0Table& ev = e8m0_values();
  detail::parallel_for(m, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    kernels::lookup_u8(codes + r0 * k, (r1 - r0) * k, lut, ap + r0 * k);
    for (int64_t i = r0 * g; i < r1 * g; ++i) asp[i] = ev.v[sb[i]] / static_cast<float>(mult);  // exact: powers of 2
  });
  Tensor out = empty({m, out_features}, kFloat32);
  const Tensor b = bias.defined() ? bias.to(kFloat32) : Tensor();
  kernels::gemm_mx_int8(ap, m, asp, *packed_weight(), b.defined() ? b.data_ptr<float>() : nullptr,
                        out.data_ptr<float>());
  return out;
}

Tensor MXQuantizedLinear::forward(const Tensor& x) {
  LOWBIT_CHECK(
      x.defined() && (x.dtype() == kFloat32 || x.dtype() == kBFloat16) && x.dim() >= 1 && x.size(-1) == in_features,
      "MXQuantizedLinear: input must be float32 or bfloat16 ending in in_features={}, got {}", in_features,
      x.defined() ? detail::desc(x) : "undefined");
  NoGradGuard ng;
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  const Tensor x2 = x.reshape({-1, in_features}).to(kFloat32);
  if (kernel == Kernel::Integer && integer_gemm_ok() && x2.size(0) > 0)
    return forward_integer_gemm(x2).to(x.dtype()).reshape(out_shape);
  const auto [w_bf16, w_sub] = bf16_weight();
  Tensor acc;
  if (!activation_config) {
    acc = x.dtype() == kFloat32 ? gemm(x2, false, dequantized_weight(), true)
                                : gemm_bf16(x2.to(kBFloat16), false, w_bf16, true);
  } else {
    bool a_sub = false;
    const Tensor qa = mx_dequantized_rows(x2, *activation_config, true, &a_sub);
    if (a_sub || w_sub)
      acc = gemm(mx_dequantized_rows(x2, *activation_config, false), false, dequantized_weight(), true);
    else
      acc = gemm_bf16(qa, false, w_bf16, true);
  }
  Tensor out = bias.defined() ? add(acc, bias.to(kFloat32)) : acc;
  return out.to(x.dtype()).reshape(out_shape);
}

nn::Attributes MXQuantizedLinear::checkpoint_attributes() const {
  nn::Attributes a = {{"quant_scheme", std::string("mx")},
                      {"weight_dtype", std::string(mx::element_name(weight_config.dtype))},
                      {"block_size", weight_config.block_size},
                      {"scaling_mode", std::string(core::to_string(weight_config.scaling_mode))},
                      {"in_features", in_features},
                      {"activation", std::string(activation_config ? "dynamic" : "none")}};
  if (activation_config) {
    a["activation_dtype"] = std::string(mx::element_name(activation_config->dtype));
    a["activation_block_size"] = activation_config->block_size;
    a["activation_scaling_mode"] = std::string(core::to_string(activation_config->scaling_mode));
  }
  return a;
}

std::shared_ptr<MXQuantizedLinear> MXQuantizedLinear::from_attributes(const nn::Attributes& a,
                                                                      const nn::NamedTensors& t) {
  const char* ty = "MXQuantizedLinear";
  LOWBIT_CHECK(nn::attr_string(a, "quant_scheme", ty) == "mx", "{}: quant_scheme must be 'mx'", ty);
  for (const auto& [name, _] : t)
    LOWBIT_CHECK(name == "weight" || name == "weight_scale" || name == "bias", "{}: unexpected tensor '{}'", ty, name);
  const MXFakeQuantizeConfig wc(mx::mx_element(nn::attr_string(a, "weight_dtype", ty)).id,
                                nn::attr_int(a, "block_size", ty),
                                mx::parse_scale_mode(nn::attr_string(a, "scaling_mode", ty)));
  std::optional<MXFakeQuantizeConfig> ac;
  const std::string act = nn::attr_string(a, "activation", ty);
  LOWBIT_CHECK(act == "none" || act == "dynamic", "{}: activation must be 'none' or 'dynamic', got '{}'", ty, act);
  if (act == "dynamic")
    ac = MXFakeQuantizeConfig(mx::mx_element(nn::attr_string(a, "activation_dtype", ty)).id,
                              nn::attr_int(a, "activation_block_size", ty),
                              mx::parse_scale_mode(nn::attr_string(a, "activation_scaling_mode", ty)));
  return std::make_shared<MXQuantizedLinear>(nn::find_tensor(t, "weight"), nn::find_tensor(t, "weight_scale"),
                                             nn::find_tensor(t, "bias"), nn::attr_int(a, "in_features", ty), wc, ac);
}

// ---- NVFP4 ----
namespace {
// an NVFP4 tensor of x (per-tensor scale from x's amax when asked)
mx::NVFP4Tensor nvfp4_of(const Tensor& x, bool per_tensor) {
  return mx::to_nvfp4(x, per_tensor ? std::optional<float>(mx::nvfp4_per_tensor_scale_of(x)) : std::nullopt);
}
// fp4 value x e4m3 block scale, without the per-tensor scale (float32)
Tensor block_scaled(mx::NVFP4Tensor t) {
  t.per_tensor_scale.reset();
  return t.dequantize(kFloat32);
}
}  // namespace

std::string NVFP4FakeQuantizeConfig::to_string() const {
  return fmt::format("NVFP4FakeQuantizeConfig(use_per_tensor_scale={})", use_per_tensor_scale ? "True" : "False");
}

Tensor NVFP4FakeQuantizeConfig::fake_quantize(const Tensor& x_in, FakeQuantizer&) const {
  check_fake_quant_input(x_in, to_string());
  // in the input's dtype
  return straight_through(nvfp4_of(x_in.detach(), use_per_tensor_scale).dequantize(), x_in,
                          "NVFP4FakeQuantizeBackward");
}

std::shared_ptr<nn::Module> NVFP4FakeQuantizeConfig::quantized_linear(const nn::Linear& linear,
                                                                      const FakeQuantizeConfigBase* activation) const {
  return std::make_shared<NVFP4QuantizedLinear>(linear, *this,
                                                activation_of_kind<NVFP4FakeQuantizeConfig>(activation, "an NVFP4"));
}

std::string NVFP4DynamicActivationNVFP4WeightConfig::to_string() const {
  return fmt::format("NVFP4DynamicActivationNVFP4WeightConfig(use_dynamic_per_tensor_scale={})",
                     use_dynamic_per_tensor_scale ? "True" : "False");
}
FakeQuantizeConfigs NVFP4DynamicActivationNVFP4WeightConfig::fake_quantize_configs() const {
  return {std::make_shared<NVFP4FakeQuantizeConfig>(use_dynamic_per_tensor_scale),
          std::make_shared<NVFP4FakeQuantizeConfig>(use_dynamic_per_tensor_scale)};
}

NVFP4QuantizedLinear::NVFP4QuantizedLinear(const nn::Linear& linear, const NVFP4FakeQuantizeConfig& wc,
                                           std::optional<NVFP4FakeQuantizeConfig> ac)
    : in_features(linear.in_features), out_features(linear.out_features), weight_config(wc), activation_config(ac) {
  NoGradGuard ng;
  LOWBIT_CHECK(in_features % 16 == 0, "NVFP4QuantizedLinear: in_features must be a multiple of 16, got {}",
               in_features);
  const mx::NVFP4Tensor t = nvfp4_of(linear.weight.detach(), wc.use_per_tensor_scale);
  weight = register_buffer("weight", t.qdata);
  weight_scale = register_buffer("weight_scale", t.scale);
  if (t.per_tensor_scale)
    weight_per_tensor_scale = register_buffer("weight_per_tensor_scale", full({1}, *t.per_tensor_scale));
  if (linear.bias.defined()) bias = register_buffer("bias", linear.bias.detach().clone());
}

NVFP4QuantizedLinear::NVFP4QuantizedLinear(Tensor codes, Tensor scale, Tensor pts, Tensor b, NVFP4FakeQuantizeConfig wc,
                                           std::optional<NVFP4FakeQuantizeConfig> ac)
    : weight_config(wc), activation_config(ac) {
  const char* ty = "NVFP4QuantizedLinear";
  LOWBIT_CHECK(codes.defined() && codes.dim() == 2 && codes.dtype() == kFloat4_e2m1fn_x2 && codes.size(1) % 8 == 0,
               "{}: weight must be a float4_e2m1fn_x2 matrix of rows of 8k bytes, got {}", ty,
               codes.defined() ? detail::desc(codes) : "undefined");
  out_features = codes.size(0);
  in_features = codes.size(1) * 2;
  const Shape sshape{out_features, in_features / 16};
  LOWBIT_CHECK(scale.defined() && scale.dtype() == kFloat8_e4m3fn && scale.shape() == sshape,
               "{}: weight_scale must be float8_e4m3fn of shape {}, got {}", ty, shape_str(sshape),
               scale.defined() ? detail::desc(scale) : "undefined");
  LOWBIT_CHECK(wc.use_per_tensor_scale == pts.defined(),
               "{}: weight_per_tensor_scale must be present exactly when use_per_tensor_scale is set", ty);
  LOWBIT_CHECK(!pts.defined() || (pts.dtype() == kFloat32 && pts.numel() == 1),
               "{}: weight_per_tensor_scale must be one float32 value, got {}", ty, detail::desc(pts));
  LOWBIT_CHECK(!b.defined() || (b.dim() == 1 && b.size(0) == out_features && is_floating(b.dtype())),
               "{}: bias must be a floating vector of out_features={}, got {}", ty, out_features, detail::desc(b));
  weight = register_buffer("weight", codes);
  weight_scale = register_buffer("weight_scale", scale);
  if (pts.defined()) weight_per_tensor_scale = register_buffer("weight_per_tensor_scale", pts);
  if (b.defined()) bias = register_buffer("bias", b);
}

std::string NVFP4QuantizedLinear::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, bias={}, weight={}, activation={}", in_features, out_features,
                     bias.defined() ? "True" : "False", weight_config.to_string(),
                     activation_config ? activation_config->to_string() : "None");
}

Tensor NVFP4QuantizedLinear::forward(const Tensor& x) {
  LOWBIT_CHECK(
      x.defined() && (x.dtype() == kFloat32 || x.dtype() == kBFloat16) && x.dim() >= 1 && x.size(-1) == in_features,
      "NVFP4QuantizedLinear: input must be float32 or bfloat16 ending in in_features={}, got {}", in_features,
      x.defined() ? detail::desc(x) : "undefined");
  NoGradGuard ng;
  const DType dt = x.dtype();
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  mx::NVFP4Tensor w;
  w.qdata = weight;
  w.scale = weight_scale;
  w.shape = {out_features, in_features};
  if (weight_per_tensor_scale.defined()) w.per_tensor_scale = weight_per_tensor_scale.data_ptr<float>()[0];
  const Tensor x2 = x.reshape({-1, in_features});
  Tensor out;
  if (!activation_config) {  // the weight dequantized (with its per-tensor scale) in x's dtype
    const Tensor wd = w.dequantize(dt);
    out = dt == kFloat32 ? gemm(x2, false, wd, true) : gemm_bf16(x2, false, wd, true).to(dt);
  } else {
    const mx::NVFP4Tensor a = nvfp4_of(x2, activation_config->use_per_tensor_scale);
    // block-scaled values are exact in bfloat16 (2 x 4 significant bits, e4m3 scales >= 2^-6)
    out = gemm_bf16(block_scaled(a).to(kBFloat16), false, block_scaled(w).to(kBFloat16), true).to(dt);
    if (a.per_tensor_scale || w.per_tensor_scale) {
      const float p = a.per_tensor_scale.value_or(1.0f) * w.per_tensor_scale.value_or(1.0f);
      out = mul(out, full({}, p, kFloat32).to(dt));  // torchao: result * (pts_a * pts_b).to(out_dtype)
    }
  }
  if (bias.defined()) out = add(out, bias.to(dt));
  return out.reshape(out_shape);
}

nn::Attributes NVFP4QuantizedLinear::checkpoint_attributes() const {
  nn::Attributes a = {{"quant_scheme", std::string("nvfp4")},
                      {"weight_dtype", std::string("fp4_e2m1")},
                      {"use_per_tensor_scale", int64_t{weight_config.use_per_tensor_scale ? 1 : 0}},
                      {"activation", std::string(activation_config ? "dynamic" : "none")}};
  if (activation_config) a["activation_per_tensor_scale"] = int64_t{activation_config->use_per_tensor_scale ? 1 : 0};
  return a;
}

std::shared_ptr<NVFP4QuantizedLinear> NVFP4QuantizedLinear::from_attributes(const nn::Attributes& a,
                                                                            const nn::NamedTensors& t) {
  const char* ty = "NVFP4QuantizedLinear";
  LOWBIT_CHECK(nn::attr_string(a, "quant_scheme", ty) == "nvfp4", "{}: quant_scheme must be 'nvfp4'", ty);
  for (const auto& [name, _] : t)
    LOWBIT_CHECK(name == "weight" || name == "weight_scale" || name == "weight_per_tensor_scale" || name == "bias",
                 "{}: unexpected tensor '{}'", ty, name);
  const NVFP4FakeQuantizeConfig wc(nn::attr_flag(a, "use_per_tensor_scale", ty));
  std::optional<NVFP4FakeQuantizeConfig> ac;
  const std::string act = nn::attr_string(a, "activation", ty);
  LOWBIT_CHECK(act == "none" || act == "dynamic", "{}: activation must be 'none' or 'dynamic', got '{}'", ty, act);
  if (act == "dynamic") ac = NVFP4FakeQuantizeConfig(nn::attr_flag(a, "activation_per_tensor_scale", ty));
  return std::make_shared<NVFP4QuantizedLinear>(nn::find_tensor(t, "weight"), nn::find_tensor(t, "weight_scale"),
                                                nn::find_tensor(t, "weight_per_tensor_scale"),
                                                nn::find_tensor(t, "bias"), wc, ac);
}

}  // namespace lowbit::qat
