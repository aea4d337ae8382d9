// The minifloat codec: a branchy scalar reference and a branch-free bulk encoder the compiler
// vectorizes (AVX-512 here), checked bit-identical against each other in tests/autograd.
#include "lowbit/autograd/minifloat.h"

#include <bit>
#include <cmath>
#include <limits>

#include "lowbit/autograd/kernel.h"

namespace lowbit {

namespace {
inline uint32_t bits_of(float x) { return std::bit_cast<uint32_t>(x); }
inline float float_of(uint32_t u) { return std::bit_cast<float>(u); }

// Largest finite magnitude code (e4m3fn: 0x7E, e5m2: 0x7B, fnuz: 0x7F, fp6/fp4: all ones).
constexpr uint32_t max_magnitude_code(const MinifloatSpec& f) {
  const uint32_t all = (1u << (f.exp_bits + f.mant_bits)) - 1;
  if (f.has_inf) return all - (1u << f.mant_bits);       // the exponent below all-ones, full mantissa
  if (f.has_nan && f.has_negative_zero) return all - 1;  // S.1111.111 is NaN
  return all;
}
}  // namespace

uint32_t minifloat_encode(const MinifloatSpec& f, float x, bool saturate) {
  const int E = f.exp_bits, M = f.mant_bits;
  const uint32_t u = bits_of(x), a = u & 0x7fffffffu;
  const uint32_t sign_code = (u >> 31) << (E + M);
  const uint32_t max_mag = max_magnitude_code(f);
  if (a > 0x7f800000u) {  // NaN
    if (f.has_nan) return f.has_negative_zero ? (f.nan_code | sign_code) : f.nan_code;
    return sign_code | max_mag;
  }
  uint64_t mag;
  const uint32_t min_normal_bits = static_cast<uint32_t>(127 - f.bias + 1) << 23;
  if (a >= min_normal_bits) {
    // rebias the exponent and round the mantissa to M bits, ties to even
    const int64_t r = static_cast<int64_t>(a) + (static_cast<int64_t>(f.bias - 127) << 23) +
                      ((int64_t{1} << (22 - M)) - 1) + ((a >> (23 - M)) & 1);
    mag = static_cast<uint64_t>(r) >> (23 - M);
  } else {
    // subnormal: adding 2^(24 - M - bias) makes the FPU round |x| to a multiple of the
    // smallest subnormal (ties to even); the difference of the bit patterns is the code
    const uint32_t magic_bits = static_cast<uint32_t>((127 - f.bias) + (23 - M) + 1) << 23;
    mag = bits_of(float_of(a) + float_of(magic_bits)) - magic_bits;
  }
  if (mag > max_mag) {
    if (saturate || f.overflow == Overflow::Saturate) {
      mag = max_mag;
    } else if (f.overflow == Overflow::ToNaN) {
      return f.has_negative_zero ? (f.nan_code | sign_code) : f.nan_code;
    } else {
      mag = ((1u << E) - 1) << M;  // infinity
    }
  }
  if (mag == 0 && !f.has_negative_zero) return 0;
  return sign_code | static_cast<uint32_t>(mag);
}

float minifloat_decode(const MinifloatSpec& f, uint32_t code) {
  const int E = f.exp_bits, M = f.mant_bits;
  code &= (1u << (1 + E + M)) - 1;
  const bool neg = (code >> (E + M)) & 1;
  const uint32_t e = (code >> M) & ((1u << E) - 1), m = code & ((1u << M) - 1);
  if (f.has_nan && !f.has_negative_zero && code == f.nan_code) return std::numeric_limits<float>::quiet_NaN();
  if (f.has_nan && f.has_negative_zero && !f.has_inf && (code & ~(1u << (E + M))) == f.nan_code)
    return std::numeric_limits<float>::quiet_NaN();
  if (f.has_inf && e == (1u << E) - 1)
    return m == 0 ? (neg ? -INFINITY : INFINITY) : std::numeric_limits<float>::quiet_NaN();
  const float v = e == 0 ? std::ldexp(static_cast<float>(m), 1 - f.bias - M)
                         : std::ldexp(static_cast<float>((1u << M) + m), static_cast<int>(e) - f.bias - M);
  return neg ? -v : v;
}

namespace {
// The constants of one spec and one saturation choice, hoisted out of the bulk loop.
struct EncodeParams {
  uint32_t shift, round_add, bias_adj, min_normal_bits, magic_bits, max_mag, sign_shift;
  uint32_t over_mag;  // magnitude code an overflow turns into (max or inf)
  bool over_to_nan;   // overflow gives NaN instead
  bool neg_nan;       // NaN keeps the sign bit (formats with -0)
  bool has_nan, has_negative_zero;
  uint32_t nan_code;
  constexpr EncodeParams(const MinifloatSpec& f, bool saturate) {
    const int E = f.exp_bits, M = f.mant_bits;
    shift = static_cast<uint32_t>(23 - M);
    round_add = (1u << (22 - M)) - 1;
    bias_adj = static_cast<uint32_t>(f.bias - 127) << 23;  // wraps: a subtraction modulo 2^32
    min_normal_bits = static_cast<uint32_t>(127 - f.bias + 1) << 23;
    magic_bits = static_cast<uint32_t>((127 - f.bias) + (23 - M) + 1) << 23;
    max_mag = max_magnitude_code(f);
    sign_shift = static_cast<uint32_t>(E + M);
    const bool sat = saturate || f.overflow == Overflow::Saturate;
    over_to_nan = !sat && f.overflow == Overflow::ToNaN;
    over_mag = sat || f.overflow != Overflow::ToInf ? max_mag : ((1u << E) - 1) << M;
    neg_nan = f.has_negative_zero;
    has_nan = f.has_nan;
    has_negative_zero = f.has_negative_zero;
    nan_code = f.nan_code;
  }
};

// Branch-free: every path is computed and selected, so a loop over it vectorizes.
inline uint8_t encode_lane(const EncodeParams& p, uint32_t u) {
  const uint32_t a = u & 0x7fffffffu;
  const uint32_t sign = (u >> 31) << p.sign_shift;
  const uint32_t mag_normal = (a + p.bias_adj + p.round_add + ((a >> p.shift) & 1u)) >> p.shift;
  const uint32_t mag_sub = bits_of(float_of(a) + float_of(p.magic_bits)) - p.magic_bits;
  uint32_t mag = a >= p.min_normal_bits ? mag_normal : mag_sub;
  const bool over = mag > p.max_mag;
  mag = over ? p.over_mag : mag;
  uint32_t r = (mag == 0 && !p.has_negative_zero) ? 0u : (sign | mag);
  const uint32_t nan_r = p.neg_nan ? (p.nan_code | sign) : p.nan_code;
  r = over && p.over_to_nan ? nan_r : r;
  const bool is_nan = a > 0x7f800000u;
  r = is_nan ? (p.has_nan ? nan_r : (sign | p.max_mag)) : r;
  return static_cast<uint8_t>(r);
}
// The parameters by value and restrict pointers: the byte stores may alias anything, so with
// the parameters behind a reference GCC reloads them every element and does not vectorize.
void encode_range(const EncodeParams p, const float* __restrict x, uint8_t* __restrict codes, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) codes[i] = encode_lane(p, bits_of(x[i]));
}
void encode_scaled_range(const EncodeParams p, const float* __restrict x, float s, const float* __restrict each,
                         uint8_t* __restrict codes, int64_t n) {
  if (each) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) codes[i] = encode_lane(p, bits_of(x[i] * each[i]));
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) codes[i] = encode_lane(p, bits_of(x[i] * s));
  }
}

// The rounding of minifloat_round_scaled_bf16 on float bits, branch-free.
struct RoundParams {
  uint32_t shift, round_add, keep_mask, min_normal_bits, magic_bits, max_bits, nan_bits;
  bool has_negative_zero;
  explicit RoundParams(const MinifloatSpec& f) {
    const int M = f.mant_bits;
    shift = static_cast<uint32_t>(23 - M);
    round_add = (1u << (22 - M)) - 1;
    keep_mask = ~((1u << (23 - M)) - 1);
    min_normal_bits = static_cast<uint32_t>(127 - f.bias + 1) << 23;
    magic_bits = static_cast<uint32_t>((127 - f.bias) + (23 - M) + 1) << 23;
    max_bits = bits_of(static_cast<float>(f.max_finite));
    // a NaN input: the format's NaN (decoded: the quiet NaN), or its largest magnitude
    nan_bits = f.has_nan ? 0x7fc00000u : max_bits;
    has_negative_zero = f.has_negative_zero;
  }
};
inline float round_lane(const RoundParams& p, uint32_t u) {
  const uint32_t a = u & 0x7fffffffu, sign = u & 0x80000000u;
  // normal: the mantissa rounded to M bits in place (ties to even; a carry moves the exponent);
  // subnormal: adding the magic number makes the FPU round to a multiple of the smallest subnormal
  const uint32_t r_normal = (a + p.round_add + ((a >> p.shift) & 1u)) & p.keep_mask;
  const uint32_t r_sub = bits_of((float_of(a) + float_of(p.magic_bits)) - float_of(p.magic_bits));
  uint32_t r = a >= p.min_normal_bits ? r_normal : r_sub;
  r = r > p.max_bits ? p.max_bits : r;  // saturate (inf included)
  r = (r == 0 && !p.has_negative_zero) ? 0u : (r | sign);
  const uint32_t nan_r = p.nan_bits == 0x7fc00000u ? p.nan_bits : (p.nan_bits | sign);
  return float_of(a > 0x7f800000u ? nan_r : r);
}
void round_scaled_bf16_range(const RoundParams p, const float* __restrict x, float s, const float* __restrict each,
                             float mult, const float* __restrict mults, uint16_t* __restrict out, int64_t n) {
  if (each && mults) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i)
      out[i] = static_cast<uint16_t>(bits_of(round_lane(p, bits_of(x[i] * each[i])) * mults[i]) >> 16);
  } else if (each) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i)
      out[i] = static_cast<uint16_t>(bits_of(round_lane(p, bits_of(x[i] * each[i])) * mult) >> 16);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i)
      out[i] = static_cast<uint16_t>(bits_of(round_lane(p, bits_of(x[i] * s)) * mult) >> 16);
  }
}
void round_blocks_f32(const RoundParams p, const float* __restrict x, int64_t block, int64_t blocks,
                      const float* __restrict scales, const float* __restrict mults, float* __restrict out) {
  for (int64_t b = 0; b < blocks; ++b) {
    const float s = scales[b], m = mults[b];
    const float* xb = x + b * block;
    float* ob = out + b * block;
#pragma omp simd
    for (int64_t i = 0; i < block; ++i) ob[i] = round_lane(p, bits_of(xb[i] * s)) * m;
  }
}
}  // namespace

namespace {
// encode_scaled_range with the parameters known at compile time: the selects a format does not
// need (NaN codes, overflow to NaN, negative zero) fold away and the shifts become immediates
template <const MinifloatSpec& F, bool Sat>
void encode_scaled_fixed(const float* x, float s, const float* each, uint8_t* codes, int64_t n) {
  static constexpr EncodeParams p(F, Sat);
  encode_scaled_range(p, x, s, each, codes, n);
}
constexpr bool same_spec(const MinifloatSpec& a, const MinifloatSpec& b) {
  return a.exp_bits == b.exp_bits && a.mant_bits == b.mant_bits && a.bias == b.bias && a.has_inf == b.has_inf &&
         a.has_nan == b.has_nan && a.has_negative_zero == b.has_negative_zero && a.nan_code == b.nan_code &&
         a.max_finite == b.max_finite && a.overflow == b.overflow;
}
template <const MinifloatSpec& F>
bool pick_fixed(const MinifloatSpec& f, bool saturate, MinifloatEncodeScaledFn& fn) {
  if (!same_spec(f, F)) return false;
  fn = saturate ? &encode_scaled_fixed<F, true> : &encode_scaled_fixed<F, false>;
  return true;
}
}  // namespace

MinifloatEncodeScaledFn minifloat_encoder_scaled(const MinifloatSpec& f, bool saturate) {
  MinifloatEncodeScaledFn fn = nullptr;
  if (pick_fixed<kFloat8E4M3FN>(f, saturate, fn) || pick_fixed<kFloat8E5M2>(f, saturate, fn) ||
      pick_fixed<kFloat6E2M3FN>(f, saturate, fn) || pick_fixed<kFloat6E3M2FN>(f, saturate, fn) ||
      pick_fixed<kFloat4E2M1FN>(f, saturate, fn))
    return fn;
  return nullptr;
}

void minifloat_encode_scaled(const MinifloatSpec& f, const float* x, float scale, const float* scales, uint8_t* codes,
                             int64_t n, bool saturate) {
  if (MinifloatEncodeScaledFn fn = minifloat_encoder_scaled(f, saturate)) return fn(x, scale, scales, codes, n);
  encode_scaled_range(EncodeParams(f, saturate), x, scale, scales, codes, n);
}

void minifloat_round_scaled_bf16(const MinifloatSpec& f, const float* x, float scale, const float* scales, float mult,
                                 const float* mults, uint16_t* out, int64_t n) {
  LOWBIT_CHECK(scales != nullptr || mults == nullptr,
               "minifloat_round_scaled_bf16: per-element multipliers need per-element scales");
  round_scaled_bf16_range(RoundParams(f), x, scale, scales, mult, mults, out, n);
}

void minifloat_round_blocks_f32(const MinifloatSpec& f, const float* x, int64_t block, int64_t blocks,
                                const float* scales, const float* mults, float* out) {
  round_blocks_f32(RoundParams(f), x, block, blocks, scales, mults, out);
}

void minifloat_encode_n(const MinifloatSpec& f, const float* x, uint8_t* codes, int64_t n, bool saturate) {
  const EncodeParams p(f, saturate);
  detail::parallel_for(n, kParallelGrain,
                       [&](int64_t lo, int64_t hi) { encode_range(p, x + lo, codes + lo, hi - lo); });
}

void minifloat_decode_n(const MinifloatSpec& f, const uint8_t* codes, float* out, int64_t n) {
  float table[256];
  for (uint32_t c = 0; c < 256; ++c) table[c] = minifloat_decode(f, c);
  detail::parallel_for(n, kParallelGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[i] = table[codes[i]];
  });
}

uint32_t e8m0_encode(float x) {
  const uint32_t u = bits_of(x);
  if (u >> 31 && (u & 0x7fffffffu) != 0) return 0xFF;  // negative
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return 0xFF;  // inf, NaN
  if (a == 0) return 0;
  int e;
  const float m = std::frexp(float_of(a), &e);  // a = m * 2^e, m in [0.5, 1)
  // the nearest power of two by the mantissa: 1.m >= 1.5 rounds up (PyTorch's cast)
  const int p = m >= 0.75f ? e : e - 1;
  const int code = p + 127;
  if (code <= 0) return 0;
  if (code > 254) return 0xFF;
  return static_cast<uint32_t>(code);
}

float e8m0_decode(uint32_t code) {
  code &= 0xFF;
  return code == 0xFF ? std::numeric_limits<float>::quiet_NaN() : std::ldexp(1.0f, static_cast<int>(code) - 127);
}

}  // namespace lowbit
