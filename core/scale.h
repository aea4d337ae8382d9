// Scale rules, as small pieces the quantizers compose (spec §1.3, §3.3, §4.2 and §9 items 3, 6):
// the e8m0 block scales of MX formats (FLOOR, CEIL, EVEN, RCEIL) and float8's amax scaling with
// optional power-of-2 rounding. Integer affine qparams live in qat/affine.h.
#pragma once
#include <cstdint>

#include "lowbit/core/format.h"

namespace lowbit::core {

/// How an MX block's amax becomes its e8m0 scale (torchao's ScaleCalculationMode).
enum class E8M0Rounding : uint8_t { Floor, Ceil, Even, RCeil };
const char* to_string(E8M0Rounding mode);

/// The e8m0 scale of one MX block: the biased exponent byte b (255 = NaN) and the multiplier
/// r = 2^(127 - b) the block's elements are multiplied by before their cast (the e8m0 value of
/// byte 254 - b: b = 254 gives 2^-127, an fp32 subnormal; b = 255 gives NaN).
struct E8M0Scale {
  uint8_t byte;
  float multiplier;
};
/// emax of an element format: floor(log2(max_finite)) (e4m3fn 8, e5m2 15, e2m3 2, e3m2 4, e2m1 2).
int max_pow2(const Format& element);
/// The scale of a block whose largest magnitude is amax (NaN if any element is NaN), for element
/// format `element`. FLOOR: exponent of amax minus emax; CEIL: rounded up when amax's mantissa is
/// not zero; EVEN: amax's mantissa first rounded to the element's mantissa width (a block holding
/// FLT_MAX overflows to a NaN scale); all three clamp to [-127, 128] and give 255 for a non-finite
/// amax. RCEIL: d = amax * (1/max_finite) in fp32, its exponent rounded up (for an fp32-subnormal
/// d only when its mantissa exceeds half), 255 when d is not finite.
E8M0Scale e8m0_scale(float amax, const Format& element, E8M0Rounding mode);
/// e8m0_scale over n blocks at once, branch-free and vectorized (to_mx's hot loop): amax_bits[i]
/// are the bits of block i's |amax| (any NaN bit pattern for a block holding a NaN); writes each
/// block's byte and multiplier, equal to e8m0_scale's for the same amax.
void e8m0_scales(const uint32_t* amax_bits, int64_t n, const Format& element, E8M0Rounding mode, uint8_t* bytes,
                 float* multipliers);

/// float8 training scale (a multiplier: x_fp8 = cast(x * scale)): max_finite / max(amax, 1e-12)
/// computed in float64, then rounded to float32. amax = 0 gives max_finite * 1e12; amax = inf
/// gives 0; NaN gives NaN.
float float8_amax_to_scale(double amax, const Format& fp8);
/// 2^floor(log2(scale)) evaluated in float32 (log2f, floorf, exp2f) as torchao does: for a few
/// values just below 2^k the correctly rounded log2f rounds up to k, so the result is 2^k there.
float round_scale_to_power_of_2(float scale);
/// TransformerEngine's current-scaling scale (its Float8BlockScaling recipe; recipe_common.cuh's
/// compute_scale_from_amax): amax floored at epsilon; 1 for a zero, inf or NaN amax; otherwise
/// max_finite / amax as one float32 division, FLT_MAX where that overflows; pow2 clears the
/// mantissa bits (an exact 2^floor(log2(scale)), unlike round_scale_to_power_of_2's log2f edge).
float te_amax_to_scale(float amax, const Format& fp8, bool pow2, float epsilon = 0.0f);

/// NVFP4 (spec §4.7): 16-element blocks of fp4 e2m1 with an e4m3fn block scale and an optional
/// float32 per-tensor scale. The per-tensor scale of a tensor whose largest magnitude is amax:
/// fp32(amax) / (448 * 6), in float32.
float nvfp4_per_tensor_scale(float amax);
/// One block's scale: s8 = e4m3(clamp(amax / 6 [/ per_tensor_scale], 2^-6, 448)) in float32 (so an
/// inf amax saturates to 448 and a NaN amax gives the e4m3 NaN byte 0x7F), the multiplier applied
/// to the block's elements before their clamp to +-6 and fp4 cast -- 1 / fp32(s8), or
/// (1 / per_tensor_scale) / fp32(s8) -- and the scale that dequantizes them, fp32(s8) [*
/// per_tensor_scale]. per_tensor_scale <= 0 means single-level scaling.
struct NVFP4BlockScale {
  uint8_t e4m3_byte;
  float multiplier;
  float dequant_scale;
};
NVFP4BlockScale nvfp4_block_scale(float block_amax, float per_tensor_scale = 0.0f);
/// nvfp4_block_scale over n blocks at once (to_nvfp4's loop): the same bytes and multipliers,
/// the e4m3 rounding vectorized.
void nvfp4_block_scales(const float* block_amax, int64_t n, float per_tensor_scale, uint8_t* bytes, float* multipliers);

/// TransformerEngine's NVFP4 scales (torchao's NVFP4 training; spec §9 item 10), not
/// NVFP4Tensor's: the global encode scale enc = 2688 / amax_tensor (float32 division) capped at
/// FLT_MAX, 1 when amax is 0 or the quotient underflows to 0 (NaN stays NaN) ...
float te_nvfp4_encode_scale(float global_amax);
/// ... and per block s8 = e4m3(min(amax_block * (enc * fp32(1/6)), 448)) -- no 2^-6 floor -- and
/// the element multiplier min(1 / (fp32(s8) * dec), FLT_MAX), dec = 1 / enc.
struct TENVFP4BlockScale {
  float s8, mult;
};
TENVFP4BlockScale te_nvfp4_block_scale(float block_amax, float enc, float dec);

}  // namespace lowbit::core
