#include "int_kernels.h"

#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include <dnnl.hpp>

#include "lowbit/autograd/kernel.h"

#include "simd_internal.h"

namespace lowbit::qat::kernels {

bool simd_available() { return LOWBIT_QAT_SIMD != 0; }

// ---------------------------------------------------------------------------------------------
// int8 activations x int8 weights, per-group scales
// ---------------------------------------------------------------------------------------------
bool grouped_s8_supported(int64_t n, int64_t k, int64_t group) {
  return n > 0 && n % 16 == 0 && group > 0 && group % 4 == 0 && k % group == 0;
}

// oneDNN u8 (M x K, row-major) x s8 (K x N given as N x K rows: K contiguous) -> s32 (M x N).
// Primitives are cached per (M, threads) — oneDNN fixes a primitive's thread count at creation —
// and the weights are reordered once into each distinct blocked layout a primitive asks for.
struct OnednnS8Matmul {
  OnednnS8Matmul(Tensor codes, int64_t n_, int64_t k_) : n(n_), k(k_), user(std::move(codes)) {}
  void run(const uint8_t* a, int64_t m, int32_t* c) {
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
    static thread_local dnnl::stream strm(eng);
    Entry* e;
    {
      std::lock_guard<std::mutex> lock(mu);
      const auto key = std::make_pair(m, get_num_threads());
      auto it = prims.find(key);
      if (it == prims.end()) {
        Entry ne;
        ne.a_md = dnnl::memory::desc({m, k}, dt::u8, tag::ab);
        ne.c_md = dnnl::memory::desc({m, n}, dt::s32, tag::ab);
        const dnnl::memory::desc b_any({k, n}, dt::s8, tag::any);
        const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(ne.a_md, b_any, ne.c_md), eng);
        ne.prim = dnnl::matmul(pd);
        ne.b_md = pd.weights_desc();
        ne.packed = packed_for(ne.b_md, eng, strm);
        it = prims.emplace(key, std::move(ne)).first;
      }
      e = &it->second;
    }
    dnnl::memory am(e->a_md, eng, const_cast<uint8_t*>(a)), bm(e->b_md, eng, e->packed.raw_data()), cm(e->c_md, eng, c);
    e->prim.execute(strm, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    strm.wait();
  }

 private:
  struct Entry {
    dnnl::matmul prim;
    dnnl::memory::desc a_md, b_md, c_md;
    Tensor packed;
  };
  Tensor packed_for(const dnnl::memory::desc& md, dnnl::engine& eng, dnnl::stream& strm) {
    for (auto& [d, t] : layouts)
      if (d == md) return t;
    Tensor buf = empty({static_cast<int64_t>(md.get_size())}, kUInt8);
    dnnl::memory src(dnnl::memory::desc({k, n}, dnnl::memory::data_type::s8, dnnl::memory::format_tag::ba), eng,
                     user.raw_data());
    dnnl::memory dst(md, eng, buf.raw_data());
    dnnl::reorder(src, dst).execute(strm, src, dst);
    strm.wait();
    layouts.emplace_back(md, buf);
    return buf;
  }
  int64_t n, k;
  Tensor user;  // int8 (N, K): GroupedS8Weight::codes, shared
  std::mutex mu;
  std::map<std::pair<int64_t, int>, Entry> prims;
  std::vector<std::pair<dnnl::memory::desc, Tensor>> layouts;
};

GroupedS8Weight pack_grouped_s8(const int8_t* codes, const float* scales, int64_t n, int64_t k, int64_t group) {
  LOWBIT_CHECK(grouped_s8_supported(n, k, group),
               "pack_grouped_s8: needs out_features % 16 == 0, group % 4 == 0 and in_features % group == 0, got N={} "
               "K={} group={}",
               n, k, group);
  // Per-channel weights go to oneDNN's int8 matmul (one int32 sum over K). Otherwise long groups
  // are split into sub-groups of at most 256 sharing the group's scale, so the VNNI kernel's K
  // chunk stays short (the B panel lives in L1); partial sums of up to 256 products of u8 x s8
  // are exact in float32 (< 2^24).
  const bool use_onednn = group == k && LOWBIT_QAT_SIMD;
  const int64_t sub = [&] {
    if (group <= 256 || use_onednn) return group;
    for (int64_t d = 256; d >= 4; d -= 4)
      if (group % d == 0) return d;
    return group;
  }();
  const int64_t orig_g = k / group;
  std::vector<float> expanded;
  if (sub != group) {
    const int64_t per = group / sub;
    expanded.resize(static_cast<size_t>(n * orig_g * per));
    for (int64_t r = 0; r < n; ++r)
      for (int64_t gi = 0; gi < orig_g * per; ++gi) expanded[r * orig_g * per + gi] = scales[r * orig_g + gi / per];
    scales = expanded.data();
    group = sub;
  }
  GroupedS8Weight w;
  w.n = n;
  w.k = k;
  w.group = group;
  const int64_t nt = n / 16, k4 = k / 4, g = k / group;
  w.corr = empty({n}, kFloat32);
  w.codes = empty({n, k}, kInt8);
  w.scales_rowmajor = empty({n, g}, kFloat32);
  std::memcpy(w.codes.raw_data(), codes, static_cast<size_t>(n * k));
  std::memcpy(w.scales_rowmajor.raw_data(), scales, static_cast<size_t>(n * g) * sizeof(float));
  if (use_onednn) {
    w.onednn = std::make_shared<OnednnS8Matmul>(w.codes, n, k);
  } else {  // the VNNI kernel's tile layouts
    w.packed = empty({nt, k4, 16, 4}, kInt8);
    w.scales = empty({nt, g, 16}, kFloat32);
  }
  int8_t* p = use_onednn ? nullptr : w.packed.data_ptr<int8_t>();
  float* sp = use_onednn ? nullptr : w.scales.data_ptr<float>();
  float* cp = w.corr.data_ptr<float>();
  detail::parallel_for(nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (p) {
        for (int64_t q = 0; q < k4; ++q)
          for (int64_t j = 0; j < 16; ++j)
            std::memcpy(p + ((t * k4 + q) * 16 + j) * 4, codes + (t * 16 + j) * k + q * 4, 4);
        for (int64_t gi = 0; gi < g; ++gi)
          for (int64_t j = 0; j < 16; ++j) sp[(t * g + gi) * 16 + j] = scales[(t * 16 + j) * g + gi];
      }
      for (int64_t j = 0; j < 16; ++j) {
        const int64_t row = t * 16 + j;
        double c = 0.0;
        for (int64_t gi = 0; gi < g; ++gi) {
          int64_t s = 0;
          for (int64_t i = 0; i < group; ++i) s += codes[row * k + gi * group + i];
          c += static_cast<double>(scales[row * g + gi]) * static_cast<double>(s);
        }
        cp[row] = static_cast<float>(c);
      }
    }
  });
  return w;
}

namespace {
// out = rs * (acc - off * corr) + bias, rounded step by step (the SIMD epilogue does the same)
inline float epilogue(float acc, float rs, float off, float corr, float bias) { return rs * (acc - off * corr) + bias; }

void gemm_reference(const uint8_t* a, int64_t m, const GroupedS8Weight& w, const float* rs, const float* off,
                    const float* bias, float* out) {
  const int8_t* b = w.codes.data_ptr<int8_t>();
  const float* s = w.scales_rowmajor.data_ptr<float>();
  const float* corr = w.corr.data_ptr<float>();
  const int64_t g = w.k / w.group;
  detail::parallel_for(m, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t i = m0; i < m1; ++i)
      for (int64_t j = 0; j < w.n; ++j) {
        float acc = 0.0f;
        for (int64_t gi = 0; gi < g; ++gi) {
          int32_t d = 0;
          for (int64_t q = gi * w.group; q < (gi + 1) * w.group; ++q)
            d += static_cast<int32_t>(a[i * w.k + q]) * b[j * w.k + q];
          acc = std::fma(static_cast<float>(d), s[j * g + gi], acc);
        }
        out[i * w.n + j] = epilogue(acc, rs[i], off[i], corr[j], bias ? bias[j] : 0.0f);
      }
  });
}

#if LOWBIT_QAT_SIMD
// MR rows x NT tiles of 16 columns over groups [0, ng): int32 sums per group (vpdpbusd) in
// registers, scaled once per group into the float accumulators, which stay in `c` (L1): keeping
// them in registers too would exceed the 32 vector registers.
template <int MR, int NT>
void micro_u8s8(const uint8_t* a, int64_t lda, const int8_t* bp, int64_t tile_stride, const float* sc,
                int64_t sc_tile_stride, int64_t ng, int64_t group, float* c, int64_t ldc, bool first) {
  const int64_t steps = group / 4;
  for (int64_t g = 0; g < ng; ++g) {
    __m512i iacc[MR][NT];
    for (int r = 0; r < MR; ++r)
      for (int t = 0; t < NT; ++t) iacc[r][t] = _mm512_setzero_si512();
    const int8_t* bg = bp + g * steps * 64;
    const uint8_t* ag = a + g * group;
    for (int64_t q = 0; q < steps; ++q) {
      __m512i bv[NT];
      for (int t = 0; t < NT; ++t) bv[t] = _mm512_load_si512(bg + t * tile_stride + q * 64);
      for (int r = 0; r < MR; ++r) {
        int32_t a4;
        std::memcpy(&a4, ag + r * lda + q * 4, 4);
        const __m512i av = _mm512_set1_epi32(a4);
        for (int t = 0; t < NT; ++t) dpbusd(iacc[r][t], av, bv[t]);
      }
    }
    const bool init = first && g == 0;
    for (int t = 0; t < NT; ++t) {
      const __m512 s = _mm512_loadu_ps(sc + t * sc_tile_stride + g * 16);
      for (int r = 0; r < MR; ++r) {
        float* cp = c + r * ldc + t * 16;
        const __m512 acc = init ? _mm512_setzero_ps() : _mm512_loadu_ps(cp);
        _mm512_storeu_ps(cp, _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[r][t]), s, acc));
      }
    }
  }
}

// 4 rows x 3 tiles over all of K with the float accumulators in registers too (12 int32 + 12
// float32 + 3 B vectors + the broadcast A: 28 of the 32 vector registers): each group's int32 sums
// are converted and scaled into registers, never into memory, so a group costs its vpdpbusd plus
// one convert and one FMA per accumulator (the chunked kernels above also load and store the float
// accumulator per group). The B panel (3 x 16 columns x K) streams from L2. STEPS > 0: the group
// size / 4 as a constant (the inner loop fully unrolled); 0: read from `group`.
#define LOWBIT_ACC3(r) __m512i i##r##0 = _mm512_setzero_si512(), i##r##1 = i##r##0, i##r##2 = i##r##0
#define LOWBIT_DOT3(r)                       \
  std::memcpy(&a4, ag + (r)*lda + q * 4, 4); \
  av = _mm512_set1_epi32(a4);                \
  dpbusd(i##r##0, av, b0), dpbusd(i##r##1, av, b1), dpbusd(i##r##2, av, b2)
#define LOWBIT_SCALE3(r)                                               \
  f##r##0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i##r##0), s0, f##r##0); \
  f##r##1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i##r##1), s1, f##r##1); \
  f##r##2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i##r##2), s2, f##r##2)
#define LOWBIT_STORE3(r)                       \
  _mm512_storeu_ps(c + (r)*ldc, f##r##0);      \
  _mm512_storeu_ps(c + (r)*ldc + 16, f##r##1); \
  _mm512_storeu_ps(c + (r)*ldc + 32, f##r##2)
template <int STEPS>
void micro_u8s8_4x3_full(const uint8_t* a, int64_t lda, const int8_t* bp, int64_t tile_stride, const float* sc,
                         int64_t sc_tile_stride, int64_t ng, int64_t group, float* c, int64_t ldc) {
  const int64_t steps = STEPS > 0 ? STEPS : group / 4;
  __m512 f00 = _mm512_setzero_ps(), f01 = f00, f02 = f00, f10 = f00, f11 = f00, f12 = f00;
  __m512 f20 = f00, f21 = f00, f22 = f00, f30 = f00, f31 = f00, f32 = f00;
  for (int64_t g = 0; g < ng; ++g) {
    LOWBIT_ACC3(0);
    LOWBIT_ACC3(1);
    LOWBIT_ACC3(2);
    LOWBIT_ACC3(3);
    const int8_t* bg = bp + g * steps * 64;
    const uint8_t* ag = a + g * steps * 4;
#pragma GCC unroll 8
    for (int64_t q = 0; q < steps; ++q) {
      const __m512i b0 = _mm512_load_si512(bg + q * 64), b1 = _mm512_load_si512(bg + tile_stride + q * 64),
                    b2 = _mm512_load_si512(bg + 2 * tile_stride + q * 64);
      int32_t a4;
      __m512i av;
      LOWBIT_DOT3(0);
      LOWBIT_DOT3(1);
      LOWBIT_DOT3(2);
      LOWBIT_DOT3(3);
    }
    const __m512 s0 = _mm512_loadu_ps(sc + g * 16), s1 = _mm512_loadu_ps(sc + sc_tile_stride + g * 16),
                 s2 = _mm512_loadu_ps(sc + 2 * sc_tile_stride + g * 16);
    LOWBIT_SCALE3(0);
    LOWBIT_SCALE3(1);
    LOWBIT_SCALE3(2);
    LOWBIT_SCALE3(3);
  }
  LOWBIT_STORE3(0);
  LOWBIT_STORE3(1);
  LOWBIT_STORE3(2);
  LOWBIT_STORE3(3);
}
#undef LOWBIT_ACC3
#undef LOWBIT_DOT3
#undef LOWBIT_SCALE3
#undef LOWBIT_STORE3

using MicroFn = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, const float*, int64_t, int64_t, int64_t,
                         float*, int64_t, bool);
// rows x tiles of the chunked kernels: the remainders of the 4 x 3 blocks
constexpr int kMR = 4, kNT = 3;
MicroFn micro_for(int mr, int nt) {
  static const MicroFn table[kMR][kNT] = {
      {micro_u8s8<1, 1>, micro_u8s8<1, 2>, micro_u8s8<1, 3>},
      {micro_u8s8<2, 1>, micro_u8s8<2, 2>, micro_u8s8<2, 3>},
      {micro_u8s8<3, 1>, micro_u8s8<3, 2>, micro_u8s8<3, 3>},
      {micro_u8s8<4, 1>, micro_u8s8<4, 2>, micro_u8s8<4, 3>},
  };
  return table[mr - 1][nt - 1];
}

void gemm_simd(const uint8_t* a, int64_t m, const GroupedS8Weight& w, const float* rs, const float* off,
               const float* bias, float* out) {
  const int64_t n = w.n, k = w.k, group = w.group, tiles = n / 16, g = k / group;
  const int64_t chunk_groups = std::max<int64_t>(1, 256 / group);  // K chunk of ~256: the B panel stays in L1
  constexpr int64_t kBlockTiles = kNT;                             // the register-resident 4 x 3 kernel's width
  const int64_t blocks = (tiles + kBlockTiles - 1) / kBlockTiles;
  const int64_t mstep = kMR;
  const int8_t* bp = w.packed.data_ptr<int8_t>();
  const float* sp = w.scales.data_ptr<float>();
  const float* corr = w.corr.data_ptr<float>();
  detail::parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t t0 = blk * kBlockTiles, nt = std::min<int64_t>(kBlockTiles, tiles - t0);
      // full 4-row x 3-tile blocks over all of K in registers; other rows and narrower blocks in
      // K chunks through the L1-resident kernels
      const int64_t m_full = nt == kBlockTiles ? m / mstep * mstep : 0;
      for (int64_t m0 = 0; m0 < m_full; m0 += mstep)
        (group == 32 ? micro_u8s8_4x3_full<8> : micro_u8s8_4x3_full<0>)(a + m0 * k, k, bp + t0 * k * 16, k * 16,
                                                                        sp + t0 * g * 16, g * 16, g, group,
                                                                        out + m0 * n + t0 * 16, n);
      for (int64_t g0 = 0; g0 < g; g0 += chunk_groups) {
        const int64_t ng = std::min(chunk_groups, g - g0);
        for (int64_t m0 = m_full; m0 < m; m0 += mstep) {
          const int64_t mr = std::min<int64_t>(mstep, m - m0);
          micro_for(static_cast<int>(mr), static_cast<int>(nt))(
              a + m0 * k + g0 * group, k, bp + t0 * k * 16 + g0 * group * 16, k * 16, sp + (t0 * g + g0) * 16, g * 16,
              ng, group, out + m0 * n + t0 * 16, n, g0 == 0);
        }
      }
      for (int64_t i = 0; i < m; ++i) {
        float* o = out + i * n + t0 * 16;
        const __m512 vrs = _mm512_set1_ps(rs[i]), voff = _mm512_set1_ps(off[i]);
        for (int64_t t = 0; t < nt * 16; t += 16) {
          const __m512 cr = _mm512_loadu_ps(corr + t0 * 16 + t);
          const __m512 bs = bias ? _mm512_loadu_ps(bias + t0 * 16 + t) : _mm512_setzero_ps();
          const __m512 v = _mm512_mul_ps(vrs, _mm512_sub_ps(_mm512_loadu_ps(o + t), _mm512_mul_ps(voff, cr)));
          _mm512_storeu_ps(o + t, _mm512_add_ps(v, bs));
        }
      }
    }
  });
}
#endif
}  // namespace

namespace {
// per-channel: one int32 sum over K from oneDNN, then the reference's epilogue (bit-identical)
void gemm_onednn(const uint8_t* a, int64_t m, const GroupedS8Weight& w, const float* rs, const float* off,
                 const float* bias, float* out) {
  const Tensor acc_t = empty({m, w.n}, kInt32);  // cached large block: no zero-fill, no page faults per call
  const int32_t* acc = acc_t.data_ptr<int32_t>();
  w.onednn->run(a, m, acc_t.data_ptr<int32_t>());
  const float* s = w.scales_rowmajor.data_ptr<float>();
  const float* corr = w.corr.data_ptr<float>();
  const int64_t n = w.n;
  detail::parallel_for(m, 8, [&](int64_t m0, int64_t m1) {
    for (int64_t i = m0; i < m1; ++i) {
      const int32_t* ai = acc + i * n;
      float* o = out + i * n;
      const float r = rs[i], f = off[i];
#pragma omp simd
      for (int64_t j = 0; j < n; ++j)
        o[j] = epilogue(std::fma(static_cast<float>(ai[j]), s[j], 0.0f), r, f, corr[j], bias ? bias[j] : 0.0f);
    }
  });
}
}  // namespace

void gemm_u8s8_grouped(const uint8_t* a, int64_t m, const GroupedS8Weight& w, const float* row_scale,
                       const float* row_offset, const float* bias, float* out, bool reference) {
  if (m <= 0) return;
#if LOWBIT_QAT_SIMD
  if (!reference && w.onednn) return gemm_onednn(a, m, w, row_scale, row_offset, bias, out);
  if (!reference) return gemm_simd(a, m, w, row_scale, row_offset, bias, out);
#endif
  gemm_reference(a, m, w, row_scale, row_offset, bias, out);
}

// ---------------------------------------------------------------------------------------------
// float activations x int4 / int8 weights (weight-only decode)
// ---------------------------------------------------------------------------------------------
bool weight_only_supported(int bits, bool is_signed, int64_t k, int64_t group) {
  return is_signed && (bits == 4 || bits == 8) && group > 0 && group % 32 == 0 && k % group == 0;
}

namespace {
inline int code_at(const uint8_t* row, int bits, int64_t i) {
  if (bits == 8) return static_cast<int8_t>(row[i]);
  const int v = (row[i / 2] >> ((i % 2) * 4)) & 0x0f;
  return v >= 8 ? v - 16 : v;
}

void gemv_reference(const float* x, int64_t rows, const uint8_t* q, int bits, int64_t n, int64_t k, int64_t group,
                    const float* s, const int8_t* z, const float* bias, float* out) {
  const int64_t g = k / group, row_bytes = bits == 4 ? k / 2 : k;
  detail::parallel_for(n, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t j = n0; j < n1; ++j)
      for (int64_t r = 0; r < rows; ++r) {
        float acc = 0.0f;
        for (int64_t gi = 0; gi < g; ++gi) {
          float d = 0.0f;
          const int zp = z ? z[j * g + gi] : 0;
          for (int64_t i = gi * group; i < (gi + 1) * group; ++i)
            d += x[r * k + i] * static_cast<float>(code_at(q + j * row_bytes, bits, i) - zp);
          acc += s[j * g + gi] * d;
        }
        out[r * n + j] = acc + (bias ? bias[j] : 0.0f);
      }
  });
}

#if LOWBIT_QAT_SIMD
// R activation rows against J weight rows at a time (independent accumulator chains); codes are
// read once for all R rows. For int4 the activations are pre-permuted per 32 (16 even then 16 odd
// positions) so the low and high nibbles of 16 bytes line up with two contiguous vectors.
inline void load_codes(const uint8_t* qr, int bits, int64_t idx, __m512& w0, __m512& w1) {
  if (bits == 4) {
    // vpermps reads the low 4 bits of each index: the nibble selects its float value directly
    const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1);
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qr + idx * 16)));
    w0 = _mm512_permutexvar_ps(v, table);
    w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
  } else {
    w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qr + idx * 32))));
    w1 =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qr + idx * 32 + 16))));
  }
}

template <int R, int J>
void gemv_block(const float* xp, const float* xsum, const uint8_t* q, int bits, int64_t j0, int64_t n, int64_t k,
                int64_t group, const float* s, const int8_t* z, const float* bias, float* out) {
  const int64_t g = k / group, chunks = group / 32, row_bytes = bits == 4 ? k / 2 : k;
  __m512 tot[J][R];
  float corr[J][R];
  for (int jj = 0; jj < J; ++jj)
    for (int r = 0; r < R; ++r) {
      tot[jj][r] = _mm512_setzero_ps();
      corr[jj][r] = 0.0f;
    }
  for (int64_t gi = 0; gi < g; ++gi) {
    __m512 acc[J][R];
    for (int jj = 0; jj < J; ++jj)
      for (int r = 0; r < R; ++r) acc[jj][r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t idx = gi * chunks + c;            // 32-element chunk
      if ((idx * bits) % 16 == 0 && j0 + 2 * J <= n)  // each 64-byte line once: the next J rows' codes, one block ahead
        for (int jj = 0; jj < J; ++jj)
          _mm_prefetch(reinterpret_cast<const char*>(q + (j0 + J + jj) * row_bytes + idx * bits * 4), _MM_HINT_T0);
      for (int jj = 0; jj < J; ++jj) {
        __m512 w0, w1;
        load_codes(q + (j0 + jj) * row_bytes, bits, idx, w0, w1);
        for (int r = 0; r < R; ++r) {
          acc[jj][r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp + r * k + idx * 32), acc[jj][r]);
          acc[jj][r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp + r * k + idx * 32 + 16), acc[jj][r]);
        }
      }
    }
    if (gi % 16 == 0 && j0 + 2 * J <= n)
      for (int jj = 0; jj < J; ++jj)
        _mm_prefetch(reinterpret_cast<const char*>(s + (j0 + J + jj) * g + gi), _MM_HINT_T0);
    for (int jj = 0; jj < J; ++jj) {
      const float sc = s[(j0 + jj) * g + gi];
      const __m512 vs = _mm512_set1_ps(sc);
      for (int r = 0; r < R; ++r) tot[jj][r] = _mm512_fmadd_ps(acc[jj][r], vs, tot[jj][r]);
      if (z)
        for (int r = 0; r < R; ++r) corr[jj][r] += sc * static_cast<float>(z[(j0 + jj) * g + gi]) * xsum[r * g + gi];
    }
  }
  for (int jj = 0; jj < J; ++jj)
    for (int r = 0; r < R; ++r)
      out[r * n + j0 + jj] = _mm512_reduce_add_ps(tot[jj][r]) - corr[jj][r] + (bias ? bias[j0 + jj] : 0.0f);
}

template <int R>
void gemv_rows(const float* xp, const float* xsum, const uint8_t* q, int bits, int64_t n0, int64_t n1, int64_t n,
               int64_t k, int64_t group, const float* s, const int8_t* z, const float* bias, float* out) {
  int64_t j = n0;
  for (; j + 4 <= n1; j += 4) gemv_block<R, 4>(xp, xsum, q, bits, j, n, k, group, s, z, bias, out);
  for (; j < n1; ++j) gemv_block<R, 1>(xp, xsum, q, bits, j, n, k, group, s, z, bias, out);
}

void gemv_simd(const float* x, int64_t rows, const uint8_t* q, int bits, int64_t n, int64_t k, int64_t group,
               const float* s, const int8_t* z, const float* bias, float* out) {
  const int64_t g = k / group;
  std::vector<float> xp(static_cast<size_t>(rows * k)), xsum(static_cast<size_t>(rows * g), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < k; c += 32)
      for (int64_t i = 0; i < 32; ++i) {
        const int64_t dst = bits == 4 ? (i % 2) * 16 + i / 2 : i;
        xp[r * k + c + dst] = x[r * k + c + i];
      }
    for (int64_t i = 0; i < k; ++i) xsum[r * g + i / group] += x[r * k + i];
  }
  detail::parallel_for(n, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t r0 = 0; r0 < rows; r0 += 4) {
      const int64_t rr = std::min<int64_t>(4, rows - r0);
      const float* xr = xp.data() + r0 * k;
      const float* sr = xsum.data() + r0 * g;
      float* o = out + r0 * n;
      switch (rr) {
        case 1: gemv_rows<1>(xr, sr, q, bits, n0, n1, n, k, group, s, z, bias, o); break;
        case 2: gemv_rows<2>(xr, sr, q, bits, n0, n1, n, k, group, s, z, bias, o); break;
        case 3: gemv_rows<3>(xr, sr, q, bits, n0, n1, n, k, group, s, z, bias, o); break;
        default: gemv_rows<4>(xr, sr, q, bits, n0, n1, n, k, group, s, z, bias, o); break;
      }
    }
  });
}
#endif
}  // namespace

void gemv_weight_only(const float* x, int64_t rows, const uint8_t* qdata, int bits, int64_t n, int64_t k, int64_t group,
                      const float* scales, const int8_t* zero_points, const float* bias, float* out, bool reference) {
  LOWBIT_CHECK(weight_only_supported(bits, true, k, group),
               "gemv_weight_only: unsupported codes (bits={}, K={}, group={})", bits, k, group);
  if (rows <= 0) return;
#if LOWBIT_QAT_SIMD
  if (!reference) return gemv_simd(x, rows, qdata, bits, n, k, group, scales, zero_points, bias, out);
#endif
  gemv_reference(x, rows, qdata, bits, n, k, group, scales, zero_points, bias, out);
}

}  // namespace lowbit::qat::kernels
