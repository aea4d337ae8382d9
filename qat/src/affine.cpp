// torchao's affine quantization primitives (public ops): choose_qparams, quantize,
// dequantize, fake quantize (static, dynamic, learnable). Blocks come from core/blocks.h; the
// run kernels and checks are in affine_runs.cpp, the bfloat16 path in affine_bf16.cpp.
#include "lowbit/qat/affine.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "affine_internal.h"
#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/core/format.h"

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
  return core::blocks_shape(shape, block, op);
}

using namespace affine_detail;

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
    Tensor scale = empty(bi.nblocks, sd);
    const ZpOut zo = zp_out(zp);
    for (int64_t b = 0; b < nb; ++b) {
      const QParams p = is_bf(x) ? qparams_bf16({mn[b], mx[b]}, mapping, fqmin, fqmax, qmin, qmax, eps, domain)
                                 : qparams_from_minmax({mn[b], mx[b]}, mapping, fqmin, fqmax, qmin, qmax, eps, domain);
      zo.put(b, p.zero_point, domain);
      fset(scale, b, p.scale);
    }
    return {scale, zp};
  }
  Tensor scale = empty(bi.nblocks, kFloat32);
  float* sp = scale.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  if (const Runs runs = block_runs(x.shape(), block_size); runs.contiguous) {
    const ZpOut zo = zp_out(zp);
    detail::parallel_for(nb, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
      runs.for_each_run(b0, b1, [&](int64_t b, int64_t o, int64_t n) {
        const QParams p = qparams_from_minmax(run_minmax(xp + o, n), mapping, fqmin, fqmax, qmin, qmax, eps, domain);
        sp[b] = p.scale;
        zo.put(b, p.zero_point, domain);
      });
    });
    return {scale, zp};
  }
  std::vector<float> mn(nb, std::numeric_limits<float>::infinity()), mx(nb, -std::numeric_limits<float>::infinity());
  bi.for_each([&](int64_t e, int64_t b) {
    mn[b] = fmin_nan(mn[b], xp[e]);
    mx[b] = fmax_nan(mx[b], xp[e]);
  });
  const ZpOut zo = zp_out(zp);
  for (int64_t b = 0; b < nb; ++b) {
    const QParams p = qparams_from_minmax({mn[b], mx[b]}, mapping, fqmin, fqmax, qmin, qmax, eps, domain);
    sp[b] = p.scale;
    zo.put(b, p.zero_point, domain);
  }
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
  const ZpView zv = zp_view(zp, domain);
  Tensor q = empty(x.shape(), out_dtype);
  if (is_bf(x) || is_bf(scale)) {
    check_no_float_domain_bf16(domain, op);
    const MixedFlags f{is_bf(x), is_bf(scale), zp.defined() && zp.dtype() == kInt32};
    bi.for_each([&](int64_t e, int64_t b) {
      float u;
      const int32_t code = to_int32(clamp_f(q_mixed(fval(x, e), fval(scale, b), zv.at(b), f, domain, &u),
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
    const int32_t code = to_int32(quantize_one(xp[e], sp[b], zv.at(b), fqmin, fqmax, domain));
    if (out_dtype == kInt8)
      q.data_ptr<int8_t>()[e] = static_cast<int8_t>(code & 0xff);  // truncation, as the CPU cast
    else if (out_dtype == kUInt8)
      q.data_ptr<uint8_t>()[e] = static_cast<uint8_t>(code & 0xff);
    else
      q.data_ptr<int32_t>()[e] = code;
  };
  const Runs runs = block_runs(x.shape(), block_size);
  if (runs.contiguous && domain != ZeroPointDomain::FLOAT && out_dtype != kInt32) {
    int8_t* q8 = out_dtype == kInt8 ? q.data_ptr<int8_t>() : nullptr;
    uint8_t* qu = out_dtype == kUInt8 ? q.data_ptr<uint8_t>() : nullptr;
    detail::parallel_for(runs.count, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
      runs.for_each_run(b0, b1, [&](int64_t b, int64_t o, int64_t n) {
        if (q8)
          q_run(xp + o, n, sp[b], zv.at(b), fqmin, fqmax, q8 + o);
        else
          q_run(xp + o, n, sp[b], zv.at(b), fqmin, fqmax, qu + o);
      });
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
  const ZpView zv = zp_view(zp, domain);
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
      fset(y, e, dq_mixed(code_at(e), fval(scale, b), zv.at(b), output_dtype == kBFloat16, is_bf(scale), domain));
    });
    return y;
  }
  Tensor y = empty(q.shape(), kFloat32);
  float* yp = y.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  for_each_element(bi, block_runs(q.shape(), block_size), [&](int64_t e, int64_t b) {
    yp[e] = dequantize_one(code_at(e), sp[b], zv.at(b), static_cast<float>(qmin), static_cast<float>(qmax), domain);
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
  const ZpView zv = zp_view(zp, domain);
  Tensor y = empty(x.shape(), kFloat32), mask = empty(x.shape(), kUInt8);
  const float* xp = x.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  uint8_t* mp = mask.data_ptr<uint8_t>();
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  if (const Runs runs = block_runs(x.shape(), block_size); runs.contiguous) {
    detail::parallel_for(runs.count, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
      runs.for_each_run(b0, b1, [&](int64_t b, int64_t o, int64_t n) {
        fq_run(domain, xp + o, n, sp[b], zv.at(b), fqmin, fqmax, yp + o, mp + o);
      });
    });
  } else {
    bi.for_each(
        [&](int64_t e, int64_t b) { fq_run(domain, xp + e, 1, sp[b], zv.at(b), fqmin, fqmax, yp + e, mp + e); });
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
  const ZpOut zo = zp_out(r.zero_point);
  int8_t* q8 = out_dtype == kInt8 ? r.q.data_ptr<int8_t>() : nullptr;
  uint8_t* qu = out_dtype == kUInt8 ? r.q.data_ptr<uint8_t>() : nullptr;
  detail::parallel_for(runs.count, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
    runs.for_each_run(b0, b1, [&](int64_t b, int64_t o, int64_t len) {
      const QParams p =
          qparams_from_minmax(run_minmax(xp + o, len), mapping, fqmin, fqmax, qmin, qmax, eps, ZeroPointDomain::INT);
      sp[b] = p.scale;
      const float z = zo.put(b, p.zero_point, ZeroPointDomain::INT);
      if (q8)
        q_run(xp + o, len, sp[b], z, fqmin, fqmax, q8 + o);
      else
        q_run(xp + o, len, sp[b], z, fqmin, fqmax, qu + o);
    });
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
  const ZpOut zo = zp_out(r.zero_point);
  // the domain chosen once: the run kernel inlines into the loop over blocks
  auto pass = [&](auto dom) {
    constexpr ZeroPointDomain D = decltype(dom)::value;
    detail::parallel_for(nb, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
      runs.for_each_run(b0, b1, [&](int64_t b, int64_t o, int64_t len) {
        const QParams p = qparams_from_minmax(run_minmax(xp + o, len), mapping, fqmin, fqmax, qmin, qmax, eps, D);
        sp[b] = p.scale;
        const float z = zo.put(b, p.zero_point, D);
        fq_run<D>(xp + o, len, p.scale, z, fqmin, fqmax, yp + o, mp + o);
      });
    });
  };
  switch (domain) {
    case ZeroPointDomain::INT: pass(std::integral_constant<ZeroPointDomain, ZeroPointDomain::INT>{}); break;
    case ZeroPointDomain::FLOAT: pass(std::integral_constant<ZeroPointDomain, ZeroPointDomain::FLOAT>{}); break;
    case ZeroPointDomain::NONE: pass(std::integral_constant<ZeroPointDomain, ZeroPointDomain::NONE>{}); break;
  }
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
