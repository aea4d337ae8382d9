// The MX integer GEMM (int_kernels.h: gemm_mx_int8): MXFP4 / MXFP6-e2m3 activations and weights
// on vpdpbusd, one exact int32 sum per block of K, scaled by the two blocks' power-of-two scales.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "int_kernels.h"
#include "lowbit/autograd/kernel.h"
#include "simd_internal.h"

namespace lowbit::qat::kernels {

bool mx_int8_supported(int64_t n, int64_t k, int64_t block, bool nibbles) {
  return n > 0 && n % 16 == 0 && block > 0 && block % (nibbles ? 8 : 4) == 0 && k > 0 && k % block == 0;
}

int8_t MXInt8Weight::value_at(int64_t row, int64_t col) const {
  const int64_t t = row / 16, j = row % 16;
  if (nibbles) {
    const int64_t p = col / 8, i = col % 8;
    const uint8_t byte = packed.data_ptr<uint8_t>()[(t * (k / 8) + p) * 64 + j * 4 + i % 4];
    return lut[i < 4 ? byte & 0x0f : byte >> 4];
  }
  return packed.data_ptr<int8_t>()[((t * (k / 4) + col / 4) * 16 + j) * 4 + col % 4];
}

MXInt8Weight pack_mx_int8(const uint8_t* codes, const int8_t* lut, int lut_size, const float* scales, int64_t n,
                          int64_t k, int64_t block) {
  const bool nib = lut_size == 16;
  LOWBIT_CHECK(lut_size >= 1 && lut_size <= 256, "pack_mx_int8: lut_size must be in [1, 256], got {}", lut_size);
  LOWBIT_CHECK(
      mx_int8_supported(n, k, block, nib),
      "pack_mx_int8: needs out_features % 16 == 0, block % {} == 0 and in_features % block == 0, got N={} K={} "
      "block={}",
      nib ? 8 : 4, n, k, block);
  MXInt8Weight w;
  w.n = n;
  w.k = k;
  w.block = block;
  w.nibbles = nib;
  if (nib) std::memcpy(w.lut, lut, 16);
  const int64_t tiles = n / 16, g = k / block;
  w.packed = nib ? empty({tiles, k / 8, 64}, kUInt8) : empty({tiles, k / 4, 16, 4}, kInt8);
  w.scales = empty({tiles, g, 16}, kFloat32);
  w.comp = empty({tiles, g, 16}, kInt32);
  uint8_t* pk = static_cast<uint8_t*>(w.packed.raw_data());
  float* sp = w.scales.data_ptr<float>();
  int32_t* cp = w.comp.data_ptr<int32_t>();
  int64_t bad = 0;
  for (int64_t i = 0; i < n * k; ++i) bad += codes[i] >= lut_size;
  LOWBIT_CHECK(bad == 0, "pack_mx_int8: {} codes are outside the value table ({} entries)", bad, lut_size);
  detail::parallel_for(tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t j = 0; j < 16; ++j) {
        const uint8_t* row = codes + (t * 16 + j) * k;
        if (nib) {
          for (int64_t p = 0; p < k / 8; ++p)
            for (int64_t i = 0; i < 4; ++i)
              pk[(t * (k / 8) + p) * 64 + j * 4 + i] = static_cast<uint8_t>(row[8 * p + i] | (row[8 * p + 4 + i] << 4));
        } else {
          for (int64_t q = 0; q < k / 4; ++q)
            for (int64_t i = 0; i < 4; ++i) pk[((t * (k / 4) + q) * 16 + j) * 4 + i] = lut[row[4 * q + i]];
        }
        for (int64_t gi = 0; gi < g; ++gi) {
          int32_t sum = 0;
          for (int64_t c = gi * block; c < (gi + 1) * block; ++c) sum += lut[row[c]];
          cp[(t * g + gi) * 16 + j] = -128 * sum;
          sp[(t * g + gi) * 16 + j] = scales[(t * 16 + j) * g + gi];
        }
      }
  });
  return w;
}

void lookup_u8(const uint8_t* codes, int64_t n, const uint8_t lut[64], uint8_t* out) {
  int64_t i = 0;
#if LOWBIT_QAT_SIMD && defined(__AVX512VBMI__)
  const __m512i table = _mm512_loadu_si512(lut);
  for (; i + 64 <= n; i += 64)
    _mm512_storeu_si512(out + i, _mm512_permutexvar_epi8(_mm512_loadu_si512(codes + i), table));
#endif
  for (; i < n; ++i) out[i] = lut[codes[i] & 63];
}

namespace {
void gemm_mx_reference(const uint8_t* a, int64_t m, const float* as, const MXInt8Weight& w, const float* bias,
                       float* out) {
  const int64_t n = w.n, k = w.k, g = k / w.block;
  const float* ws = w.scales.data_ptr<float>();
  const int32_t* wc = w.comp.data_ptr<int32_t>();
  detail::parallel_for(n, 16, [&](int64_t n0, int64_t n1) {
    std::vector<int8_t> col(static_cast<size_t>(k));
    for (int64_t j = n0; j < n1; ++j) {
      for (int64_t c = 0; c < k; ++c) col[static_cast<size_t>(c)] = w.value_at(j, c);
      const int64_t t = j / 16, l = j % 16;
      for (int64_t i = 0; i < m; ++i) {
        float f = 0.0f;
        for (int64_t gi = 0; gi < g; ++gi) {
          int32_t d = wc[(t * g + gi) * 16 + l];
          for (int64_t c = gi * w.block; c < (gi + 1) * w.block; ++c)
            d += static_cast<int32_t>(a[i * k + c]) * col[static_cast<size_t>(c)];
          f = std::fma(static_cast<float>(d), ws[(t * g + gi) * 16 + l] * as[i * g + gi], f);
        }
        out[i * n + j] = bias ? f + bias[j] : f;
      }
    }
  });
}

#if LOWBIT_QAT_SIMD
// MR rows x NT tiles of 16 columns over all of K, every accumulator in registers (4 x 3: 12 int32
// + 12 float32 + 3 B vectors + the broadcast A). A block's int32 sums start at the weight's offset
// correction, take block/4 vpdpbusd steps, then one convert, one scale product and one FMA each.
// Operands in the layouts gemm_mx_simd packs them into, so that one pointer each reaches them
// (with the 4 A rows and 3 B tiles as separate pointers GCC ran out of registers and parked them
// in vector registers, 7% of the kernel's time in vmovq): ap -- the kMR rows' 4-byte groups of
// each K-step side by side; asp -- their block scales, [block][kMR]; wsp / wcp -- the panel's
// weight scales and offset corrections, [block][kNT][16].
// STEPS > 0: block / 4 as a constant (the loop unrolled); 0: read from `steps_rt`.
constexpr int kMR = 4, kNT = 3;
template <int MR, int NT, int STEPS>
void micro_mx(const uint8_t* ap, const float* asp, int64_t g, const int8_t* bp, int64_t tile_stride, const float* wsp,
              const int32_t* wcp, int64_t steps_rt, const float* bias, float* c, int64_t ldc) {
  const int64_t steps = STEPS > 0 ? STEPS : steps_rt;
  __m512 f[MR][NT];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 3
    for (int t = 0; t < NT; ++t) f[r][t] = _mm512_setzero_ps();
  for (int64_t gi = 0; gi < g; ++gi) {
    __m512i acc[MR][NT];
#pragma GCC unroll 3
    for (int t = 0; t < NT; ++t) {
      const __m512i c0 = _mm512_loadu_si512(wcp + (gi * kNT + t) * 16);
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) acc[r][t] = c0;
    }
    const int8_t* bg = bp + gi * steps * 64;
    const uint8_t* ag = ap + gi * steps * (4 * kMR);
#pragma GCC unroll 8
    for (int64_t q = 0; q < steps; ++q) {
      __m512i b[NT];
#pragma GCC unroll 3
      for (int t = 0; t < NT; ++t) b[t] = _mm512_load_si512(bg + t * tile_stride + q * 64);
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        int32_t a4;
        std::memcpy(&a4, ag + q * (4 * kMR) + r * 4, 4);
        const __m512i av = _mm512_set1_epi32(a4);
#pragma GCC unroll 3
        for (int t = 0; t < NT; ++t) dpbusd(acc[r][t], av, b[t]);
      }
    }
#pragma GCC unroll 3
    for (int t = 0; t < NT; ++t) {
      const __m512 s = _mm512_loadu_ps(wsp + (gi * kNT + t) * 16);
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r)
        f[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][t]), _mm512_mul_ps(s, _mm512_set1_ps(asp[gi * kMR + r])),
                                  f[r][t]);
    }
  }
#pragma GCC unroll 3
  for (int t = 0; t < NT; ++t) {
    const __m512 bv = bias ? _mm512_loadu_ps(bias + t * 16) : _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) _mm512_storeu_ps(c + r * ldc + t * 16, bias ? _mm512_add_ps(f[r][t], bv) : f[r][t]);
  }
}

// 1 or 2 rows (decode): no panel expansion. Each 64-byte chunk of nibble codes is decoded in
// registers into its two K-steps (int8 tiles: two consecutive steps), which go to two separate
// int32 accumulators per (row, tile) -- twice the independent vpdpbusd chains, which a single
// row needs to hide the instruction's latency -- summed exactly before the block is scaled. The
// codes stream from memory once, prefetched a few blocks ahead.
template <int MR, int NT, bool NIB>
void micro_mx_rows(const uint8_t* a, int64_t lda, const float* as, int64_t g, const uint8_t* wp, int64_t tile_stride,
                   const int8_t* lut, const float* ws, const int32_t* wc, int64_t wtile_stride, int64_t block,
                   const float* bias, float* c, int64_t ldc) {
  const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lut)));
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const int64_t pairs = block / 8;        // chunks of two K-steps per block
  const int64_t block_bytes = block * 8;  // one tile's codes of one block: 16 columns x block / 2 bytes (nibbles)
  const int64_t stride = NIB ? block_bytes : 2 * block_bytes;
  __m512 f[MR][NT];
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) f[r][t] = _mm512_setzero_ps();
  for (int64_t gi = 0; gi < g; ++gi) {
    __m512i acc0[MR][NT], acc1[MR][NT];
    for (int t = 0; t < NT; ++t) {
      const __m512i c0 = _mm512_loadu_si512(wc + t * wtile_stride + gi * 16);
      for (int r = 0; r < MR; ++r) {
        acc0[r][t] = c0;
        acc1[r][t] = _mm512_setzero_si512();
      }
    }
    const uint8_t* bg = wp + gi * stride;
    const uint8_t* ag = a + gi * block;
    for (int t = 0; t < NT; ++t)
      _mm_prefetch(reinterpret_cast<const char*>(bg + t * tile_stride + 8 * stride), _MM_HINT_T0);
    for (int64_t p = 0; p < pairs; ++p) {
      __m512i b0[NT], b1[NT];
      for (int t = 0; t < NT; ++t) {
        if (NIB) {
          const __m512i v = _mm512_load_si512(bg + t * tile_stride + p * 64);
          b0[t] = _mm512_shuffle_epi8(table, _mm512_and_si512(v, low4));
          b1[t] = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
        } else {
          b0[t] = _mm512_load_si512(bg + t * tile_stride + p * 128);
          b1[t] = _mm512_load_si512(bg + t * tile_stride + p * 128 + 64);
        }
      }
      for (int r = 0; r < MR; ++r) {
        int32_t a0, a1;
        std::memcpy(&a0, ag + r * lda + p * 8, 4);
        std::memcpy(&a1, ag + r * lda + p * 8 + 4, 4);
        const __m512i av0 = _mm512_set1_epi32(a0), av1 = _mm512_set1_epi32(a1);
        for (int t = 0; t < NT; ++t) {
          dpbusd(acc0[r][t], av0, b0[t]);
          dpbusd(acc1[r][t], av1, b1[t]);
        }
      }
    }
    for (int t = 0; t < NT; ++t) {
      const __m512 s = _mm512_loadu_ps(ws + t * wtile_stride + gi * 16);
      for (int r = 0; r < MR; ++r)
        f[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc0[r][t], acc1[r][t])),
                                  _mm512_mul_ps(s, _mm512_set1_ps(as[r * g + gi])), f[r][t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    const __m512 bv = bias ? _mm512_loadu_ps(bias + t * 16) : _mm512_setzero_ps();
    for (int r = 0; r < MR; ++r) _mm512_storeu_ps(c + r * ldc + t * 16, bias ? _mm512_add_ps(f[r][t], bv) : f[r][t]);
  }
}

using MicroRows = void (*)(const uint8_t*, int64_t, const float*, int64_t, const uint8_t*, int64_t, const int8_t*,
                           const float*, const int32_t*, int64_t, int64_t, const float*, float*, int64_t);
template <bool NIB>
MicroRows micro_rows_for(int mr, int nt) {
  static const MicroRows table[2][3] = {
      {micro_mx_rows<1, 1, NIB>, micro_mx_rows<1, 2, NIB>, micro_mx_rows<1, 3, NIB>},
      {micro_mx_rows<2, 1, NIB>, micro_mx_rows<2, 2, NIB>, micro_mx_rows<2, 3, NIB>},
  };
  return table[mr - 1][nt - 1];
}

using MicroMx = void (*)(const uint8_t*, const float*, int64_t, const int8_t*, int64_t, const float*, const int32_t*,
                         int64_t, const float*, float*, int64_t);
template <int STEPS>
MicroMx micro_mx_for(int mr, int nt) {
  static const MicroMx table[4][3] = {
      {micro_mx<1, 1, STEPS>, micro_mx<1, 2, STEPS>, micro_mx<1, 3, STEPS>},
      {micro_mx<2, 1, STEPS>, micro_mx<2, 2, STEPS>, micro_mx<2, 3, STEPS>},
      {micro_mx<3, 1, STEPS>, micro_mx<3, 2, STEPS>, micro_mx<3, 3, STEPS>},
      {micro_mx<4, 1, STEPS>, micro_mx<4, 2, STEPS>, micro_mx<4, 3, STEPS>},
  };
  return table[mr - 1][nt - 1];
}

// nibble tiles -> int8 tiles: the low nibbles of a 64-byte chunk are one K-step, the high nibbles
// the next; a byte shuffle per 128-bit lane maps each nibble to its value
void expand_nibbles(const uint8_t* src, int64_t chunks, const int8_t* lut, int8_t* dst) {
  const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lut)));
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  for (int64_t p = 0; p < chunks; ++p) {
    const __m512i v = _mm512_loadu_si512(src + p * 64);
    _mm512_store_si512(dst + p * 128, _mm512_shuffle_epi8(table, _mm512_and_si512(v, low4)));
    _mm512_store_si512(dst + p * 128 + 64, _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4)));
  }
}

void gemm_mx_simd(const uint8_t* a, int64_t m, const float* as, const MXInt8Weight& w, const float* bias, float* out) {
  const int64_t n = w.n, k = w.k, g = k / w.block, tiles = n / 16, steps = w.block / 4;
  const int64_t panels = (tiles + kNT - 1) / kNT;
  const float* ws = w.scales.data_ptr<float>();
  const int32_t* wc = w.comp.data_ptr<int32_t>();
  if (m <= 2 && w.block % 8 == 0) {  // decode: every weight byte read once, straight from its packed form
    const uint8_t* wp = static_cast<const uint8_t*>(w.packed.raw_data());
    const int64_t tile_bytes = w.nibbles ? k * 8 : k * 16;
    detail::parallel_for(panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t pi = p0; pi < p1; ++pi) {
        const int64_t t0 = pi * kNT, nt = std::min<int64_t>(kNT, tiles - t0);
        (w.nibbles ? micro_rows_for<true> : micro_rows_for<false>)(static_cast<int>(m), static_cast<int>(nt))(
            a, k, as, g, wp + t0 * tile_bytes, tile_bytes, w.lut, ws + t0 * g * 16, wc + t0 * g * 16, g * 16, w.block,
            bias ? bias + t0 * 16 : nullptr, out + t0 * 16, n);
      }
    });
    return;
  }
  // the activations interleaved per block of kMR rows (zero rows pad the last) and their scales
  // [row block][block][kMR], once per call for every panel
  const int64_t mblocks = (m + kMR - 1) / kMR;
  thread_local std::vector<uint32_t> apk;
  thread_local std::vector<float> aspk;
  apk.resize(static_cast<size_t>(mblocks * kMR * (k / 4)));
  aspk.resize(static_cast<size_t>(mblocks * kMR * g));
  uint32_t* const apk_p = apk.data();
  float* const aspk_p = aspk.data();
  detail::parallel_for(mblocks, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t mb = b0; mb < b1; ++mb)
      for (int r = 0; r < kMR; ++r) {
        const int64_t row = mb * kMR + r;
        uint32_t* dst = apk_p + mb * kMR * (k / 4) + r;
        float* sdst = aspk_p + mb * kMR * g + r;
        if (row < m) {
          const uint8_t* src = a + row * k;
          for (int64_t q = 0; q < k / 4; ++q) std::memcpy(dst + q * kMR, src + q * 4, 4);
          for (int64_t gi = 0; gi < g; ++gi) sdst[gi * kMR] = as[row * g + gi];
        } else {
          for (int64_t q = 0; q < k / 4; ++q) dst[q * kMR] = 0;
          for (int64_t gi = 0; gi < g; ++gi) sdst[gi * kMR] = 0.0f;
        }
      }
  });
  detail::parallel_for(panels, 1, [&](int64_t p0, int64_t p1) {
    // fp4: each 48-column panel expanded once to int8 (3 x K x 16 bytes, in L2) for all rows
    struct Free {
      void operator()(int8_t* p) const { std::free(p); }
    };
    const std::unique_ptr<int8_t[], Free> panel(
        w.nibbles ? static_cast<int8_t*>(std::aligned_alloc(64, static_cast<size_t>(kNT * k * 16))) : nullptr);
    std::vector<float> wsp(static_cast<size_t>(g * kNT * 16));
    std::vector<int32_t> wcp(wsp.size());
    for (int64_t pi = p0; pi < p1; ++pi) {
      const int64_t t0 = pi * kNT, nt = std::min<int64_t>(kNT, tiles - t0);
      const int8_t* bp;
      if (w.nibbles) {
        for (int64_t t = 0; t < nt; ++t)
          expand_nibbles(w.packed.data_ptr<uint8_t>() + (t0 + t) * (k / 8) * 64, k / 8, w.lut,
                         panel.get() + t * k * 16);
        bp = panel.get();
      } else {
        bp = w.packed.data_ptr<int8_t>() + t0 * k * 16;
      }
      for (int64_t gi = 0; gi < g; ++gi)
        for (int64_t t = 0; t < nt; ++t) {
          std::memcpy(wsp.data() + (gi * kNT + t) * 16, ws + ((t0 + t) * g + gi) * 16, 64);
          std::memcpy(wcp.data() + (gi * kNT + t) * 16, wc + ((t0 + t) * g + gi) * 16, 64);
        }
      for (int64_t m0 = 0; m0 < m; m0 += kMR) {
        const int mr = static_cast<int>(std::min<int64_t>(kMR, m - m0));
        (steps == 8 ? micro_mx_for<8> : micro_mx_for<0>)(mr, static_cast<int>(nt))(
            reinterpret_cast<const uint8_t*>(apk_p + m0 * (k / 4)), aspk_p + m0 * g, g, bp, k * 16, wsp.data(),
            wcp.data(), steps, bias ? bias + t0 * 16 : nullptr, out + m0 * n + t0 * 16, n);
      }
    }
  });
}
#endif
}  // namespace

void gemm_mx_int8(const uint8_t* a, int64_t m, const float* a_scales, const MXInt8Weight& w, const float* bias,
                  float* out, bool reference) {
  if (m <= 0) return;
#if LOWBIT_QAT_SIMD
  if (!reference) return gemm_mx_simd(a, m, a_scales, w, bias, out);
#endif
  gemm_mx_reference(a, m, a_scales, w, bias, out);
}

}  // namespace lowbit::qat::kernels
