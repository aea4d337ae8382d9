// Division by a value shared by many lanes, without a divider: q = x * y with y = 1/c (one true
// division per constant), then one FMA correction (Markstein): r = x - q*c is exact, q' = q + r*y.
// q' equals the true quotient RN(x / c) whenever |x| >= 2^-96 and 2^-100 <= |x / c| <= 2^100
// (checked by tests/core/test_exact_div.cpp: exhaustively over every float x for the hardest
// divisors -- significands 1.0 and 1.11...1 -- and on random pairs); outside that range (zeros,
// tiny values, overflow) the residual is not representable and callers divide for real
// (div_exact_or_divide) or show that a few ulps cannot matter (the code-book encoder: such
// quotients lie far below its first threshold).
//
// vdivps costs 5-10x an FMA here, and the low-bit optimizers divide four times per element by
// such constants (two bias corrections, two block scales) -- bit-exactly as torchao does.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

namespace lowbit::core {

/// q' above for 16 lanes: c the divisor, y = 1.0f / c.
inline __m512 div_by_constant(__m512 x, __m512 c, __m512 y) {
  const __m512 q = _mm512_mul_ps(x, y);
  return _mm512_fmadd_ps(_mm512_fnmadd_ps(q, c, x), y, q);
}

/// Lanes where div_by_constant is proven exact: 2^-96 <= |x| <= 2^100 and the same for its
/// result (|x| bounds in bits; NaN and inf fall outside).
inline __mmask16 div_by_constant_exact_lanes(__m512 x, __m512 q) {
  const __m512i lo = _mm512_set1_epi32(0x0F800000), span = _mm512_set1_epi32(0x71800000 - 0x0F800000);
  const __m512i mag = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i xa = _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(x), mag), lo);
  const __m512i qa = _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(q), mag), lo);
  return _mm512_cmple_epu32_mask(xa, span) & _mm512_cmple_epu32_mask(qa, span);
}

/// RN(x / c) for every lane: div_by_constant, and a true division for the lanes it cannot prove.
inline __m512 div_exact(__m512 x, __m512 c, __m512 y) {
  const __m512 q = div_by_constant(x, c, y);
  const __mmask16 ok = div_by_constant_exact_lanes(x, q);
  return ok == 0xFFFF ? q : _mm512_mask_div_ps(q, static_cast<__mmask16>(~ok), x, c);
}

}  // namespace lowbit::core
#endif
