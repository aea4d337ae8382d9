#include "lowbit/qat/affine.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"

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
  if (d == "int16") return {-32768, 32767};
  if (d == "int32") return {std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()};
  auto bits = [&](size_t prefix) -> int {
    const std::string n = d.substr(prefix);
    if (n.size() == 1 && n[0] >= '1' && n[0] <= '8') return n[0] - '0';
    return 0;
  };
  if (d.rfind("uint", 0) == 0 && bits(4)) return {0, (int64_t{1} << bits(4)) - 1};
  if (d.rfind("int", 0) == 0 && bits(3)) return {-(int64_t{1} << (bits(3) - 1)), (int64_t{1} << (bits(3) - 1)) - 1};
  throw Error(fmt::format("quant_range: unknown target dtype '{}' (int1..int8, uint1..uint8, int16, int32)", d));
}

Shape blocks_shape(const Shape& shape, const Shape& block, const char* op) {
  LOWBIT_CHECK(block.size() == shape.size(), "{}: block_size {} must have the rank of the input {}", op, shape_str(block), shape_str(shape));
  Shape out(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    LOWBIT_CHECK(block[i] >= 1 && shape[i] % block[i] == 0, "{}: block_size {} does not divide input shape {} at dim {}", op, shape_str(block),
                 shape_str(shape), i);
    out[i] = shape[i] / block[i];
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
float fmin_nan(float a, float b) { return (a != a || b != b) ? std::numeric_limits<float>::quiet_NaN() : (a < b ? a : b); }
float fmax_nan(float a, float b) { return (a != a || b != b) ? std::numeric_limits<float>::quiet_NaN() : (a > b ? a : b); }
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
  LOWBIT_CHECK(x.defined() && x.dtype() == kFloat32, "{}: input must be float32, got {}", op, x.defined() ? detail::desc(x) : "undefined");
}
void check_range(int64_t qmin, int64_t qmax, const char* op) {
  LOWBIT_CHECK(qmin < qmax, "{}: quant_min ({}) must be below quant_max ({})", op, qmin, qmax);
}
void check_qparams(const Tensor& scale, const Tensor& zp, const Shape& nblocks, ZeroPointDomain domain, const char* op) {
  LOWBIT_CHECK(scale.defined() && scale.dtype() == kFloat32 && scale.numel() == detail::numel_of(nblocks),
               "{}: scale must be float32 with one value per block ({} blocks of shape {}), got {}", op, detail::numel_of(nblocks), shape_str(nblocks),
               scale.defined() ? detail::desc(scale) : "undefined");
  if (domain == ZeroPointDomain::NONE) return;
  const bool ok_dtype = zp.defined() && (zp.dtype() == kFloat32 || (domain == ZeroPointDomain::INT && zp.dtype() == kInt32));
  LOWBIT_CHECK(ok_dtype && zp.numel() == scale.numel(), "{}: zero_point must be {} with {} values for domain {}, got {}", op,
               domain == ZeroPointDomain::INT ? "int32 or float32" : "float32", scale.numel(), to_string(domain), zp.defined() ? detail::desc(zp) : "undefined");
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

std::pair<Tensor, Tensor> choose_qparams_affine(const Tensor& x, MappingType mapping, const Shape& block_size, int64_t qmin, int64_t qmax,
                                                std::optional<double> eps_opt, ZeroPointDomain domain, DType zp_dtype) {
  const char* op = "choose_qparams_affine";
  check_input(x, op);
  check_range(qmin, qmax, op);
  LOWBIT_CHECK(domain != ZeroPointDomain::FLOAT || mapping == MappingType::ASYMMETRIC,
               "{}: the FLOAT zero-point domain (tinygemm) is asymmetric only, got {}", op, to_string(mapping));
  BlockIndexer bi(x.shape(), block_size, op);
  const int64_t nb = detail::numel_of(bi.nblocks);
  std::vector<float> mn(nb, std::numeric_limits<float>::infinity()), mx(nb, -std::numeric_limits<float>::infinity());
  const float* xp = x.data_ptr<float>();
  bi.for_each([&](int64_t e, int64_t b) {
    mn[b] = fmin_nan(mn[b], xp[e]);
    mx[b] = fmax_nan(mx[b], xp[e]);
  });
  const float eps = static_cast<float>(eps_opt ? *eps_opt : static_cast<double>(std::numeric_limits<float>::min()));
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  Tensor scale = empty(bi.nblocks, kFloat32);
  LOWBIT_CHECK(zp_dtype == kInt32 || zp_dtype == kFloat32, "{}: zero_point_dtype must be int32 or float32, got {}", op, dtype_name(zp_dtype));
  if (domain == ZeroPointDomain::FLOAT) zp_dtype = kFloat32;
  Tensor zp = empty(bi.nblocks, zp_dtype);
  float* sp = scale.data_ptr<float>();
  for (int64_t b = 0; b < nb; ++b) {
    float s, z;
    if (domain == ZeroPointDomain::FLOAT) {  // tinygemm: raw min/max, zp = min + scale * mid
      s = fmax_nan((mx[b] - mn[b]) / static_cast<float>(qmax - qmin), eps);
      s = s != s ? s : std::max(s, eps);
      z = mn[b] + s * static_cast<float>((qmax + qmin + 1) / 2);
      sp[b] = s;
      zp.data_ptr<float>()[b] = z;
      continue;
    }
    const float min_neg = fmin_nan(mn[b], 0.0f), max_pos = fmax_nan(mx[b], 0.0f);
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
    sp[b] = s;
    if (domain == ZeroPointDomain::NONE) z = 0.0f;
    if (zp_dtype == kFloat32) zp.data_ptr<float>()[b] = z;
    else zp.data_ptr<int32_t>()[b] = to_int32(z);
  }
  return {scale, zp};
}

Tensor quantize_affine(const Tensor& x, const Shape& block_size, const Tensor& scale, const Tensor& zp, DType out_dtype, int64_t qmin,
                       int64_t qmax, ZeroPointDomain domain) {
  const char* op = "quantize_affine";
  check_input(x, op);
  check_range(qmin, qmax, op);
  LOWBIT_CHECK(out_dtype == kInt8 || out_dtype == kUInt8 || out_dtype == kInt32, "{}: output dtype must be int8, uint8 or int32, got {}", op,
               dtype_name(out_dtype));
  const auto [lo, hi] = std::pair<int64_t, int64_t>{out_dtype == kInt8 ? -128 : out_dtype == kUInt8 ? 0 : std::numeric_limits<int32_t>::min(),
                                                     out_dtype == kInt8 ? 127 : out_dtype == kUInt8 ? 255 : std::numeric_limits<int32_t>::max()};
  LOWBIT_CHECK(qmin >= lo && qmax <= hi, "{}: range [{}, {}] does not fit the {} container", op, qmin, qmax, dtype_name(out_dtype));
  BlockIndexer bi(x.shape(), block_size, op);
  check_qparams(scale, zp, bi.nblocks, domain, op);
  Tensor q = empty(x.shape(), out_dtype);
  const float* xp = x.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  bi.for_each([&](int64_t e, int64_t b) {
    const int32_t code = to_int32(quantize_one(xp[e], sp[b], zp_at(zp, domain, b), fqmin, fqmax, domain));
    if (out_dtype == kInt8) q.data_ptr<int8_t>()[e] = static_cast<int8_t>(code & 0xff);  // truncation, as the CPU cast
    else if (out_dtype == kUInt8) q.data_ptr<uint8_t>()[e] = static_cast<uint8_t>(code & 0xff);
    else q.data_ptr<int32_t>()[e] = code;
  });
  return q;
}

Tensor dequantize_affine(const Tensor& q, const Shape& block_size, const Tensor& scale, const Tensor& zp, int64_t qmin, int64_t qmax,
                         ZeroPointDomain domain) {
  const char* op = "dequantize_affine";
  LOWBIT_CHECK(q.defined() && (q.dtype() == kInt8 || q.dtype() == kUInt8 || q.dtype() == kInt32), "{}: codes must be int8, uint8 or int32, got {}", op,
               q.defined() ? detail::desc(q) : "undefined");
  check_range(qmin, qmax, op);
  BlockIndexer bi(q.shape(), block_size, op);
  check_qparams(scale, zp, bi.nblocks, domain, op);
  Tensor y = empty(q.shape(), kFloat32);
  float* yp = y.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  bi.for_each([&](int64_t e, int64_t b) {
    float code = 0;
    if (q.dtype() == kInt8) code = q.data_ptr<int8_t>()[e];
    else if (q.dtype() == kUInt8) code = q.data_ptr<uint8_t>()[e];
    else code = static_cast<float>(q.data_ptr<int32_t>()[e]);
    yp[e] = dequantize_one(code, sp[b], zp_at(zp, domain, b), static_cast<float>(qmin), static_cast<float>(qmax), domain);
  });
  return y;
}

Tensor fake_quantize_affine(const Tensor& x, const Shape& block_size, const Tensor& scale, const Tensor& zp, int64_t qmin, int64_t qmax,
                            ZeroPointDomain domain) {
  const char* op = "fake_quantize_affine";
  check_input(x, op);
  check_range(qmin, qmax, op);
  BlockIndexer bi(x.shape(), block_size, op);
  check_qparams(scale, zp, bi.nblocks, domain, op);
  Tensor y = empty(x.shape(), kFloat32), mask = empty(x.shape(), kFloat32);
  const float* xp = x.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  float* mp = mask.data_ptr<float>();
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  bi.for_each([&](int64_t e, int64_t b) {
    const float z = zp_at(zp, domain, b);
    const float qf = quantize_one(xp[e], sp[b], z, fqmin, fqmax, domain);
    yp[e] = dequantize_one(qf, sp[b], z, fqmin, fqmax, domain);
    // straight-through where the rounded code was inside [qmin, qmax] (torch.clamp's gradient)
    float unclamped;
    if (domain == ZeroPointDomain::FLOAT) {
      const float min_val = z - sp[b] * std::floor((fqmax + fqmin + 1.0f) / 2.0f);
      unclamped = rne((xp[e] - min_val) / sp[b]);
    } else {
      unclamped = rne(xp[e] * (1.0f / sp[b])) + (domain == ZeroPointDomain::INT ? z : 0.0f);
    }
    mp[e] = (unclamped >= fqmin && unclamped <= fqmax) ? 1.0f : 0.0f;
  });
  if (detail::any_requires_grad({&x})) {
    // autograd through torchao's ops gives where(mask, g * scale, 0) * (1 / scale) in float32
    // (clamp's backward selects, then the x * (1/scale) backward multiplies), which is not
    // always g and is NaN for every element of a block whose scale is NaN or inf: reproduce it
    const Tensor s = scale.detach();
    const Shape bs = block_size;
    detail::record(y, "FakeQuantizeAffineBackward0", {x}, [mask, s, bs](const Tensor& g_in) {
      const Tensor g = g_in.to(kFloat32);
      Tensor gx = empty(g.shape(), kFloat32);
      BlockIndexer bi(g.shape(), bs, "fake_quantize_affine backward");
      const float* gp = g.data_ptr<float>();
      const float* mp = mask.data_ptr<float>();
      const float* sp = s.data_ptr<float>();
      float* op = gx.data_ptr<float>();
      bi.for_each([&](int64_t e, int64_t b) { op[e] = (mp[e] != 0.0f ? gp[e] * sp[b] : 0.0f) * (1.0f / sp[b]); });
      return std::vector<Tensor>{gx};
    });
  }
  return y;
}

}  // namespace lowbit::qat
