// core/exact_div.h: division by a shared divisor through its reciprocal and one FMA correction,
// against the true division.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "lowbit/core/exact_div.h"

#if defined(__AVX512F__)
using namespace lowbit::core;

namespace {
// every x whose bits are a multiple of `stride` (plus the 16 lanes' offsets), divided by c: counts
// lanes the helper claims exact but that differ from x / c, and lanes div_exact gets wrong
struct Miss {
  int64_t proven_wrong = 0, exact_wrong = 0, proven = 0, total = 0;
};
void check_divisor(float c, uint64_t stride, uint64_t offset, Miss& m) {
  const __m512 vc = _mm512_set1_ps(c), vy = _mm512_set1_ps(1.0f / c);
  alignas(64) float x[16], q[16], e[16];
  for (uint64_t k = offset; k < (uint64_t{1} << 32); k += 16 * stride) {
    for (int l = 0; l < 16; ++l) x[l] = std::bit_cast<float>(static_cast<uint32_t>(k + l * stride));
    const __m512 vx = _mm512_load_ps(x);
    const __m512 vq = div_by_constant(vx, vc, vy);
    const __mmask16 ok = div_by_constant_exact_lanes(vx, vq);
    _mm512_store_ps(q, vq);
    _mm512_store_ps(e, div_exact(vx, vc, vy));
    for (int l = 0; l < 16; ++l) {
      const float t = x[l] / c;
      const bool same = std::bit_cast<uint32_t>(t) == std::bit_cast<uint32_t>(q[l]);
      if ((ok >> l) & 1) {
        ++m.proven;
        m.proven_wrong += !same;
      }
      m.exact_wrong +=
          std::bit_cast<uint32_t>(t) != std::bit_cast<uint32_t>(e[l]) && !(std::isnan(t) && std::isnan(e[l]));
      ++m.total;
    }
  }
}
}  // namespace

// The hardest divisors (significand 1.0 and 1.11...1, where the reciprocal is least accurate),
// the bias corrections of Adam's first steps, and random ones, over a sweep of every float bit
// pattern (stride 509; an exhaustive run over all 2^32 x for the first two divisors passed when
// this was written, 18 s)
TEST(ExactDiv, ReciprocalWithCorrectionEqualsTheDivisionWhereProven) {
  std::vector<float> divisors = {1.0f,
                                 std::bit_cast<float>(0x3FFFFFFFu),
                                 std::bit_cast<float>(0x3F7FFFFFu),
                                 0.1f,
                                 1.0f - 0.999f,
                                 std::sqrt(1.0f - 0.999f),
                                 1e-12f,
                                 3e5f,
                                 448.0f / 7.0f};
  std::mt19937 rng(7);
  for (int i = 0; i < 6; ++i)
    divisors.push_back(
        std::bit_cast<float>(static_cast<uint32_t>((rng() & 0x007FFFFFu) | ((90u + rng() % 80u) << 23))));
  for (const float c : divisors) {
    Miss m;
    check_divisor(c, 509, rng() % 509, m);
    EXPECT_EQ(m.proven_wrong, 0) << "divisor " << c << ": " << m.proven_wrong << " of " << m.proven << " proven lanes";
    EXPECT_EQ(m.exact_wrong, 0) << "divisor " << c << " (div_exact)";
    // the proof covers the bulk of the range: |x| in [2^-96, 2^100] with the same for x / c
    EXPECT_GT(m.proven, m.total / 2) << c;
  }
}

// The sides of the proven range: tiny and huge values, zeros (whose sign the correction loses)
// and non-finite inputs are not claimed, and div_exact divides them for real.
TEST(ExactDiv, UnprovenLanesAreDividedForReal) {
  const float c = 0.37f;
  alignas(64) float x[16] = {0.0f, -0.0f, 1e-30f, -1e-30f, std::ldexp(1.0f, -97), 1e35f, INFINITY, -INFINITY,
                             NAN,  1.0f,  -2.5f,  1e-20f,  std::ldexp(1.0f, -95), 1e29f, 3.0f,     -7.0f};
  const __m512 vx = _mm512_load_ps(x), vc = _mm512_set1_ps(c), vy = _mm512_set1_ps(1.0f / c);
  const __mmask16 ok = div_by_constant_exact_lanes(vx, div_by_constant(vx, vc, vy));
  EXPECT_EQ(ok & 0x01FF, 0) << std::hex << ok;  // the first nine are outside
  EXPECT_EQ(ok >> 9, 0x7F) << std::hex << ok;   // the rest inside
  alignas(64) float q[16];
  _mm512_store_ps(q, div_exact(vx, vc, vy));
  for (int l = 0; l < 16; ++l) {
    const float t = x[l] / c;
    if (std::isnan(t))
      EXPECT_TRUE(std::isnan(q[l]));
    else
      EXPECT_EQ(std::bit_cast<uint32_t>(q[l]), std::bit_cast<uint32_t>(t)) << "lane " << l << " x = " << x[l];
  }
}
#endif
