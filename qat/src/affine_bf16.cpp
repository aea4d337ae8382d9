// The bfloat16 path of the affine primitives: torchao computes in the tensors' own dtypes and
// torch rounds every bf16 op result (see affine_internal.h).
#include "affine_internal.h"

namespace lowbit::qat::affine_detail {

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

// fake_quantize_affine with bfloat16 operands: output in x's dtype; the gradient follows torch's
// autograd through the same ops, rounding where they run in bf16.
Tensor fake_quantize_mixed(const Tensor& x, const BlockIndexer& bi, const Shape& block_size, const Tensor& scale,
                           const Tensor& zp, int64_t qmin, int64_t qmax, ZeroPointDomain domain) {
  check_no_float_domain_bf16(domain, "fake_quantize_affine");
  const MixedFlags f{is_bf(x), is_bf(scale), zp.defined() && zp.dtype() == kInt32};
  Tensor y = empty(x.shape(), x.dtype()), mask = empty(x.shape(), kUInt8);
  uint8_t* mp = mask.data_ptr<uint8_t>();
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  const ZpView zv = zp_view(zp, domain);
  bi.for_each([&](int64_t e, int64_t b) {
    float u;
    const float sc = fval(scale, b), z = zv.at(b);
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

}  // namespace lowbit::qat::affine_detail
