// Minifloats: the sign/exponent/mantissa formats of at most 8 bits (float8 e4m3fn/e5m2 and their
// fnuz variants, float6 e2m3fn/e3m2fn, float4 e2m1fn) and e8m0, described as data, with one
// reference codec. The engine's storage dtypes (float8_e4m3fn, float8_e8m0fnu,
// float4_e2m1fn_x2, ...) convert through it, and core/'s table of number formats builds its rows
// for these formats from the same descriptions, so every number lives in one place.
//
// Encoding rounds the float32 input to nearest, ties to even. Decoding is exact.
#pragma once
#include <cstdint>

namespace lowbit {

/// What a cast does with a finite value beyond the largest finite one (after rounding) when it
/// does not saturate.
enum class Overflow : uint8_t {
  Saturate,  // formats without inf/NaN (fp6, fp4) always saturate
  ToNaN,     // e4m3fn, the fnuz formats, e8m0
  ToInf,     // e5m2, bfloat16, float32
};

/// Sign + exp_bits + mant_bits, IEEE-like: exponent field 0 holds the subnormals.
struct MinifloatSpec {
  int exp_bits, mant_bits, bias;
  bool has_inf, has_nan, has_negative_zero;
  uint32_t nan_code;  // the canonical NaN code (sign bit clear); 0 when the format has none
  double max_finite;
  Overflow overflow;
  constexpr int bits() const { return 1 + exp_bits + mant_bits; }
};

// clang-format off
//                                                 E  M  bias inf    nan    -0     NaN code max finite overflow
inline constexpr MinifloatSpec kFloat8E4M3FN   {4, 3,  7, false, true,  true,  0x7F,    448.0,     Overflow::ToNaN};
inline constexpr MinifloatSpec kFloat8E5M2     {5, 2, 15, true,  true,  true,  0x7E,    57344.0,   Overflow::ToInf};
inline constexpr MinifloatSpec kFloat8E4M3FNUZ {4, 3,  8, false, true,  false, 0x80,    240.0,     Overflow::ToNaN};
inline constexpr MinifloatSpec kFloat8E5M2FNUZ {5, 2, 16, false, true,  false, 0x80,    57344.0,   Overflow::ToNaN};
inline constexpr MinifloatSpec kFloat6E2M3FN   {2, 3,  1, false, false, true,  0,       7.5,       Overflow::Saturate};
inline constexpr MinifloatSpec kFloat6E3M2FN   {3, 2,  3, false, false, true,  0,       28.0,      Overflow::Saturate};
inline constexpr MinifloatSpec kFloat4E2M1FN   {2, 1,  1, false, false, true,  0,       6.0,       Overflow::Saturate};
// clang-format on

/// One value's code (the low bits() bits): round to nearest, ties to even. saturate = true
/// clamps to +-max_finite (inf included; NaN stays NaN where the format has one, formats without
/// NaN map it to the largest magnitude); saturate = false follows spec.overflow, as PyTorch's
/// eager casts do.
uint32_t minifloat_encode(const MinifloatSpec& spec, float x, bool saturate);
/// A code's value (NaN codes: a quiet NaN).
float minifloat_decode(const MinifloatSpec& spec, uint32_t code);
/// The vectorized codec: n codes, one per byte, bit-identical to minifloat_encode (threads
/// split the work; results do not depend on the split).
void minifloat_encode_n(const MinifloatSpec& spec, const float* x, uint8_t* codes, int64_t n, bool saturate);
/// Codes of fp32(x[i]) * scale (scales == nullptr) or fp32(x[i]) * scales[i], on the calling
/// thread: the multiply and the cast in one vectorized loop, for kernels that split their work
/// themselves (float8's dynamic casts).
void minifloat_encode_scaled(const MinifloatSpec& spec, const float* x, float scale, const float* scales,
                             uint8_t* codes, int64_t n, bool saturate);
/// minifloat_encode_scaled with the format resolved once: the kernel compiled for `spec` (one of
/// the five built-in element formats), or nullptr for any other spec. For callers that encode
/// many short runs.
using MinifloatEncodeScaledFn = void (*)(const float* x, float scale, const float* scales, uint8_t* codes, int64_t n);
MinifloatEncodeScaledFn minifloat_encoder_scaled(const MinifloatSpec& spec, bool saturate);
/// The bfloat16 bits of decode(encode(fp32(x[i]) * scale, saturating)) * mult (scales / mults:
/// per element instead, when not null; mults only with scales), without the codes: the saturating RNE rounding done on
/// the float itself, on the calling thread. Bit-identical to encoding, decoding (a NaN decodes to
/// the quiet NaN 0x7FC00000), multiplying by mult and keeping the top 16 bits -- exact bfloat16
/// values when mult is a power of two (a minifloat value has at most 4 significant bits).
void minifloat_round_scaled_bf16(const MinifloatSpec& spec, const float* x, float scale, const float* scales,
                                 float mult, const float* mults, uint16_t* out, int64_t n);
/// Blocked fake quantization in float32: for each of `blocks` runs of `block` values,
/// out[i] = decode(encode(fp32(x[i]) * scales[b], saturating)) * mults[b] (b: the run's index),
/// bit-identical to encoding, decoding and multiplying; the rounding is done on the float itself.
void minifloat_round_blocks_f32(const MinifloatSpec& spec, const float* x, int64_t block, int64_t blocks,
                                const float* scales, const float* mults, float* out);
/// n values through a 256-entry table.
void minifloat_decode_n(const MinifloatSpec& spec, const uint8_t* codes, float* out, int64_t n);

/// e8m0 (float8_e8m0fnu): an unsigned biased exponent, 2^(code - 127), code 255 = NaN, no zero.
/// Encoding follows PyTorch's cast: the power of two nearest in the mantissa (1.5 rounds up),
/// 0 and values up to 2^-127 give 0; negative, non-finite or too large values give 255.
uint32_t e8m0_encode(float x);
float e8m0_decode(uint32_t code);

enum class DType : uint8_t;
/// The codec of a low-precision storage dtype (float4_e2m1fn_x2: the codec of one nibble), or
/// null (float8_e8m0fnu uses e8m0_encode/e8m0_decode; other dtypes are not minifloats).
const MinifloatSpec* minifloat_spec(DType dtype);

}  // namespace lowbit
