#include "lowbit/qat/affine.h"

#include "lowbit/core/format.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/autograd/kernel.h"

namespace lowbit::qat {

const char* to_string(MappingType m) {
  switch (m) {
    case MappingType::SYMMETRIC: return "SYMMETRIC";
    case MappingType::SYMMETRIC_NO_CLIPPING_ERR: return "SYMMETRIC_NO_CLIPPING_ERR";
    case MappingType::ASYMMETRIC: return "ASYMMETRIC";
  }
  return "?";
}
const char* to_string(ZeroPointDomain d) {
  switch (d) {
    case ZeroPointDomain::INT: return "INT";
    case ZeroPointDomain::FLOAT: return "FLOAT";
    case ZeroPointDomain::NONE: return "NONE";
  }
  return "?";
}

std::pair<int64_t, int64_t> quant_range(const std::string& d) {
  const core::Format* f = core::find_format(d);
  LOWBIT_CHECK(f && f->kind == core::FormatKind::Integer, "quant_range: unknown target dtype '{}' (known: {})", d,
               core::format_names(core::FormatKind::Integer));
  return {f->qmin, f->qmax};
}

Shape blocks_shape(const Shape& shape, const Shape& block, const char* op) {
  LOWBIT_CHECK(block.size() == shape.size(), "{}: block_size {} must have the rank of the input {}", op,
               shape_str(block), shape_str(shape));
  Shape out(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    LOWBIT_CHECK(block[i] >= 1, "{}: block_size {} must be positive at dim {} (input shape {})", op, shape_str(block),
                 i, shape_str(shape));
    out[i] = (shape[i] + block[i] - 1) / block[i];  // a ragged last block where block[i] does not divide
  }
  return out;
}

namespace {
// float -> int32 as x86's cvttss2si (and PyTorch's CPU casts): NaN and out-of-range give INT32_MIN.
int32_t to_int32(float v) {
  if (!(v >= -2147483648.0f && v < 2147483648.0f)) return std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(v);
}
// round half to even in float32
float rne(float v) { return std::nearbyint(v); }
float fmin_nan(float a, float b) {
  return (a != a || b != b) ? std::numeric_limits<float>::quiet_NaN() : (a < b ? a : b);
}
float fmax_nan(float a, float b) {
  return (a != a || b != b) ? std::numeric_limits<float>::quiet_NaN() : (a > b ? a : b);
}
float clamp_f(float v, float lo, float hi) { return v != v ? v : (v < lo ? lo : (v > hi ? hi : v)); }

// Maps each element of a tensor of `shape` to its block index (row-major over blocks_shape).
struct BlockIndexer {
  Shape shape, block, nblocks;
  std::vector<int64_t> bstride;
  BlockIndexer(const Shape& s, const Shape& b, const char* op) : shape(s), block(b), nblocks(blocks_shape(s, b, op)) {
    bstride.assign(s.size(), 1);
    for (int64_t i = static_cast<int64_t>(s.size()) - 2; i >= 0; --i) bstride[i] = bstride[i + 1] * nblocks[i + 1];
  }
  template <typename F>
  void for_each(F&& f) const {  // f(element index, block index)
    const int64_t n = detail::numel_of(shape);
    const int64_t nd = static_cast<int64_t>(shape.size());
    std::vector<int64_t> idx(nd, 0);
    for (int64_t e = 0; e < n; ++e) {
      int64_t b = 0;
      for (int64_t d = 0; d < nd; ++d) b += (idx[d] / block[d]) * bstride[d];
      f(e, b);
      for (int64_t d = nd - 1; d >= 0; --d) {
        if (++idx[d] < shape[d]) break;
        idx[d] = 0;
      }
    }
  }
};

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
float zp_at(const Tensor& zp, ZeroPointDomain domain, int64_t b) {
  if (domain == ZeroPointDomain::NONE) return 0.0f;
  if (zp.dtype() == kFloat32) return zp.data_ptr<float>()[b];
  return static_cast<float>(zp.data_ptr<int32_t>()[b]);
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
}  // namespace

namespace {
// The block iterator's fast layout: blocks that are runs of consecutive elements in row-major
// order -- block_size is 1 before some dim k, any size at k, the full extent after k (per-tensor,
// per-token, per-row of a 2-D weight, per-group along the last dim). Along k the last block may be
// shorter (a ragged group). Other layouts use the strided BlockIndexer.
struct Runs {
  bool contiguous = false;
  int64_t count = 0;    // blocks
  int64_t max_len = 0;  // elements of a full block
  int64_t extent = 1, step = 1, inner = 1, per_outer = 1;
  int64_t start(int64_t b) const { return ((b / per_outer) * extent + (b % per_outer) * step) * inner; }
  int64_t len(int64_t b) const { return std::min(step, extent - (b % per_outer) * step) * inner; }
};
Runs block_runs(const Shape& shape, const Shape& block) {
  Runs r;
  const size_t nd = shape.size();
  size_t k = 0;
  while (k < nd && block[k] == 1) ++k;
  r.count = 1;
  for (size_t d = 0; d < nd; ++d) r.count *= (shape[d] + block[d] - 1) / block[d];
  if (k == nd) {  // one element per block
    r.contiguous = true;
    r.max_len = 1;
    r.extent = r.step = r.inner = r.per_outer = 1;
    return r;
  }
  for (size_t d = k + 1; d < nd; ++d) {
    if (block[d] != shape[d]) return r;
    r.inner *= shape[d];
  }
  r.contiguous = true;
  r.extent = shape[k];
  r.step = std::min(block[k], std::max<int64_t>(shape[k], 1));
  r.per_outer = (shape[k] + r.step - 1) / std::max<int64_t>(r.step, 1);
  r.max_len = r.step * r.inner;
  return r;
}
int64_t grain_for(int64_t len) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(len, 1)); }

// put(element, block) over every element: runs in parallel when the blocks are runs, else the
// strided indexer.
template <typename BI, typename F>
void for_each_element(const BI& bi, const Runs& runs, F&& put) {
  if (!runs.contiguous) return bi.for_each(put);
  detail::parallel_for(runs.count, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = runs.start(b), n = runs.len(b);
      for (int64_t e = o; e < o + n; ++e) put(e, b);
    }
  });
}

struct MinMax {
  float mn, mx;
};
// min and max of a run; NaN (both) when any element is NaN, as torch.aminmax.
MinMax run_minmax(const float* x, int64_t n) {
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
}

struct QParams {
  float scale, zero_point;  // zero_point before the integer cast
};
// torchao's scale / zero point of one block from its min and max, in float32.
QParams qparams_from_minmax(MinMax m, MappingType mapping, float fqmin, float fqmax, int64_t qmin, int64_t qmax,
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

void store_qparams(const QParams& p, int64_t b, float* sp, Tensor& zp) {
  sp[b] = p.scale;
  if (zp.dtype() == kFloat32)
    zp.data_ptr<float>()[b] = p.zero_point;
  else
    zp.data_ptr<int32_t>()[b] = to_int32(p.zero_point);
}

// Fake-quantizes a run sharing one (scale, zero point): y, and the straight-through mask (1 where
// the rounded code was inside [qmin, qmax]). Vectorized for the INT and NONE domains.
template <ZeroPointDomain D>
void fq_run(const float* __restrict x, int64_t n, float s, float z, float fqmin, float fqmax, float* __restrict y,
            uint8_t* __restrict m) {
  if constexpr (D == ZeroPointDomain::FLOAT) {
    const float min_val = z - s * std::floor((fqmax + fqmin + 1.0f) / 2.0f);
    for (int64_t i = 0; i < n; ++i) {
      const float u = rne((x[i] - min_val) / s);
      m[i] = u >= fqmin && u <= fqmax;
      y[i] = dequantize_one(clamp_f(u, fqmin, fqmax), s, z, fqmin, fqmax, D);
    }
  } else {
    const float inv = 1.0f / s;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      float q = std::nearbyint(x[i] * inv);
      if constexpr (D == ZeroPointDomain::INT) q = q + z;
      m[i] = static_cast<uint8_t>((q >= fqmin) & (q <= fqmax));  // no short-circuit: keeps the loop vectorizable
      float c = q < fqmin ? fqmin : q;                           // NaN stays NaN
      c = c > fqmax ? fqmax : c;
      y[i] = D == ZeroPointDomain::INT ? (c - z) * s : c * s;
    }
  }
}
void fq_run(ZeroPointDomain d, const float* x, int64_t n, float s, float z, float fqmin, float fqmax, float* y,
            uint8_t* m) {
  switch (d) {
    case ZeroPointDomain::INT: return fq_run<ZeroPointDomain::INT>(x, n, s, z, fqmin, fqmax, y, m);
    case ZeroPointDomain::FLOAT: return fq_run<ZeroPointDomain::FLOAT>(x, n, s, z, fqmin, fqmax, y, m);
    case ZeroPointDomain::NONE: return fq_run<ZeroPointDomain::NONE>(x, n, s, z, fqmin, fqmax, y, m);
  }
}

// Codes of a run for the INT / NONE domains (z = 0), vectorized: the float code is clamped, then
// converted as the CPU cast does (NaN -> INT32_MIN) and truncated to the 8-bit container.
template <typename T>
void q_run(const float* __restrict x, int64_t n, float s, float z, float fqmin, float fqmax, T* __restrict out) {
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
void ste_run(const float* __restrict g, const uint8_t* __restrict m, int64_t n, float s, float* __restrict out) {
  const float inv = 1.0f / s;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = (m[i] ? g[i] * s : 0.0f) * inv;
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
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t o = runs.start(b);
          ste_run(gp + o, mp + o, runs.len(b), sp[b], op + o);
        }
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

// ---- bfloat16: torchao computes in the tensors' own dtypes and torch rounds every bf16 op result
// (the op itself runs in float32); mixed bf16 x float32 operands promote to float32 (spec §0).
float rb(float v) { return static_cast<float>(BFloat16(v)); }
float rnd(float v, bool bf) { return bf ? rb(v) : v; }
bool is_bf(const Tensor& t) { return t.defined() && t.dtype() == kBFloat16; }
float fval(const Tensor& t, int64_t i) {
  return t.dtype() == kBFloat16 ? static_cast<float>(t.data_ptr<BFloat16>()[i]) : t.data_ptr<float>()[i];
}
void fset(Tensor& t, int64_t i, float v) {
  if (t.dtype() == kBFloat16)
    t.data_ptr<BFloat16>()[i] = BFloat16(v);
  else
    t.data_ptr<float>()[i] = v;
}
// qparams_from_minmax with the arithmetic in bfloat16 (x is bf16): each result rounded to bf16;
// torch.clamp(scale, min=eps) gives bf16(eps) below eps.
QParams qparams_bf16(MinMax m, MappingType mapping, float fqmin, float fqmax, int64_t qmin, int64_t qmax, float eps,
                     ZeroPointDomain domain) {
  const float min_neg = fmin_nan(m.mn, 0.0f), max_pos = fmax_nan(m.mx, 0.0f);
  float s, z;
  if (mapping == MappingType::SYMMETRIC || mapping == MappingType::SYMMETRIC_NO_CLIPPING_ERR) {
    if (mapping == MappingType::SYMMETRIC) {
      s = rb(fmax_nan(-min_neg, max_pos) / static_cast<float>(static_cast<double>(qmax - qmin) / 2.0));
    } else {
      const float smin = rb(min_neg / fqmin), smax = rb(max_pos / fqmax);
      s = smin > smax ? smin : smax;
    }
    z = static_cast<float>((qmax + qmin + 1) / 2);
    s = s < eps ? rb(eps) : s;
  } else {
    s = rb(rb(max_pos - min_neg) / static_cast<float>(qmax - qmin));
    s = s < eps ? rb(eps) : s;
    z = clamp_f(rb(fqmin - rne(rb(min_neg / s))), fqmin, fqmax);
  }
  if (domain == ZeroPointDomain::NONE) z = 0.0f;
  return {s, z};
}
// The INT / NONE quantization of one element with bf16 rounding where the operands are bf16:
// inv = 1/scale (scale's dtype), x * inv (promoted), round, + zero point (int: same dtype).
struct MixedFlags {
  bool xb, sb, zint;
};
float q_mixed(float x, float s, float z, MixedFlags f, ZeroPointDomain domain, float* unclamped) {
  const float inv = rnd(1.0f / s, f.sb);
  const bool pb = f.xb && f.sb;
  float r = rne(rnd(x * inv, pb));
  if (domain == ZeroPointDomain::INT) r = rnd(r + z, pb && f.zint);
  *unclamped = r;
  return r;
}
// dequantize to dtype ob (bf16 when ob_bf): (q.to(ob) - zp.to(ob)) * scale, then .to(ob)
float dq_mixed(float c, float s, float z, bool ob_bf, bool sb, ZeroPointDomain domain) {
  const float d = domain == ZeroPointDomain::INT ? rnd(rnd(c, ob_bf) - rnd(z, ob_bf), ob_bf) : rnd(c, ob_bf);
  return rnd(rnd(d * s, ob_bf && sb), ob_bf);
}
void check_no_float_domain_bf16(ZeroPointDomain domain, const char* op) {
  LOWBIT_CHECK(domain != ZeroPointDomain::FLOAT,
               "{}: the FLOAT zero-point domain is float32 only (bfloat16 operands given)", op);
}
}  // namespace

namespace {
// fake_quantize_affine with bfloat16 operands: output in x's dtype; the gradient follows torch's
// autograd through the same ops, rounding where they run in bf16.
Tensor fake_quantize_mixed(const Tensor& x, const BlockIndexer& bi, const Shape& block_size, const Tensor& scale,
                           const Tensor& zp, int64_t qmin, int64_t qmax, ZeroPointDomain domain) {
  check_no_float_domain_bf16(domain, "fake_quantize_affine");
  const MixedFlags f{is_bf(x), is_bf(scale), zp.defined() && zp.dtype() == kInt32};
  Tensor y = empty(x.shape(), x.dtype()), mask = empty(x.shape(), kUInt8);
  uint8_t* mp = mask.data_ptr<uint8_t>();
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  bi.for_each([&](int64_t e, int64_t b) {
    float u;
    const float sc = fval(scale, b), z = zp_at(zp, domain, b);
    const float c = clamp_f(q_mixed(fval(x, e), sc, z, f, domain, &u), fqmin, fqmax);
    mp[e] = u >= fqmin && u <= fqmax;
    fset(y, e, dq_mixed(c, sc, z, f.xb, f.sb, domain));
  });
  if (detail::any_requires_grad({&x})) {
    const Tensor s = scale.detach();
    const Shape bs = block_size;
    const bool int_domain = domain == ZeroPointDomain::INT;
    detail::record(y, "FakeQuantizeAffineBackward0", {x}, [mask, s, bs, f, int_domain](const Tensor& g) {
      Tensor gx = empty(g.shape(), f.xb ? kBFloat16 : kFloat32);
      BlockIndexer bi(g.shape(), bs, "fake_quantize_affine backward");
      const uint8_t* mp = mask.data_ptr<uint8_t>();
      const bool pb = f.xb && f.sb, cb = int_domain ? pb && f.zint : pb;
      bi.for_each([&](int64_t e, int64_t b) {
        const float sc = fval(s, b), inv = rnd(1.0f / sc, f.sb);
        const float gd = rnd(rnd(fval(g, e) * sc, f.xb && f.sb), f.xb);  // d((c - zp) * scale).to(x dtype)
        const float gc = mp[e] ? rnd(gd, cb) : 0.0f;                     // through .to(), clamp, + zp, round
        fset(gx, e, rnd(rnd(gc * inv, pb), f.xb));                       // x * inv
      });
      return std::vector<Tensor>{gx};
    });
  }
  return y;
}
}  // namespace

std::pair<Tensor, Tensor> choose_qparams_affine(const Tensor& x, MappingType mapping, const Shape& block_size,
                                                int64_t qmin, int64_t qmax, std::optional<double> eps_opt,
                                                ZeroPointDomain domain, DType zp_dtype,
                                                std::optional<DType> scale_dtype) {
  const char* op = "choose_qparams_affine";
  check_choose_args(x, mapping, qmin, qmax, domain, zp_dtype, op);
  const DType sd = scale_dtype.value_or(x.dtype());
  LOWBIT_CHECK(sd == kFloat32 || sd == kBFloat16, "{}: scale_dtype must be float32 or bfloat16, got {}", op,
               dtype_name(sd));
  BlockIndexer bi(x.shape(), block_size, op);
  const int64_t nb = detail::numel_of(bi.nblocks);
  const float eps = eps_value(eps_opt);
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  Tensor zp = empty(bi.nblocks, domain == ZeroPointDomain::FLOAT ? kFloat32 : zp_dtype);
  if (is_bf(x) || sd == kBFloat16) {  // computed in x's dtype, the scale cast to scale_dtype at the end
    if (is_bf(x)) check_no_float_domain_bf16(domain, op);
    std::vector<float> mn(nb, std::numeric_limits<float>::infinity()), mx(nb, -std::numeric_limits<float>::infinity());
    bi.for_each([&](int64_t e, int64_t b) {
      const float v = fval(x, e);
      mn[b] = fmin_nan(mn[b], v);
      mx[b] = fmax_nan(mx[b], v);
    });
    Tensor scale = empty(bi.nblocks, sd), s32 = empty(bi.nblocks, kFloat32);
    for (int64_t b = 0; b < nb; ++b) {
      const QParams p = is_bf(x) ? qparams_bf16({mn[b], mx[b]}, mapping, fqmin, fqmax, qmin, qmax, eps, domain)
                                 : qparams_from_minmax({mn[b], mx[b]}, mapping, fqmin, fqmax, qmin, qmax, eps, domain);
      store_qparams(p, b, s32.data_ptr<float>(), zp);
      fset(scale, b, p.scale);
    }
    return {scale, zp};
  }
  Tensor scale = empty(bi.nblocks, kFloat32);
  float* sp = scale.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  if (const Runs runs = block_runs(x.shape(), block_size); runs.contiguous) {
    detail::parallel_for(nb, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        store_qparams(qparams_from_minmax(run_minmax(xp + runs.start(b), runs.len(b)), mapping, fqmin, fqmax, qmin,
                                          qmax, eps, domain),
                      b, sp, zp);
    });
    return {scale, zp};
  }
  std::vector<float> mn(nb, std::numeric_limits<float>::infinity()), mx(nb, -std::numeric_limits<float>::infinity());
  bi.for_each([&](int64_t e, int64_t b) {
    mn[b] = fmin_nan(mn[b], xp[e]);
    mx[b] = fmax_nan(mx[b], xp[e]);
  });
  for (int64_t b = 0; b < nb; ++b)
    store_qparams(qparams_from_minmax({mn[b], mx[b]}, mapping, fqmin, fqmax, qmin, qmax, eps, domain), b, sp, zp);
  return {scale, zp};
}

Tensor quantize_affine(const Tensor& x, const Shape& block_size, const Tensor& scale, const Tensor& zp, DType out_dtype,
                       int64_t qmin, int64_t qmax, ZeroPointDomain domain) {
  const char* op = "quantize_affine";
  check_input(x, op);
  check_range(qmin, qmax, op);
  LOWBIT_CHECK(out_dtype == kInt8 || out_dtype == kUInt8 || out_dtype == kInt32,
               "{}: output dtype must be int8, uint8 or int32, got {}", op, dtype_name(out_dtype));
  const auto [lo, hi] = std::pair<int64_t, int64_t>{out_dtype == kInt8    ? -128
                                                    : out_dtype == kUInt8 ? 0
                                                                          : std::numeric_limits<int32_t>::min(),
                                                    out_dtype == kInt8    ? 127
                                                    : out_dtype == kUInt8 ? 255
                                                                          : std::numeric_limits<int32_t>::max()};
  LOWBIT_CHECK(qmin >= lo && qmax <= hi, "{}: range [{}, {}] does not fit the {} container", op, qmin, qmax,
               dtype_name(out_dtype));
  BlockIndexer bi(x.shape(), block_size, op);
  check_qparams(scale, zp, bi.nblocks, domain, op);
  Tensor q = empty(x.shape(), out_dtype);
  if (is_bf(x) || is_bf(scale)) {
    check_no_float_domain_bf16(domain, op);
    const MixedFlags f{is_bf(x), is_bf(scale), zp.defined() && zp.dtype() == kInt32};
    bi.for_each([&](int64_t e, int64_t b) {
      float u;
      const int32_t code = to_int32(clamp_f(q_mixed(fval(x, e), fval(scale, b), zp_at(zp, domain, b), f, domain, &u),
                                            static_cast<float>(qmin), static_cast<float>(qmax)));
      if (out_dtype == kInt8)
        q.data_ptr<int8_t>()[e] = static_cast<int8_t>(code & 0xff);
      else if (out_dtype == kUInt8)
        q.data_ptr<uint8_t>()[e] = static_cast<uint8_t>(code & 0xff);
      else
        q.data_ptr<int32_t>()[e] = code;
    });
    return q;
  }
  const float* xp = x.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  auto put = [&](int64_t e, int64_t b) {
    const int32_t code = to_int32(quantize_one(xp[e], sp[b], zp_at(zp, domain, b), fqmin, fqmax, domain));
    if (out_dtype == kInt8)
      q.data_ptr<int8_t>()[e] = static_cast<int8_t>(code & 0xff);  // truncation, as the CPU cast
    else if (out_dtype == kUInt8)
      q.data_ptr<uint8_t>()[e] = static_cast<uint8_t>(code & 0xff);
    else
      q.data_ptr<int32_t>()[e] = code;
  };
  const Runs runs = block_runs(x.shape(), block_size);
  if (runs.contiguous && domain != ZeroPointDomain::FLOAT && out_dtype != kInt32) {
    detail::parallel_for(runs.count, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const float z = zp_at(zp, domain, b);
        const int64_t o = runs.start(b), n = runs.len(b);
        if (out_dtype == kInt8)
          q_run(xp + o, n, sp[b], z, fqmin, fqmax, q.data_ptr<int8_t>() + o);
        else
          q_run(xp + o, n, sp[b], z, fqmin, fqmax, q.data_ptr<uint8_t>() + o);
      }
    });
  } else {
    for_each_element(bi, runs, put);
  }
  return q;
}

Tensor dequantize_affine(const Tensor& q, const Shape& block_size, const Tensor& scale, const Tensor& zp, int64_t qmin,
                         int64_t qmax, ZeroPointDomain domain, DType output_dtype) {
  const char* op = "dequantize_affine";
  LOWBIT_CHECK(q.defined() && (q.dtype() == kInt8 || q.dtype() == kUInt8 || q.dtype() == kInt32),
               "{}: codes must be int8, uint8 or int32, got {}", op, q.defined() ? detail::desc(q) : "undefined");
  check_range(qmin, qmax, op);
  BlockIndexer bi(q.shape(), block_size, op);
  check_qparams(scale, zp, bi.nblocks, domain, op);
  LOWBIT_CHECK(output_dtype == kFloat32 || output_dtype == kBFloat16,
               "{}: output dtype must be float32 or bfloat16, got {}", op, dtype_name(output_dtype));
  auto code_at = [&](int64_t e) -> float {
    if (q.dtype() == kInt8) return q.data_ptr<int8_t>()[e];
    if (q.dtype() == kUInt8) return q.data_ptr<uint8_t>()[e];
    return static_cast<float>(q.data_ptr<int32_t>()[e]);
  };
  if (output_dtype == kBFloat16 || is_bf(scale)) {
    check_no_float_domain_bf16(domain, op);
    Tensor y = empty(q.shape(), output_dtype);
    bi.for_each([&](int64_t e, int64_t b) {
      fset(y, e,
           dq_mixed(code_at(e), fval(scale, b), zp_at(zp, domain, b), output_dtype == kBFloat16, is_bf(scale), domain));
    });
    return y;
  }
  Tensor y = empty(q.shape(), kFloat32);
  float* yp = y.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  for_each_element(bi, block_runs(q.shape(), block_size), [&](int64_t e, int64_t b) {
    yp[e] = dequantize_one(code_at(e), sp[b], zp_at(zp, domain, b), static_cast<float>(qmin), static_cast<float>(qmax),
                           domain);
  });
  return y;
}

Tensor fake_quantize_affine(const Tensor& x, const Shape& block_size, const Tensor& scale, const Tensor& zp,
                            int64_t qmin, int64_t qmax, ZeroPointDomain domain) {
  const char* op = "fake_quantize_affine";
  check_input(x, op);
  check_range(qmin, qmax, op);
  BlockIndexer bi(x.shape(), block_size, op);
  check_qparams(scale, zp, bi.nblocks, domain, op);
  if (is_bf(x) || is_bf(scale)) return fake_quantize_mixed(x, bi, block_size, scale, zp, qmin, qmax, domain);
  Tensor y = empty(x.shape(), kFloat32), mask = empty(x.shape(), kUInt8);
  const float* xp = x.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  uint8_t* mp = mask.data_ptr<uint8_t>();
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  if (const Runs runs = block_runs(x.shape(), block_size); runs.contiguous) {
    detail::parallel_for(runs.count, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t o = runs.start(b);
        fq_run(domain, xp + o, runs.len(b), sp[b], zp_at(zp, domain, b), fqmin, fqmax, yp + o, mp + o);
      }
    });
  } else {
    bi.for_each([&](int64_t e, int64_t b) {
      fq_run(domain, xp + e, 1, sp[b], zp_at(zp, domain, b), fqmin, fqmax, yp + e, mp + e);
    });
  }
  record_fq_backward(y, x, mask, scale, block_size);
  return y;
}

Quantized quantize_affine_dynamic(const Tensor& x, MappingType mapping, const Shape& block_size, DType out_dtype,
                                  int64_t qmin, int64_t qmax, std::optional<double> eps_opt, DType zp_dtype) {
  const char* op = "quantize_affine_dynamic";
  check_choose_args(x, mapping, qmin, qmax, ZeroPointDomain::INT, zp_dtype, op);
  BlockIndexer bi(x.shape(), block_size, op);
  const Runs runs = block_runs(x.shape(), block_size);
  if (!runs.contiguous || runs.max_len > (int64_t{1} << 14) || x.dtype() != kFloat32 ||
      (out_dtype != kInt8 && out_dtype != kUInt8)) {
    Quantized r;
    std::tie(r.scale, r.zero_point) =
        choose_qparams_affine(x, mapping, block_size, qmin, qmax, eps_opt, ZeroPointDomain::INT, zp_dtype);
    r.q = quantize_affine(x, block_size, r.scale, r.zero_point, out_dtype, qmin, qmax);
    return r;
  }
  LOWBIT_CHECK(qmin >= (out_dtype == kInt8 ? -128 : 0) && qmax <= (out_dtype == kInt8 ? 127 : 255),
               "{}: range [{}, {}] does not fit the {} container", op, qmin, qmax, dtype_name(out_dtype));
  const float eps = eps_value(eps_opt);
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  Quantized r{empty(x.shape(), out_dtype), empty(bi.nblocks, kFloat32), empty(bi.nblocks, zp_dtype)};
  const float* xp = x.data_ptr<float>();
  float* sp = r.scale.data_ptr<float>();
  detail::parallel_for(runs.count, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = runs.start(b), len = runs.len(b);
      store_qparams(
          qparams_from_minmax(run_minmax(xp + o, len), mapping, fqmin, fqmax, qmin, qmax, eps, ZeroPointDomain::INT), b,
          sp, r.zero_point);
      const float z = zp_at(r.zero_point, ZeroPointDomain::INT, b);
      if (out_dtype == kInt8)
        q_run(xp + o, len, sp[b], z, fqmin, fqmax, r.q.data_ptr<int8_t>() + o);
      else
        q_run(xp + o, len, sp[b], z, fqmin, fqmax, r.q.data_ptr<uint8_t>() + o);
    }
  });
  return r;
}

FakeQuantized fake_quantize_affine_dynamic(const Tensor& x, MappingType mapping, const Shape& block_size, int64_t qmin,
                                           int64_t qmax, std::optional<double> eps_opt, ZeroPointDomain domain,
                                           DType zp_dtype, std::optional<DType> scale_dtype) {
  const char* op = "fake_quantize_affine_dynamic";
  check_choose_args(x, mapping, qmin, qmax, domain, zp_dtype, op);
  BlockIndexer bi(x.shape(), block_size, op);
  const Runs runs = block_runs(x.shape(), block_size);
  const bool all_f32 = x.dtype() == kFloat32 && scale_dtype.value_or(kFloat32) == kFloat32;
  if (!runs.contiguous || runs.max_len > (int64_t{1} << 14) || !all_f32) {  // strided or long blocks, or bf16
    FakeQuantized r;
    {
      NoGradGuard ng;
      std::tie(r.scale, r.zero_point) =
          choose_qparams_affine(x.detach(), mapping, block_size, qmin, qmax, eps_opt, domain, zp_dtype, scale_dtype);
    }
    r.y = fake_quantize_affine(x, block_size, r.scale, r.zero_point, qmin, qmax, domain);
    return r;
  }
  // one pass per block: the run stays in L1 between its min/max and its rounding
  const int64_t nb = detail::numel_of(bi.nblocks);
  const float eps = eps_value(eps_opt);
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  FakeQuantized r{empty(x.shape(), kFloat32), empty(bi.nblocks, kFloat32),
                  empty(bi.nblocks, domain == ZeroPointDomain::FLOAT ? kFloat32 : zp_dtype)};
  Tensor mask = empty(x.shape(), kUInt8);
  const float* xp = x.data_ptr<float>();
  float* yp = r.y.data_ptr<float>();
  float* sp = r.scale.data_ptr<float>();
  uint8_t* mp = mask.data_ptr<uint8_t>();
  detail::parallel_for(nb, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = runs.start(b), len = runs.len(b);
      store_qparams(qparams_from_minmax(run_minmax(xp + o, len), mapping, fqmin, fqmax, qmin, qmax, eps, domain), b, sp,
                    r.zero_point);
      fq_run(domain, xp + o, len, sp[b], zp_at(r.zero_point, domain, b), fqmin, fqmax, yp + o, mp + o);
    }
  });
  record_fq_backward(r.y, x, mask, r.scale, block_size);
  return r;
}

Tensor fake_quantize_affine_learnable(const Tensor& x, const Shape& block_size, const Tensor& scale, const Tensor& zp,
                                      int64_t qmin, int64_t qmax) {
  const char* op = "fake_quantize_affine_learnable";
  check_input(x, op);
  check_range(qmin, qmax, op);
  BlockIndexer bi(x.shape(), block_size, op);
  LOWBIT_CHECK(zp.defined() && zp.dtype() == kFloat32, "{}: zero_point must be float32, got {}", op,
               zp.defined() ? detail::desc(zp) : "undefined");
  check_qparams(scale, zp, bi.nblocks, ZeroPointDomain::INT, op);
  Tensor y = empty(x.shape(), kFloat32), code = empty(x.shape(), kFloat32);
  const float* xp = x.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  const float* zpp = zp.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  float* cp = code.data_ptr<float>();  // the clamped code c (for the scale gradient)
  Tensor mask = empty(x.shape(), kUInt8);
  uint8_t* mp = mask.data_ptr<uint8_t>();
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  bi.for_each([&](int64_t e, int64_t b) {
    const float t = rne(xp[e] * (1.0f / sp[b])) + zpp[b];
    mp[e] = t >= fqmin && t <= fqmax;
    cp[e] = clamp_f(t, fqmin, fqmax);
    yp[e] = (cp[e] - zpp[b]) * sp[b];
  });
  if (detail::any_requires_grad({&x, &scale, &zp})) {
    const Tensor xs = x.detach(), s = scale.detach(), z = zp.detach();
    const Shape bs = block_size;
    detail::record(
        y, "FakeQuantizeAffineLearnableBackward0", {x, scale, zp}, [xs, s, z, code, mask, bs](const Tensor& g_in) {
          const Tensor g = g_in.to(kFloat32);
          BlockIndexer bi(g.shape(), bs, "fake_quantize_affine_learnable backward");
          const int64_t nb = s.numel();
          Tensor gx = empty(g.shape(), kFloat32), gs = empty(s.shape(), kFloat32), gz = empty(z.shape(), kFloat32);
          std::vector<double> direct(nb, 0.0), through_inv(nb, 0.0), plus(nb, 0.0), minus(nb, 0.0);
          const float* gp = g.data_ptr<float>();
          const float* xv = xs.data_ptr<float>();
          const float* sv = s.data_ptr<float>();
          const float* zv = z.data_ptr<float>();
          const float* cv = code.data_ptr<float>();
          const uint8_t* mv = mask.data_ptr<uint8_t>();
          float* gxp = gx.data_ptr<float>();
          bi.for_each([&](int64_t e, int64_t b) {
            const float gsc = gp[e] * sv[b];                            // dL/dc = g * scale
            const float gt = mv[e] ? gsc : 0.0f;                        // through the clamp
            gxp[e] = gt * (1.0f / sv[b]);                               // dL/dx (round: identity)
            direct[b] += static_cast<double>(gp[e]) * (cv[e] - zv[b]);  // (c - zp) * scale
            through_inv[b] += static_cast<double>(gt) * xv[e];          // x * inv, inv = 1/scale
            plus[b] += gt;                                              // + zp
            minus[b] += gsc;                                            // - zp
          });
          for (int64_t b = 0; b < nb; ++b) {
            const double inv = 1.0 / static_cast<double>(sv[b]);
            gs.data_ptr<float>()[b] = static_cast<float>(direct[b] - through_inv[b] * inv * inv);
            gz.data_ptr<float>()[b] = static_cast<float>(plus[b] - minus[b]);
          }
          return std::vector<Tensor>{gx, gs, gz};
        });
  }
  return y;
}

}  // namespace lowbit::qat
