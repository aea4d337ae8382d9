// Division by a value shared by many lanes, without a divider: q = x * y with y = 1/c (one true
// division per constant), then one FMA correction (Markstein): r = x - q*c is exact, q' = q + r*y.
// q' equals the true quotient RN(x / c) when y is the correctly rounded reciprocal and x and the
// quotient are well inside the normal range (Markstein's theorem); lanes are claimed only for
// 2^-96 <= |x|, |q'| <= 2^100 (div_by_constant_exact_lanes). Checked over all 2^32 x for
// c = 0x3F7FFFFF (significand 1.1...1, the least accurate reciprocal) and c = 0.9990234375 when
// written, and by tests/core/test_exact_div.cpp on a sweep of every bit pattern for 15 divisors.
// Outside that range (zeros, whose sign the correction loses, tiny values, overflow) the residual
// is not representable: callers divide for real (div_exact) or show that a few ulps cannot matter
// (the block quantizers: such quotients lie far below any state format's first threshold).
//
// vdivps costs 5-10x an FMA here, and the low-bit optimizers' state quantizers divide every
// element by its block's scale -- bit-exactly as torchao does.
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
