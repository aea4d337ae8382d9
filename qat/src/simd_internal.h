// What the integer kernels share (not installed): whether AVX-512 VNNI is compiled in, and an
// in-place vpdpbusd.
#pragma once
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define LOWBIT_QAT_SIMD 1
#else
#define LOWBIT_QAT_SIMD 0
#endif

namespace lowbit::qat::kernels {
#if LOWBIT_QAT_SIMD
// acc += u8 a . s8 b per 32-bit lane, in place. GCC 12 models _mm512_dpbusd_epi32 with a separate
// destination and adds a register copy after every vpdpbusd in a micro-kernel's loop (plus
// spills); the inline-asm form keeps the accumulator in its register.
inline void dpbusd(__m512i& acc, __m512i a, __m512i b) { asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b)); }
#endif
}  // namespace lowbit::qat::kernels
