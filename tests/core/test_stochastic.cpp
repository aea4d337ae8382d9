// Stochastic rounding to bfloat16 (spec §5.5, §9 item 11): the bit rule, statistics (P(away from
// zero) = low16 / 65536, unbiased), determinism across thread counts, special values.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <vector>

#include "lowbit/autograd/parallel.h"
#include "lowbit/core/stochastic.h"

using namespace lowbit;

namespace {
float bf16_value(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }
}  // namespace

// For values whose dropped 16 bits are L, the fraction rounded away from zero over 400k draws is
// L / 65536 within 5 standard deviations, for both signs; the mean of the rounded values equals
// the value within 5 standard deviations (unbiased).
TEST(StochasticRounding, ProbabilityIsTheDroppedFractionAndTheMeanIsUnbiased) {
  const int64_t n = 400000;
  for (uint32_t low : {1u, 4096u, 12345u, 32768u, 50000u, 65535u}) {
    for (uint32_t sign : {0u, 0x80000000u}) {
      const uint32_t hi = 0x3FA50000u;  // 1.2890625 in bfloat16
      const float x = std::bit_cast<float>(sign | hi | low);
      std::vector<float> in(static_cast<size_t>(n), x);
      std::vector<uint16_t> out(in.size());
      Generator gen(1234 + low);
      core::stochastic_round_bf16(in.data(), out.data(), n, gen);
      int64_t away = 0;
      double sum = 0;
      for (uint16_t b : out) {
        const uint32_t mag = (static_cast<uint32_t>(b) << 16) & 0x7FFFFFFFu;
        ASSERT_TRUE(mag == hi || mag == hi + 0x10000u) << std::hex << b;  // one of the two neighbours
        ASSERT_EQ((static_cast<uint32_t>(b) << 16) & 0x80000000u, sign);
        away += mag == hi + 0x10000u;
        sum += bf16_value(b);
      }
      const double p = low / 65536.0, sd = std::sqrt(p * (1 - p) / n);
      EXPECT_NEAR(static_cast<double>(away) / n, p, 5 * sd + 1e-9) << "low16 " << low;
      const double step = std::ldexp(1.0, -7);  // the bf16 step at 1.28: 2^-7
      EXPECT_NEAR(sum / n, x, 5 * sd * step + 1e-12) << "low16 " << low;
    }
  }
}

// The result depends on the seed and the element index only: 1 and 2 threads give the same bits;
// another seed other bits; exact bfloat16 values, zeros and infinities are kept; NaN stays NaN.
TEST(StochasticRounding, DeterministicAcrossThreadCountsAndSpecialValues) {
  std::vector<float> x(100003);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i)) * 1000.0f;
  std::vector<uint16_t> a(x.size()), b(x.size()), c(x.size());
  const int threads = get_num_threads();
  set_num_threads(1);
  core::stochastic_round_bf16(x.data(), a.data(), static_cast<int64_t>(x.size()), 7, 100);
  set_num_threads(2);
  core::stochastic_round_bf16(x.data(), b.data(), static_cast<int64_t>(x.size()), 7, 100);
  core::stochastic_round_bf16(x.data(), c.data(), static_cast<int64_t>(x.size()), 8, 100);
  set_num_threads(threads);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // element i uses the 16 bits (i % 4) of Generator::bits(seed, base + i / 4)
  for (size_t i : {0u, 1u, 5u, 99999u, 100002u}) {
    const uint32_t u = std::bit_cast<uint32_t>(x[i]);
    const uint32_t draw = static_cast<uint32_t>(Generator::bits(7, 100 + i / 4) >> (16 * (i % 4))) & 0xFFFFu;
    const uint32_t want = (u & 0xFFFF0000u) + (draw < (u & 0xFFFFu) ? 0x10000u : 0u);
    EXPECT_EQ(a[i], static_cast<uint16_t>(want >> 16)) << i;
  }
  const std::vector<float> special = {0.0f,
                                      -0.0f,
                                      1.5f,
                                      -2.0f,
                                      INFINITY,
                                      -INFINITY,
                                      NAN,
                                      std::bit_cast<float>(0x7F800001u),
                                      std::bit_cast<float>(0xFF800123u)};
  std::vector<uint16_t> s(special.size());
  Generator gen(9);
  core::stochastic_round_bf16(special.data(), s.data(), static_cast<int64_t>(special.size()), gen);
  EXPECT_EQ(gen.offset(), 3u);  // 9 elements: 3 counters reserved
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(s[i], static_cast<uint16_t>(std::bit_cast<uint32_t>(special[i]) >> 16)) << i;
  for (size_t i = 6; i < special.size(); ++i) EXPECT_TRUE(std::isnan(bf16_value(s[i]))) << i;  // torchao may give inf
  EXPECT_TRUE(std::signbit(bf16_value(s[8])));
}

// torchao's saturation: a value within one bfloat16 step of the largest finite one rounds to the
// largest finite value or, with probability low16 / 65536, to infinity (the bit arithmetic carries
// into the exponent); nothing else
TEST(StochasticRounding, LargestFiniteRoundsToItselfOrInfinity) {
  const float x = std::bit_cast<float>(0x7F7F8000u);  // bf16 max + half a step: P(inf) = 1/2
  std::vector<float> xs(200000, x);
  std::vector<uint16_t> out(xs.size());
  core::stochastic_round_bf16(xs.data(), out.data(), static_cast<int64_t>(xs.size()), 3, 0);
  int64_t inf = 0, other = 0;
  for (uint16_t o : out) {
    inf += o == 0x7F80u;
    other += o != 0x7F80u && o != 0x7F7Fu;
  }
  EXPECT_EQ(other, 0);
  const double p = static_cast<double>(inf) / static_cast<double>(xs.size()), sd = std::sqrt(0.25 / xs.size());
  EXPECT_NEAR(p, 0.5, 5 * sd);
}
