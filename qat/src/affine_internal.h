// Internals of the affine primitives (not installed): scalar helpers, the run kernels and the
// bfloat16 path, shared by affine.cpp (the public ops), affine_runs.cpp (float32 kernels, the
// straight-through backward, argument checks) and affine_bf16.cpp (torchao's bf16 arithmetic).
// Blocks come from core/blocks.h.
#pragma once
#include <cmath>
#include <limits>
#include <optional>

#include "lowbit/autograd/autograd.h"
#include "lowbit/core/blocks.h"
#include "lowbit/qat/affine.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define LOWBIT_AFFINE_AVX512 1
#endif

namespace lowbit::qat::affine_detail {

using core::block_runs;
using core::BlockIndexer;
using core::for_each_element;
using core::grain_for;
using core::Runs;

// float -> int32 as x86's cvttss2si (and PyTorch's CPU casts): NaN and out-of-range give INT32_MIN.
inline int32_t to_int32(float v) {
  if (!(v >= -2147483648.0f && v < 2147483648.0f)) return std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(v);
}
// round half to even in float32
inline float rne(float v) { return std::nearbyint(v); }
inline float fmin_nan(float a, float b) {
  return (a != a || b != b) ? std::numeric_limits<float>::quiet_NaN() : (a < b ? a : b);
}
inline float fmax_nan(float a, float b) {
  return (a != a || b != b) ? std::numeric_limits<float>::quiet_NaN() : (a > b ? a : b);
}
inline float clamp_f(float v, float lo, float hi) { return v != v ? v : (v < lo ? lo : (v > hi ? hi : v)); }

struct MinMax {
  float mn, mx;
};
struct QParams {
  float scale, zero_point;  // zero_point before the integer cast
};
struct MixedFlags {
  bool xb, sb, zint;
};

// ---- argument checks and per-element arithmetic (affine_runs.cpp) ----
void check_input(const Tensor& x, const char* op);
void check_range(int64_t qmin, int64_t qmax, const char* op);
void check_qparams(const Tensor& scale, const Tensor& zp, const Shape& nblocks, ZeroPointDomain domain, const char* op);
void check_choose_args(const Tensor& x, MappingType mapping, int64_t qmin, int64_t qmax, ZeroPointDomain domain,
                       DType zp_dtype, const char* op);
// Zero points as raw pointers, resolved once per call (not per block): read them as floats for a
// domain, or store a block's zero point as the CPU cast does (int32) or as is (float).
struct ZpView {
  const int32_t* i = nullptr;
  const float* f = nullptr;
  float at(int64_t b) const { return i ? static_cast<float>(i[b]) : f ? f[b] : 0.0f; }
};
inline ZpView zp_view(const Tensor& zp, ZeroPointDomain domain) {
  if (domain == ZeroPointDomain::NONE || !zp.defined()) return {};
  if (zp.dtype() == kFloat32) return {nullptr, zp.data_ptr<float>()};
  return {zp.data_ptr<int32_t>(), nullptr};
}
struct ZpOut {
  int32_t* i = nullptr;
  float* f = nullptr;
  // stores the block's zero point and returns it as the kernels read it back (ZpView::at)
  float put(int64_t b, float z, ZeroPointDomain domain) const {
    if (i) {
      i[b] = to_int32(z);
      return domain == ZeroPointDomain::NONE ? 0.0f : static_cast<float>(i[b]);
    }
    f[b] = z;
    return domain == ZeroPointDomain::NONE ? 0.0f : z;
  }
};
inline ZpOut zp_out(Tensor& zp) {
  if (zp.dtype() == kFloat32) return {nullptr, zp.data_ptr<float>()};
  return {zp.data_ptr<int32_t>(), nullptr};
}
float eps_value(std::optional<double> eps_opt);
// The float code before the integer cast, for every domain (torchao l.481/538/602).
float quantize_one(float x, float scale, float zp, float qmin, float qmax, ZeroPointDomain domain);
float dequantize_one(float q, float scale, float zp, float qmin, float qmax, ZeroPointDomain domain);

// ---- run kernels (affine_runs.cpp; the templates here) ----
// (inline: called once per block of the hot loops)
// min and max of a run; NaN (both) when any element is NaN, as torch.aminmax.
inline MinMax run_minmax(const float* x, int64_t n) {
#ifdef LOWBIT_AFFINE_AVX512
  // 16 lanes a step and one masked tail step: a 32-element group is two steps (the compiler's
  // vector loop is 64 wide and left such runs to its epilogue)
  const __m512 pinf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 vmn = pinf, vmx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 vnan = 0;
  auto step = [&](__m512 v, __m512 v_for_max) {
    vnan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    vmn = _mm512_min_ps(vmn, v);
    vmx = _mm512_max_ps(vmx, v_for_max);
  };
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    step(v, v);
  }
  if (i < n) {  // masked-off lanes: +inf for the min, -inf for the max
    const __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_mask_loadu_ps(pinf, k, x + i);
    step(v, _mm512_mask_mov_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), k, v));
  }
  if (vnan) return {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::quiet_NaN()};
  return {_mm512_reduce_min_ps(vmn), _mm512_reduce_max_ps(vmx)};
#else
  float mn = std::numeric_limits<float>::infinity(), mx = -std::numeric_limits<float>::infinity();
  int nan = 0;
#pragma omp simd reduction(min : mn) reduction(max : mx) reduction(| : nan)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
    nan |= v != v;
  }
  if (nan) return {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::quiet_NaN()};
  return {mn, mx};
#endif
}

// torchao's scale / zero point of one block from its min and max, in float32.
inline QParams qparams_from_minmax(MinMax m, MappingType mapping, float fqmin, float fqmax, int64_t qmin, int64_t qmax,
                                   float eps, ZeroPointDomain domain) {
  float s, z;
  if (domain == ZeroPointDomain::FLOAT) {  // tinygemm: raw min/max, zp = min + scale * mid
    s = fmax_nan((m.mx - m.mn) / static_cast<float>(qmax - qmin), eps);
    s = s != s ? s : std::max(s, eps);
    return {s, m.mn + s * static_cast<float>((qmax + qmin + 1) / 2)};
  }
  const float min_neg = fmin_nan(m.mn, 0.0f), max_pos = fmax_nan(m.mx, 0.0f);
  if (mapping == MappingType::SYMMETRIC || mapping == MappingType::SYMMETRIC_NO_CLIPPING_ERR) {
    if (mapping == MappingType::SYMMETRIC) {
      const float amax = fmax_nan(-min_neg, max_pos);
      s = amax / static_cast<float>(static_cast<double>(qmax - qmin) / 2.0);
    } else {
      const float smin = min_neg / fqmin, smax = max_pos / fqmax;
      s = smin > smax ? smin : smax;
    }
    z = static_cast<float>((qmax + qmin + 1) / 2);
    s = s != s ? s : std::max(s, eps);
  } else {
    s = (max_pos - min_neg) / static_cast<float>(qmax - qmin);
    s = s != s ? s : std::max(s, eps);
    z = clamp_f(fqmin - rne(min_neg / s), fqmin, fqmax);
  }
  if (domain == ZeroPointDomain::NONE) z = 0.0f;
  return {s, z};
}

// Fake-quantizes a run sharing one (scale, zero point): y, and the straight-through mask (1 where
// the rounded code was inside [qmin, qmax]). Vectorized for the INT and NONE domains.
template <ZeroPointDomain D>
inline void fq_run(const float* __restrict x, int64_t n, float s, float z, float fqmin, float fqmax,
                   float* __restrict y, uint8_t* __restrict m) {
  if constexpr (D == ZeroPointDomain::FLOAT) {
    const float min_val = z - s * std::floor((fqmax + fqmin + 1.0f) / 2.0f);
    for (int64_t i = 0; i < n; ++i) {
      const float u = rne((x[i] - min_val) / s);
      m[i] = u >= fqmin && u <= fqmax;
      y[i] = dequantize_one(clamp_f(u, fqmin, fqmax), s, z, fqmin, fqmax, D);
    }
  } else {
    const float inv = 1.0f / s;
#ifdef LOWBIT_AFFINE_AVX512
    // max/min with the bound first return q when q is NaN, as the scalar clamp below
    const __m512 vinv = _mm512_set1_ps(inv), vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z), lo = _mm512_set1_ps(fqmin),
                 hi = _mm512_set1_ps(fqmax);
    const __m128i one = _mm_set1_epi8(1);
    // one step: y and the mask bytes of 16 elements (masked loads/stores only for the tail: they
    // are slower than plain ones here)
    auto step = [&](__m512 v, __m512& yv) {
      __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(v, vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      if constexpr (D == ZeroPointDomain::INT) q = _mm512_add_ps(q, vz);
      const __mmask16 in = _mm512_cmp_ps_mask(q, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(q, hi, _CMP_LE_OQ);
      const __m512 c = _mm512_min_ps(hi, _mm512_max_ps(lo, q));
      yv = _mm512_mul_ps(D == ZeroPointDomain::INT ? _mm512_sub_ps(c, vz) : c, vs);
      return _mm_maskz_mov_epi8(in, one);
    };
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      __m512 yv;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(m + i), step(_mm512_loadu_ps(x + i), yv));
      _mm512_storeu_ps(y + i, yv);
    }
    if (i < n) {
      const __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1);
      __m512 yv;
      _mm_mask_storeu_epi8(m + i, k, step(_mm512_maskz_loadu_ps(k, x + i), yv));
      _mm512_mask_storeu_ps(y + i, k, yv);
    }
#else
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      float q = std::nearbyint(x[i] * inv);
      if constexpr (D == ZeroPointDomain::INT) q = q + z;
      m[i] = static_cast<uint8_t>((q >= fqmin) & (q <= fqmax));  // no short-circuit: keeps the loop vectorizable
      float c = q < fqmin ? fqmin : q;                           // NaN stays NaN
      c = c > fqmax ? fqmax : c;
      y[i] = D == ZeroPointDomain::INT ? (c - z) * s : c * s;
    }
#endif
  }
}
void fq_run(ZeroPointDomain d, const float* x, int64_t n, float s, float z, float fqmin, float fqmax, float* y,
            uint8_t* m);
// Codes of a run for the INT / NONE domains (z = 0), vectorized: the float code is clamped, then
// converted as the CPU cast does (NaN -> INT32_MIN) and truncated to the 8-bit container.
template <typename T>
inline void q_run(const float* __restrict x, int64_t n, float s, float z, float fqmin, float fqmax, T* __restrict out) {
  const float inv = 1.0f / s;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float c = std::nearbyint(x[i] * inv) + z;
    c = c < fqmin ? fqmin : c;
    c = c > fqmax ? fqmax : c;
    const int32_t v = c == c ? static_cast<int32_t>(c) : std::numeric_limits<int32_t>::min();
    out[i] = static_cast<T>(v & 0xff);
  }
}
// where(mask, g * s, 0) * (1 / s) over a run
void ste_run(const float* g, const uint8_t* m, int64_t n, float s, float* out);
// Records the straight-through backward of a float32 fake quantization (torchao's autograd).
void record_fq_backward(Tensor& y, const Tensor& x, const Tensor& mask, const Tensor& scale, const Shape& block);

// ---- bfloat16: torchao computes in the tensors' own dtypes and torch rounds every bf16 op result
// (the op itself runs in float32); mixed bf16 x float32 operands promote to float32 (spec §0).
inline float rb(float v) { return static_cast<float>(BFloat16(v)); }
inline float rnd(float v, bool bf) { return bf ? rb(v) : v; }
inline bool is_bf(const Tensor& t) { return t.defined() && t.dtype() == kBFloat16; }
inline float fval(const Tensor& t, int64_t i) {
  return t.dtype() == kBFloat16 ? static_cast<float>(t.data_ptr<BFloat16>()[i]) : t.data_ptr<float>()[i];
}
inline void fset(Tensor& t, int64_t i, float v) {
  if (t.dtype() == kBFloat16)
    t.data_ptr<BFloat16>()[i] = BFloat16(v);
  else
    t.data_ptr<float>()[i] = v;
}
// ---- bfloat16 arithmetic (affine_bf16.cpp) ----
QParams qparams_bf16(MinMax m, MappingType mapping, float fqmin, float fqmax, int64_t qmin, int64_t qmax, float eps,
                     ZeroPointDomain domain);
float q_mixed(float x, float s, float z, MixedFlags f, ZeroPointDomain domain, float* unclamped);
float dq_mixed(float c, float s, float z, bool ob_bf, bool sb, ZeroPointDomain domain);
void check_no_float_domain_bf16(ZeroPointDomain domain, const char* op);
// fake_quantize_affine with bfloat16 operands (output in x's dtype, torch's bf16 gradient)
Tensor fake_quantize_mixed(const Tensor& x, const BlockIndexer& bi, const Shape& block_size, const Tensor& scale,
                           const Tensor& zp, int64_t qmin, int64_t qmax, ZeroPointDomain domain);

}  // namespace lowbit::qat::affine_detail
