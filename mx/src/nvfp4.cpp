// NVFP4Tensor (spec §4.7, §9 item 9): e4m3 block scales over 16 fp4 elements, optional
// per-tensor scale.
#include "lowbit/mx/nvfp4.h"

#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/minifloat.h"
#include "lowbit/core/blocks.h"
#include "lowbit/core/format.h"
#include "lowbit/core/scale.h"

namespace lowbit::mx {

namespace {
constexpr int64_t kBlock = 16;
Tensor as_f32(const Tensor& x) { return x.dtype() == kFloat32 ? x : x.to(kFloat32); }
}  // namespace

float nvfp4_per_tensor_scale_of(const Tensor& x) {
  LOWBIT_CHECK(x.defined() && (x.dtype() == kFloat32 || x.dtype() == kBFloat16),
               "nvfp4_per_tensor_scale_of: input must be float32 or bfloat16, got {}",
               x.defined() ? lowbit::detail::desc(x) : "undefined");
  const Tensor f = as_f32(x);
  // the tensor's amax as the largest |x| bits (a NaN's bits exceed inf's, as amax_of_run's NaN)
  const uint32_t bits = core::amax_bits_threaded(f.data_ptr<float>(), f.numel());
  float amax;
  std::memcpy(&amax, &bits, 4);
  return core::nvfp4_per_tensor_scale(amax);
}

NVFP4Tensor to_nvfp4(const Tensor& x_in, std::optional<float> pts) {
  const char* op = "to_nvfp4";
  LOWBIT_CHECK(x_in.defined() && (x_in.dtype() == kFloat32 || x_in.dtype() == kBFloat16) && x_in.dim() >= 1,
               "{}: input must be a float32 or bfloat16 tensor of at least 1 dim, got {}", op,
               x_in.defined() ? lowbit::detail::desc(x_in) : "undefined");
  const int64_t K = x_in.size(-1);
  LOWBIT_CHECK(K % kBlock == 0, "{}: the last dim ({}) of {} must be a multiple of the block size 16", op, K,
               shape_str(x_in.shape()));
  const Tensor x = as_f32(x_in);
  const int64_t nb = x.numel() / kBlock;
  NVFP4Tensor t;
  t.per_tensor_scale = pts;
  t.orig_dtype = x_in.dtype();
  t.shape = x_in.shape();
  Shape sshape = t.shape, qshape = t.shape;
  sshape.back() = K / kBlock;
  qshape.back() = K / 2;
  t.scale = empty(sshape, kFloat8_e4m3fn);
  t.qdata = empty(qshape, kFloat4_e2m1fn_x2);
  const core::Format& fp4 = core::format(core::FormatId::Float4E2M1FN);
  const float* xp = x.data_ptr<float>();
  uint8_t* sb = static_cast<uint8_t*>(t.scale.raw_data());
  uint8_t* qp = static_cast<uint8_t*>(t.qdata.raw_data());
  const float p = pts.value_or(0.0f);  // <= 0: single level (core::nvfp4_block_scale)
  LOWBIT_CHECK(!pts || !(*pts <= 0.0f), "{}: per_tensor_scale must be positive (or NaN/inf, which propagate), got {}",
               op, *pts);
  // chunks of 64 blocks: each block's scale, its multiplier spread per element, then one
  // saturating encode of the chunk (x * multiplier clamped to +-6 and rounded to nearest even is
  // the saturating encode of x * multiplier: NaN -> the largest magnitude either way) and one pack
  constexpr int64_t kPer = 64;
  const MinifloatEncodeScaledFn encode = minifloat_encoder_scaled(*fp4.minifloat, true);
  lowbit::detail::parallel_for((nb + kPer - 1) / kPer, 4, [&](int64_t c0, int64_t c1) {
    float mult[kPer * kBlock], amax[kPer], bm[kPer];
    uint8_t codes[kPer * kBlock];
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t b0 = ch * kPer, n = std::min(nb, b0 + kPer) - b0;
      for (int64_t b = 0; b < n; ++b) {  // |x|'s largest bits: a NaN's bits exceed inf's (amax_of_run's NaN)
        const uint32_t a = core::amax_bits_of_run(xp + (b0 + b) * kBlock, kBlock);
        std::memcpy(amax + b, &a, 4);
      }
      core::nvfp4_block_scales(amax, n, p, sb + b0, bm);
      for (int64_t b = 0; b < n; ++b) std::fill_n(mult + b * kBlock, kBlock, bm[b]);
      encode(xp + b0 * kBlock, 0.0f, mult, codes, n * kBlock);
      core::pack(fp4, codes, qp + b0 * kBlock / 2, n * kBlock);
    }
  });
  return t;
}

Tensor NVFP4Tensor::hp_scales() const {
  const MinifloatSpec& e4m3 = *minifloat_spec(kFloat8_e4m3fn);
  Tensor out = empty(scale.shape(), kFloat32);
  const uint8_t* sb = static_cast<const uint8_t*>(scale.raw_data());
  float* o = out.data_ptr<float>();
  float table[256];
  for (uint32_t c = 0; c < 256; ++c) table[c] = minifloat_decode(e4m3, c);
  const float pts = per_tensor_scale.value_or(1.0f);
  const bool two_level = per_tensor_scale.has_value();
  lowbit::detail::parallel_for(out.numel(), 1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) o[i] = two_level ? pts * table[sb[i]] : table[sb[i]];  // RN(pts * s8)
  });
  return out;
}

Tensor NVFP4Tensor::dequantize(std::optional<DType> dtype) const {
  const DType to = dtype.value_or(orig_dtype);
  LOWBIT_CHECK(to == kFloat32 || to == kBFloat16,
               "NVFP4Tensor::dequantize: target dtype must be float32 or bfloat16, got {}", dtype_name(to));
  const core::Format& fp4 = core::format(core::FormatId::Float4E2M1FN);
  float value[16];
  for (uint32_t c = 0; c < 16; ++c) value[c] = core::decode(fp4, c);
  const Tensor hp = hp_scales();
  const float* h = hp.data_ptr<float>();
  const uint8_t* q = static_cast<const uint8_t*>(qdata.raw_data());
  Tensor out = empty(shape, kFloat32);
  float* o = out.data_ptr<float>();
  const int64_t nb = out.numel() / kBlock;
  lowbit::detail::parallel_for(nb, core::grain_for(kBlock), [&](int64_t b0, int64_t b1) {
    int64_t b = b0;
#if defined(__AVX512F__)
    // a block is 8 bytes of nibbles and one register of 16 floats: the nibbles in order (low
    // first), widened to indices, looked up in the 16-entry table by a permute, times the scale
    const __m512 table = _mm512_loadu_ps(value);
    const __m128i low4 = _mm_set1_epi8(0x0F);
    for (; b < b1; ++b) {
      uint64_t bytes;
      std::memcpy(&bytes, q + b * kBlock / 2, 8);
      const __m128i v = _mm_cvtsi64_si128(static_cast<long long>(bytes));
      const __m128i nib =
          _mm_unpacklo_epi8(_mm_and_si128(v, low4), _mm_and_si128(_mm_srli_epi16(v, 4), low4));  // 16 codes
      const __m512 vals = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nib), table);
      _mm512_storeu_ps(o + b * kBlock, _mm512_mul_ps(vals, _mm512_set1_ps(h[b])));
    }
#endif
    for (; b < b1; ++b)
      for (int64_t j = 0; j < kBlock / 2; ++j) {  // the low nibble first
        const uint8_t byte = q[b * kBlock / 2 + j];
        o[b * kBlock + 2 * j] = value[byte & 0xF] * h[b];
        o[b * kBlock + 2 * j + 1] = value[byte >> 4] * h[b];
      }
  });
  return to == kFloat32 ? out : out.to(to);
}

}  // namespace lowbit::mx
