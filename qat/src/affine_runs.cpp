// The float32 run kernels of the affine primitives, their straight-through backward and the
// argument checks (see affine_internal.h).
#include <algorithm>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "affine_internal.h"
#include "lowbit/autograd/kernel.h"

namespace lowbit::qat::affine_detail {

void check_input(const Tensor& x, const char* op) {
  LOWBIT_CHECK(x.defined() && (x.dtype() == kFloat32 || x.dtype() == kBFloat16),
               "{}: input must be float32 or bfloat16, got {}", op, x.defined() ? detail::desc(x) : "undefined");
}
void check_range(int64_t qmin, int64_t qmax, const char* op) {
  LOWBIT_CHECK(qmin < qmax, "{}: quant_min ({}) must be below quant_max ({})", op, qmin, qmax);
}
void check_qparams(const Tensor& scale, const Tensor& zp, const Shape& nblocks, ZeroPointDomain domain,
                   const char* op) {
  LOWBIT_CHECK(scale.defined() && (scale.dtype() == kFloat32 || scale.dtype() == kBFloat16) &&
                   scale.numel() == detail::numel_of(nblocks),
               "{}: scale must be float32 or bfloat16 with one value per block ({} blocks of shape {}), got {}", op,
               detail::numel_of(nblocks), shape_str(nblocks), scale.defined() ? detail::desc(scale) : "undefined");
  if (domain == ZeroPointDomain::NONE) return;
  const bool ok_dtype =
      zp.defined() && (zp.dtype() == kFloat32 || (domain == ZeroPointDomain::INT && zp.dtype() == kInt32));
  LOWBIT_CHECK(ok_dtype && zp.numel() == scale.numel(),
               "{}: zero_point must be {} with {} values for domain {}, got {}", op,
               domain == ZeroPointDomain::INT ? "int32 or float32" : "float32", scale.numel(), to_string(domain),
               zp.defined() ? detail::desc(zp) : "undefined");
}

// The float code before the integer cast, for every domain (torchao l.481/538/602).
float quantize_one(float x, float scale, float zp, float qmin, float qmax, ZeroPointDomain domain) {
  if (domain == ZeroPointDomain::FLOAT) {
    const float mid = (qmax + qmin + 1.0f) / 2.0f;  // exact for the small ranges used
    const float min_val = zp - scale * std::floor(mid);
    return clamp_f(rne((x - min_val) / scale), qmin, qmax);
  }
  const float inv = 1.0f / scale;
  float q = rne(x * inv);
  if (domain == ZeroPointDomain::INT) q = q + zp;
  return clamp_f(q, qmin, qmax);
}
float dequantize_one(float q, float scale, float zp, float qmin, float qmax, ZeroPointDomain domain) {
  if (domain == ZeroPointDomain::FLOAT) return (q - std::floor((qmax + qmin + 1.0f) / 2.0f)) * scale + zp;
  if (domain == ZeroPointDomain::NONE) return q * scale;
  return (q - zp) * scale;
}

void fq_run(ZeroPointDomain d, const float* x, int64_t n, float s, float z, float fqmin, float fqmax, float* y,
            uint8_t* m) {
  switch (d) {
    case ZeroPointDomain::INT: return fq_run<ZeroPointDomain::INT>(x, n, s, z, fqmin, fqmax, y, m);
    case ZeroPointDomain::FLOAT: return fq_run<ZeroPointDomain::FLOAT>(x, n, s, z, fqmin, fqmax, y, m);
    case ZeroPointDomain::NONE: return fq_run<ZeroPointDomain::NONE>(x, n, s, z, fqmin, fqmax, y, m);
  }
}

// where(mask, g * s, 0) * (1 / s) over a run. g is read whatever the mask says: a load that waits
// for the mask byte (a masked load) serialises the two streams and halved this loop's bandwidth.
void ste_run(const float* __restrict g, const uint8_t* __restrict m, int64_t n, float s, float* __restrict out) {
  const float inv = 1.0f / s;
  int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  const __m512 vs = _mm512_set1_ps(s), vinv = _mm512_set1_ps(inv);
  const __m512 off = _mm512_set1_ps(0.0f * inv);  // masked-off lanes: NaN when the scale is
  for (; i + 16 <= n; i += 16) {
    const __m512 gs = _mm512_mul_ps(_mm512_loadu_ps(g + i), vs);  // register operands only
    const __mmask16 k = _mm_test_epi8_mask(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m + i)),
                                           _mm_set1_epi8(static_cast<char>(0xff)));
    _mm512_storeu_ps(out + i, _mm512_mask_blend_ps(k, off, _mm512_mul_ps(gs, vinv)));
  }
#endif
  for (; i < n; ++i) {
    const float gs = g[i] * s;
    out[i] = (m[i] ? gs : 0.0f) * inv;
  }
}

// Autograd through torchao's ops gives where(mask, g * scale, 0) * (1 / scale) in float32 (clamp's
// backward selects, then the x * (1/scale) backward multiplies), which is not always g and is NaN
// for every element of a block whose scale is NaN or inf: reproduce it.
void record_fq_backward(Tensor& y, const Tensor& x, const Tensor& mask, const Tensor& scale, const Shape& block) {
  if (!detail::any_requires_grad({&x})) return;
  const Tensor s = scale.detach();
  detail::record(y, "FakeQuantizeAffineBackward0", {x}, [mask, s, block](const Tensor& g_in) {
    const Tensor g = g_in.to(kFloat32);
    Tensor gx = empty(g.shape(), kFloat32);
    const float* gp = g.data_ptr<float>();
    const uint8_t* mp = mask.data_ptr<uint8_t>();
    const float* sp = s.data_ptr<float>();
    float* op = gx.data_ptr<float>();
    if (const Runs runs = block_runs(g.shape(), block); runs.contiguous) {
      detail::parallel_for(runs.count, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
        runs.for_each_run(b0, b1, [&](int64_t b, int64_t o, int64_t n) { ste_run(gp + o, mp + o, n, sp[b], op + o); });
      });
    } else {
      BlockIndexer bi(g.shape(), block, "fake_quantize_affine backward");
      bi.for_each([&](int64_t e, int64_t b) { op[e] = (mp[e] != 0 ? gp[e] * sp[b] : 0.0f) * (1.0f / sp[b]); });
    }
    return std::vector<Tensor>{gx};
  });
}

float eps_value(std::optional<double> eps_opt) {
  return static_cast<float>(eps_opt ? *eps_opt : static_cast<double>(std::numeric_limits<float>::min()));
}
void check_choose_args(const Tensor& x, MappingType mapping, int64_t qmin, int64_t qmax, ZeroPointDomain domain,
                       DType zp_dtype, const char* op) {
  check_input(x, op);
  check_range(qmin, qmax, op);
  LOWBIT_CHECK(domain != ZeroPointDomain::FLOAT || mapping == MappingType::ASYMMETRIC,
               "{}: the FLOAT zero-point domain (tinygemm) is asymmetric only, got {}", op, to_string(mapping));
  LOWBIT_CHECK(zp_dtype == kInt32 || zp_dtype == kFloat32, "{}: zero_point_dtype must be int32 or float32, got {}", op,
               dtype_name(zp_dtype));
}

}  // namespace lowbit::qat::affine_detail
