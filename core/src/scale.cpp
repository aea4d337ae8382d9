#include "lowbit/core/scale.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace lowbit::core {

namespace {
uint32_t bits_of(float x) { return std::bit_cast<uint32_t>(x); }
float float_of(uint32_t u) { return std::bit_cast<float>(u); }
}  // namespace

const char* to_string(E8M0Rounding mode) {
  switch (mode) {
    case E8M0Rounding::Floor: return "FLOOR";
    case E8M0Rounding::Ceil: return "CEIL";
    case E8M0Rounding::Even: return "EVEN";
    case E8M0Rounding::RCeil: return "RCEIL";
  }
  return "?";
}

int max_pow2(const Format& element) { return static_cast<int>(std::floor(std::log2(element.max_finite))); }

namespace {
// one lane of e8m0_scales (and e8m0_scale): the rules of core/scale.h on an amax's bits, as selects
inline uint32_t e8m0_byte_lane(uint32_t u, E8M0Rounding mode, float inv_max, uint32_t even_add, int emax) {
  uint32_t b;
  if (mode == E8M0Rounding::RCeil) {
    const uint32_t d = bits_of(float_of(u) * inv_max), exp = (d >> 23) & 0xFF, mant = d & 0x7FFFFF;
    const uint32_t up = exp == 0 ? (mant > 0x400000 ? 1u : 0u) : (mant != 0 ? 1u : 0u);
    b = (d & 0x7FFFFFFFu) >= 0x7F800000u ? 255u : exp + up;
  } else {
    const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
    if (mode == E8M0Rounding::Even) u = nan ? u : (u + even_add) & 0xFF800000u;
    const int e = static_cast<int>((u >> 23) & 0xFF) - 127;
    const int ceil = mode == E8M0Rounding::Ceil && (u & 0x7FFFFF) != 0 ? 1 : 0;
    int s = e + ceil - emax;
    s = s < -127 ? -127 : (s > 128 ? 128 : s);
    b = (u & 0x7FFFFFFFu) >= 0x7F800000u ? 255u : static_cast<uint32_t>(s + 127);
  }
  return b > 255u ? 255u : b;
}
template <E8M0Rounding M>
void e8m0_scales_as(const uint32_t* __restrict amax_bits, int64_t n, float inv_max, uint32_t even_add, int emax,
                    uint8_t* __restrict bytes, float* __restrict multipliers) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = e8m0_byte_lane(amax_bits[i], M, inv_max, even_add, emax);
    bytes[i] = static_cast<uint8_t>(b);
    // e8m0_value(254 - b): normal for b <= 253, the subnormal 2^-127 for 254, NaN for 255
    multipliers[i] = float_of(b == 255u ? 0x7FC00000u : (b == 254u ? 0x00400000u : (254u - b) << 23));
  }
}
}  // namespace

// the scalar rule is the batch rule on one block: one statement of it
E8M0Scale e8m0_scale(float amax, const Format& element, E8M0Rounding mode) {
  uint8_t byte;
  float multiplier;
  const uint32_t u = bits_of(amax);
  e8m0_scales(&u, 1, element, mode, &byte, &multiplier);
  return {byte, multiplier};
}

void e8m0_scales(const uint32_t* amax_bits, int64_t n, const Format& element, E8M0Rounding mode, uint8_t* bytes,
                 float* multipliers) {
  const float inv_max = 1.0f / static_cast<float>(element.max_finite);
  const uint32_t even_add = 1u << (22 - element.mant_bits);
  const int emax = max_pow2(element);
  switch (mode) {
    case E8M0Rounding::Floor:
      return e8m0_scales_as<E8M0Rounding::Floor>(amax_bits, n, inv_max, even_add, emax, bytes, multipliers);
    case E8M0Rounding::Ceil:
      return e8m0_scales_as<E8M0Rounding::Ceil>(amax_bits, n, inv_max, even_add, emax, bytes, multipliers);
    case E8M0Rounding::Even:
      return e8m0_scales_as<E8M0Rounding::Even>(amax_bits, n, inv_max, even_add, emax, bytes, multipliers);
    case E8M0Rounding::RCeil:
      return e8m0_scales_as<E8M0Rounding::RCeil>(amax_bits, n, inv_max, even_add, emax, bytes, multipliers);
  }
}

float float8_amax_to_scale(double amax, const Format& fp8) {
  return static_cast<float>(fp8.max_finite / std::max(amax, 1e-12));
}

float round_scale_to_power_of_2(float scale) { return std::exp2(std::floor(std::log2(scale))); }

float te_amax_to_scale(float amax, const Format& fp8, bool pow2, float epsilon) {
  if (amax < epsilon) amax = epsilon;  // a NaN amax is not below anything
  if (amax == 0.0f || std::isinf(amax) || std::isnan(amax)) return 1.0f;
  float s = static_cast<float>(fp8.max_finite) / amax;
  if (std::isinf(s)) s = std::numeric_limits<float>::max();
  return pow2 ? float_of(bits_of(s) & 0xFF800000u) : s;
}

float te_nvfp4_encode_scale(float amax) {
  if (amax == 0.0f) return 1.0f;
  float c = 2688.0f / amax;  // 448 * 6, float32 division rounded to nearest
  if (std::isnan(c)) return c;
  c = std::min(c, std::numeric_limits<float>::max());
  return c == 0.0f ? 1.0f : c;
}

TENVFP4BlockScale te_nvfp4_block_scale(float block_amax, float enc, float dec) {
  static const Format& e4m3 = format(FormatId::Float8E4M3FN);
  float pv = block_amax * (enc * (1.0f / 6.0f));  // one rounding of amax * (enc / 6), as TE
  if (!std::isnan(pv)) pv = std::min(pv, 448.0f);
  const float s8 = decode(e4m3, encode(e4m3, pv));
  float mult = 1.0f / (s8 * dec);
  if (!std::isnan(mult)) mult = std::min(mult, std::numeric_limits<float>::max());
  return {s8, mult};
}

float nvfp4_per_tensor_scale(float amax) { return amax / (448.0f * 6.0f); }

NVFP4BlockScale nvfp4_block_scale(float block_amax, float pts) {
  const Format& e4m3 = format(FormatId::Float8E4M3FN);
  const bool two_level = pts > 0.0f || std::isnan(pts);
  float s = block_amax / 6.0f;
  if (two_level) s = s / pts;
  // clamp(min = 2^-6, max = 448) with NaN passing through, as torch.clamp
  if (!std::isnan(s)) s = std::min(std::max(s, std::ldexp(1.0f, -6)), 448.0f);
  const uint8_t byte = static_cast<uint8_t>(encode(e4m3, s));
  const float s8 = decode(e4m3, byte);
  if (!two_level) return {byte, 1.0f / s8, s8};
  return {byte, (1.0f / pts) / s8, pts * s8};
}

void nvfp4_block_scales(const float* block_amax, int64_t n, float pts, uint8_t* bytes, float* multipliers) {
  const Format& e4m3 = format(FormatId::Float8E4M3FN);
  const bool two_level = pts > 0.0f || std::isnan(pts);
  constexpr int64_t kRun = 256;
  float s[kRun];
  static const std::array<float, 256> table = [&e4m3] {  // e4m3's values, made once
    std::array<float, 256> t{};
    for (uint32_t c = 0; c < 256; ++c) t[c] = decode(e4m3, c);
    return t;
  }();
  const float floor = std::ldexp(1.0f, -6), inv_pts = 1.0f / pts;
  for (int64_t i0 = 0; i0 < n; i0 += kRun) {
    const int64_t m = std::min(kRun, n - i0);
    for (int64_t i = 0; i < m; ++i) {  // nvfp4_block_scale's arithmetic, element by element
      float v = block_amax[i0 + i] / 6.0f;
      if (two_level) v = v / pts;
      s[i] = v != v ? v : std::min(std::max(v, floor), 448.0f);
    }
    minifloat_encode_scaled(*e4m3.minifloat, s, 1.0f, nullptr, bytes + i0, m, true);
    for (int64_t i = 0; i < m; ++i) {
      const float s8 = table[bytes[i0 + i]];
      multipliers[i0 + i] = two_level ? inv_pts / s8 : 1.0f / s8;
    }
  }
}

}  // namespace lowbit::core
