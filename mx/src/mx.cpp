// to_mx and MXTensor (spec §4.1-4.3, §9 item 6): per block amax -> e8m0 scale -> scaled
// elements cast with round-to-nearest-even; dequantization in float32.
#include "lowbit/mx/mx.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/minifloat.h"
#include "lowbit/core/blocks.h"

namespace lowbit::mx {

namespace {
constexpr FormatId kElements[] = {FormatId::Float8E4M3FN, FormatId::Float8E5M2, FormatId::Float6E2M3FN,
                                  FormatId::Float6E3M2FN, FormatId::Float4E2M1FN};
bool is_element(FormatId id) {
  for (FormatId e : kElements)
    if (e == id) return true;
  return false;
}
template <int B>
void blocks_amax(const float* x, int64_t blocks, uint32_t* amax) {
  for (int64_t b = 0; b < blocks; ++b) amax[b] = core::amax_bits_of_run(x + b * B, B);
}
template <int B>
void spread(const float* block_value, int64_t blocks, float* out) {
  for (int64_t b = 0; b < blocks; ++b) {
    const float v = block_value[b];
#pragma omp simd
    for (int i = 0; i < B; ++i) out[b * B + i] = v;
  }
}
}  // namespace

const char* element_name(FormatId id) {
  switch (id) {
    case FormatId::Float8E4M3FN: return "float8_e4m3fn";
    case FormatId::Float8E5M2: return "float8_e5m2";
    case FormatId::Float6E2M3FN: return "fp6_e2m3";
    case FormatId::Float6E3M2FN: return "fp6_e3m2";
    case FormatId::Float4E2M1FN: return "fp4_e2m1";
    default: return "?";
  }
}

std::string mx_element_names() {
  std::string s;
  for (FormatId e : kElements) s += (s.empty() ? "" : ", ") + std::string(element_name(e));
  return s;
}

const core::Format& mx_element(FormatId id) {
  LOWBIT_CHECK(is_element(id), "MX element format must be one of {}, got {}", mx_element_names(),
               core::format(id).name);
  return core::format(id);
}

const core::Format& mx_element(std::string_view name) {
  const core::Format* f = core::find_format(name);
  LOWBIT_CHECK(f != nullptr && is_element(f->id), "MX element format must be one of {}, got '{}'", mx_element_names(),
               name);
  return *f;
}

E8M0Rounding parse_scale_mode(std::string_view name) {
  for (E8M0Rounding m : {E8M0Rounding::Floor, E8M0Rounding::Ceil, E8M0Rounding::Even, E8M0Rounding::RCeil})
    if (name == core::to_string(m)) return m;
  throw Error(fmt::format("MX scale_calculation_mode must be FLOOR, CEIL, EVEN or RCEIL, got '{}'", name));
}

MXTensor to_mx(const Tensor& x_in, FormatId elem, int64_t block_size, E8M0Rounding mode) {
  const char* op = "to_mx";
  const core::Format& e = mx_element(elem);
  LOWBIT_CHECK(x_in.defined() && (x_in.dtype() == kFloat32 || x_in.dtype() == kBFloat16) && x_in.dim() >= 1,
               "{}: input must be a float32 or bfloat16 tensor of at least 1 dim, got {}", op,
               x_in.defined() ? lowbit::detail::desc(x_in) : "undefined");
  LOWBIT_CHECK(block_size >= 1 && block_size <= (int64_t{1} << 20), "{}: block_size must be in [1, 2^20], got {}", op,
               block_size);
  const int64_t K = x_in.size(-1);
  LOWBIT_CHECK(K % block_size == 0, "{}: the last dim ({}) of {} must be a multiple of block_size {}", op, K,
               shape_str(x_in.shape()), block_size);
  LOWBIT_CHECK(e.per_byte != 2 || K % 2 == 0, "{}: {} packs two elements per byte; the last dim must be even, got {}",
               op, element_name(elem), K);
  const Tensor x = x_in.dtype() == kFloat32 ? x_in : x_in.to(kFloat32);
  const int64_t nb = x.numel() / block_size;
  MXTensor t;
  t.elem = elem;
  t.block_size = block_size;
  t.orig_dtype = x_in.dtype();
  t.shape = x_in.shape();
  Shape sshape = t.shape;
  sshape.back() = K / block_size;
  t.scale = empty(sshape, kFloat8_e8m0fnu);
  const bool packed = e.per_byte == 2;
  Shape qshape = t.shape;
  if (packed) qshape.back() = K / 2;
  t.qdata = empty(qshape, packed ? kFloat4_e2m1fn_x2 : e.storage_dtype);
  const MinifloatSpec& spec = *e.minifloat;
  // fp8: FLOOR/CEIL/EVEN clamp to +-max before PyTorch's cast, RCEIL does not; fp6/fp4 saturate
  const bool saturate = mode != E8M0Rounding::RCeil || e.bits < 8;
  const float* xp = x.data_ptr<float>();
  uint8_t* sb = static_cast<uint8_t*>(t.scale.raw_data());
  uint8_t* qp = static_cast<uint8_t*>(t.qdata.raw_data());
  // chunks of whole blocks (about 1024 elements, 4 KB: short enough that the DRAM stream of the
  // amax pass and the encoder's compute interleave; 4096 measured slower): each block's amax as
  // an integer max, the chunk's scales in one vectorized call, the multipliers spread per
  // element, one encode (compiled for the element format) and, for fp4, the nibble packing
  int64_t per_chunk = std::max<int64_t>(1, 1024 / block_size);
  if (packed && per_chunk * block_size % 2 != 0) ++per_chunk;  // chunks start on whole bytes
  const int64_t chunks = (nb + per_chunk - 1) / per_chunk;
  lowbit::detail::parallel_for(chunks, std::max<int64_t>(1, 8), [&](int64_t c0, int64_t c1) {
    std::vector<float> mult(static_cast<size_t>(per_chunk * block_size)), block_mult(static_cast<size_t>(per_chunk));
    std::vector<uint32_t> amax(static_cast<size_t>(per_chunk));
    std::vector<uint8_t> tmp(packed ? mult.size() : 0);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b0 = c * per_chunk, b1 = std::min(nb, b0 + per_chunk), len = (b1 - b0) * block_size;
      const float* cx = xp + b0 * block_size;
      const int64_t nbk = b1 - b0;
      // the default block of 32: fixed trip counts unroll into a few vector ops
      if (block_size == 32)
        blocks_amax<32>(cx, nbk, amax.data());
      else
        for (int64_t b = 0; b < nbk; ++b)
          amax[static_cast<size_t>(b)] = core::amax_bits_of_run(cx + b * block_size, block_size);
      core::e8m0_scales(amax.data(), nbk, e, mode, sb + b0, block_mult.data());
      if (block_size == 32)
        spread<32>(block_mult.data(), nbk, mult.data());
      else
        for (int64_t b = 0; b < nbk; ++b)
          std::fill_n(mult.data() + b * block_size, block_size, block_mult[static_cast<size_t>(b)]);
      uint8_t* dst = packed ? tmp.data() : qp + b0 * block_size;
      minifloat_encode_scaled(spec, cx, 0.0f, mult.data(), dst, len, saturate);
      if (packed) core::pack(e, tmp.data(), qp + b0 * block_size / 2, len);
    }
  });
  return t;
}

Tensor MXTensor::codes() const {
  const core::Format& e = mx_element(elem);
  if (qdata.dtype() == kUInt8) return qdata;
  Tensor out = empty(shape, kUInt8);
  if (e.per_byte != 2) {  // fp8: the same bytes
    std::memcpy(out.raw_data(), qdata.raw_data(), static_cast<size_t>(out.numel()));
    return out;
  }
  core::unpack(e, static_cast<const uint8_t*>(qdata.raw_data()), static_cast<uint8_t*>(out.raw_data()), out.numel());
  return out;
}

Tensor MXTensor::dequantize(std::optional<DType> dtype) const {
  const DType to = dtype.value_or(orig_dtype);
  LOWBIT_CHECK(to == kFloat32 || to == kBFloat16,
               "MXTensor::dequantize: target dtype must be float32 or bfloat16, got {}", dtype_name(to));
  const core::Format& e = mx_element(elem);
  float value[256];
  for (uint32_t c = 0; c < 256; ++c) value[c] = c < (1u << e.bits) ? core::decode(e, c) : 0.0f;
  const Tensor q = codes();
  Tensor out = empty(shape, kFloat32);
  const uint8_t* qp = static_cast<const uint8_t*>(q.raw_data());
  const uint8_t* sb = static_cast<const uint8_t*>(scale.raw_data());
  float* o = out.data_ptr<float>();
  const int64_t nb = out.numel() / block_size;
  lowbit::detail::parallel_for(nb, core::grain_for(block_size), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float f = sb[b] == 255 ? std::numeric_limits<float>::quiet_NaN() : std::ldexp(1.0f, sb[b] - 127);
      for (int64_t i = b * block_size; i < (b + 1) * block_size; ++i) o[i] = value[qp[i]] * f;
    }
  });
  return to == kFloat32 ? out : out.to(to);
}

}  // namespace lowbit::mx
