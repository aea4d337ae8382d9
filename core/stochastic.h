// Stochastic rounding of float32 to bfloat16 (torchao's _fp32_to_bf16_sr; spec §5.5, §9 item 11):
// the value is truncated toward zero and moved one bfloat16 step away from zero with probability
// low16 / 65536, where low16 are the 16 bits truncation drops -- unbiased in expectation. The
// random bits come from a counter-based generator (Generator::bits(seed, counter)), so the result
// depends on the seed and the element index only, never on the thread count.
#pragma once
#include <cstdint>

#include "lowbit/autograd/generator.h"

namespace lowbit::core {

/// out[i] = the bfloat16 bits of x[i] rounded stochastically. Counters: n / 4 rounded up are
/// reserved from gen (four 16-bit draws per 64-bit counter). Like torchao, a value within one
/// bfloat16 step of the largest finite one may round to infinity. Unlike torchao (whose bit
/// arithmetic can turn a NaN whose payload sits in the low 16 bits into an infinity), a NaN stays a
/// quiet NaN of its sign.
void stochastic_round_bf16(const float* x, uint16_t* out, int64_t n, Generator& gen);
/// The same for one counter base (for callers that reserve their own): element i uses the 16 bits
/// (i % 4) of Generator::bits(seed, base + i / 4).
void stochastic_round_bf16(const float* x, uint16_t* out, int64_t n, uint64_t seed, uint64_t base);

}  // namespace lowbit::core
