// Stochastic rounding to bfloat16 (core/stochastic.h).
#include "lowbit/core/stochastic.h"

#include <bit>

#include "lowbit/autograd/kernel.h"

namespace lowbit::core {

void stochastic_round_bf16(const float* x, uint16_t* out, int64_t n, uint64_t seed, uint64_t base) {
  // chunks of whole counters (multiples of 4 elements) so every element's draw is fixed by its index
  const int64_t counters = (n + 3) / 4;
  lowbit::detail::parallel_for(counters, 4096, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const uint64_t r = Generator::bits(seed, base + static_cast<uint64_t>(c));
      for (int64_t k = 0; k < 4 && 4 * c + k < n; ++k) {
        const int64_t i = 4 * c + k;
        const uint32_t u = std::bit_cast<uint32_t>(x[i]);
        const uint32_t draw = static_cast<uint32_t>(r >> (16 * k)) & 0xFFFFu;
        uint32_t t = u & 0xFFFF0000u;
        if ((u & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: a quiet NaN of its sign
          out[i] = static_cast<uint16_t>((u >> 16) | 0x0040u);
          continue;
        }
        if (draw < (u & 0xFFFFu)) t += 0x10000u;  // away from zero with probability low16 / 65536
        out[i] = static_cast<uint16_t>(t >> 16);
      }
    }
  });
}

void stochastic_round_bf16(const float* x, uint16_t* out, int64_t n, Generator& gen) {
  const uint64_t base = gen.reserve(static_cast<uint64_t>((n + 3) / 4));
  stochastic_round_bf16(x, out, n, gen.seed(), base);
}

}  // namespace lowbit::core
