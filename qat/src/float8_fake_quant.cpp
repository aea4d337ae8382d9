// Float8FakeQuantizeConfig (spec §2.2, §9 items 1-2): torchao's float8 fake quantization for QAT,
// its measured backward (TorchaoParity) and lowbit's straight-through alternative.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/minifloat.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/core/blocks.h"
#include "lowbit/qat/fake_quantizer.h"

namespace lowbit::qat {

namespace {
// Python's repr of a float: "1e-12", "1.0", "64.0"
std::string py_float(double v) {
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}
std::string py_opt(const std::optional<double>& v) { return v ? py_float(*v) : "None"; }
float round_to(float v, bool bf16) { return bf16 ? static_cast<float>(BFloat16(v)) : v; }

// Per block of `len` values: the amax, whether the hp bounds clamped it, whether the zero guard
// applies, and the float32 scale = clamp(amax) / fp8max computed in the input's dtype.
struct BlockScales {
  Tensor amax, scale;
  std::vector<uint8_t> clamped, guarded;
};
BlockScales block_scales(const Float8FakeQuantizeConfig& c, const float* xp, int64_t blocks, int64_t len, bool bf) {
  const float fmax = static_cast<float>(minifloat_spec(c.dtype)->max_finite);
  BlockScales r{empty({blocks}, kFloat32), empty({blocks}, kFloat32), std::vector<uint8_t>(static_cast<size_t>(blocks)),
                std::vector<uint8_t>(static_cast<size_t>(blocks))};
  float* ap = r.amax.data_ptr<float>();
  float* sp = r.scale.data_ptr<float>();
  // each block's amax as the largest |x| bits (a NaN's bits exceed inf's: nan_max_abs's NaN),
  // vectorized, blocks over the threads -- one block (per tensor) split over them
  if (blocks == 1) {
    const uint32_t bits = core::amax_bits_threaded(xp, len);
    std::memcpy(ap, &bits, 4);
  } else {
    detail::parallel_for(blocks, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(len, 1)),
                         [&](int64_t b0, int64_t b1) {
                           for (int64_t b = b0; b < b1; ++b) {
                             const uint32_t a = core::amax_bits_of_run(xp + b * len, len);
                             std::memcpy(ap + b, &a, 4);
                           }
                         });
  }
  for (int64_t b = 0; b < blocks; ++b) {
    const float m = ap[b];
    float cl = m;  // torch.clamp: NaN stays NaN; bounds in the input's dtype
    if (c.hp_value_lb && cl == cl) cl = std::max(cl, round_to(static_cast<float>(*c.hp_value_lb), bf));
    if (c.hp_value_ub && cl == cl) cl = std::min(cl, round_to(static_cast<float>(*c.hp_value_ub), bf));
    r.clamped[static_cast<size_t>(b)] = cl != m;
    sp[b] = round_to(cl / fmax, bf);  // amax / fp8max in the input's dtype, then float32
    r.guarded[static_cast<size_t>(b)] = c.guard_zero_blocks && cl == 0.0f;
  }
  return r;
}
// the block length of a config's granularity for a tensor
int64_t block_len(const Float8FakeQuantizeConfig& c, const Tensor& x) {
  return std::holds_alternative<PerTensor>(c.granularity) ? x.numel() : (x.dim() ? x.size(-1) : 1);
}
// the per-block scales as torchao shapes them: (1, 1) per tensor, the input's shape with a last
// dim of 1 per row
Tensor shaped_scale(const Float8FakeQuantizeConfig& c, const Tensor& scale, Shape shape) {
  if (std::holds_alternative<PerTensor>(c.granularity)) return scale.reshape({1, 1});
  if (!shape.empty()) shape.back() = 1;
  return scale.reshape(shape);
}
}  // namespace

Float8FakeQuantizeConfig::Quantized Float8FakeQuantizeConfig::quantize(const Tensor& x_in) const {
  LOWBIT_CHECK(x_in.defined() && (x_in.dtype() == kFloat32 || x_in.dtype() == kBFloat16),
               "{}: quantize needs a float32 or bfloat16 input, got {}", to_string(),
               x_in.defined() ? detail::desc(x_in) : "undefined");
  const bool bf = x_in.dtype() == kBFloat16;
  const Tensor x32 = bf ? x_in.detach().to(kFloat32) : x_in.detach();
  const int64_t len = block_len(*this, x32), blocks = len ? x32.numel() / len : 0;
  const float* xp = x32.data_ptr<float>();
  const BlockScales bs = block_scales(*this, xp, blocks, len, bf);
  const MinifloatSpec& spec = *minifloat_spec(dtype);
  const float fmax = static_cast<float>(spec.max_finite);
  Quantized q{empty(x32.shape(), dtype), bs.scale};
  uint8_t* cp = static_cast<uint8_t*>(q.codes.raw_data());
  const float* sp = bs.scale.data_ptr<float>();
  detail::parallel_for(blocks, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(len, 1)),
                       [&](int64_t b0, int64_t b1) {
                         for (int64_t b = b0; b < b1; ++b)
                           for (int64_t i = b * len; i < (b + 1) * len; ++i) {
                             const float t = bs.guarded[static_cast<size_t>(b)] ? 0.0f : xp[i] / sp[b];
                             const float c = t != t ? t : std::min(std::max(t, -fmax), fmax);
                             cp[i] = static_cast<uint8_t>(minifloat_encode(spec, c, /*saturate=*/true));
                           }
                       });
  q.scale = shaped_scale(*this, q.scale, x32.shape());
  return q;
}

Float8FakeQuantizeConfig::Float8FakeQuantizeConfig(DType d, Granularity g, std::optional<double> lb,
                                                   std::optional<double> ub)
    : dtype(d), granularity(g), hp_value_lb(lb), hp_value_ub(ub) {
  validate();
}

std::string Float8FakeQuantizeConfig::to_string() const {
  std::string s = fmt::format("Float8FakeQuantizeConfig(dtype=torch.{}, granularity={}, hp_value_lb={}, hp_value_ub={}",
                              dtype_name(dtype), qat::to_string(granularity), py_opt(hp_value_lb), py_opt(hp_value_ub));
  if (backward == Backward::TorchaoParity) s += ", backward=torchao_parity";
  if (guard_zero_blocks) s += ", guard_zero_blocks=True";
  return s + ")";
}

void Float8FakeQuantizeConfig::validate() const {
  LOWBIT_CHECK(dtype == kFloat8_e4m3fn || dtype == kFloat8_e5m2,
               "Float8FakeQuantizeConfig: dtype must be float8_e4m3fn or float8_e5m2, got {}", dtype_name(dtype));
  const auto* row = std::get_if<PerRow>(&granularity);
  LOWBIT_CHECK(std::holds_alternative<PerTensor>(granularity) || (row && row->dim == -1),
               "Float8FakeQuantizeConfig: granularity must be PerRow(dim=-1) or PerTensor(), got {}",
               qat::to_string(granularity));
  for (const auto& b : {hp_value_lb, hp_value_ub})
    LOWBIT_CHECK(!b || (std::isfinite(*b) && *b >= 0),
                 "Float8FakeQuantizeConfig: hp_value bounds must be finite and >= 0");
  LOWBIT_CHECK(!hp_value_lb || !hp_value_ub || *hp_value_lb <= *hp_value_ub,
               "Float8FakeQuantizeConfig: hp_value_lb ({}) must not exceed hp_value_ub ({})", *hp_value_lb,
               *hp_value_ub);
}

Tensor Float8FakeQuantizeConfig::fake_quantize(const Tensor& x_in, FakeQuantizer& fq) const {
  LOWBIT_CHECK(x_in.defined() && (x_in.dtype() == kFloat32 || x_in.dtype() == kBFloat16),
               "FakeQuantizer: {} needs a float32 or bfloat16 input, got {}", to_string(),
               x_in.defined() ? detail::desc(x_in) : "undefined");
  const bool bf = x_in.dtype() == kBFloat16;
  const Tensor x32 = bf ? x_in.detach().to(kFloat32) : x_in.detach();  // bfloat16 values are exact in float32
  const int64_t n = x32.numel();
  const int64_t len = block_len(*this, x32);
  const int64_t blocks = len ? n / len : 0;
  const MinifloatSpec& spec = *minifloat_spec(dtype);
  const float fmax = static_cast<float>(spec.max_finite);
  const float* xp = x32.data_ptr<float>();
  const BlockScales bs = block_scales(*this, xp, blocks, len, bf);
  const Tensor amax = bs.amax, scale = bs.scale;
  const std::vector<uint8_t>& clamped = bs.clamped;
  const std::vector<uint8_t>& guarded = bs.guarded;
  const float* sp = scale.data_ptr<float>();
  // forward: y = fp32(fp8(clamp(x / s))) * s in the input's dtype; the clamp mask for backward
  Tensor y32 = empty(x32.shape(), kFloat32), q = empty(x32.shape(), kFloat32);
  std::vector<uint8_t> mask(static_cast<size_t>(n));
  float* yp = y32.data_ptr<float>();
  float* qp = q.data_ptr<float>();
  uint8_t* maskp = mask.data();
  float table[256];  // code -> value
  for (uint32_t c = 0; c < 256; ++c) table[c] = minifloat_decode(spec, c);
  // elements over the threads (a per-tensor block too), in runs of up to 512 inside one block
  detail::parallel_for(n, kParallelGrain, [&](int64_t lo, int64_t hi) {
    constexpr int64_t kChunk = 512;
    float t[kChunk];
    uint8_t code[kChunk];
    for (int64_t o = lo; o < hi;) {
      const int64_t b = o / len, m = std::min({kChunk, hi - o, (b + 1) * len - o});
      const float s = sp[b];
      const bool guard = guarded[static_cast<size_t>(b)];
      // true division (torchao's x / scale), the clamp mask, the clamp -- restrict pointers and
      // the guard outside the loops, so that they vectorize
      const float* __restrict xo = xp + o;
      uint8_t* __restrict mo = maskp + o;
      float* __restrict qo = qp + o;
      float* __restrict yo = yp + o;
      if (guard) {
        std::fill_n(t, m, 0.0f);
        std::fill_n(mo, m, uint8_t{1});
      } else {
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) {
          const float v = xo[i] / s;
          mo[i] = static_cast<uint8_t>((v >= -fmax) & (v <= fmax));  // & not &&: GCC vectorizes no short circuit
          t[i] = v != v ? v : std::min(std::max(v, -fmax), fmax);
        }
      }
      minifloat_encode_scaled(spec, t, 1.0f, nullptr, code, m, /*saturate=*/true);
#pragma omp simd
      for (int64_t i = 0; i < m; ++i) {
        const float qv = table[code[i]];
        qo[i] = qv;
        yo[i] = guard ? 0.0f : qv * s;
      }
      o += m;
    }
  });
  fq.scale = shaped_scale(*this, scale, x32.shape());
  Tensor y = bf ? y32.to(kBFloat16) : y32;
  if (!detail::any_requires_grad({&x_in})) return y;
  const Backward mode = backward;
  const bool has_bounds = hp_value_lb.has_value() || hp_value_ub.has_value();
  detail::record(
      y, "Float8FakeQuantizeBackward", {x_in},
      [x32, q, scale, amax, mask, clamped, guarded, len, blocks, bf, mode, has_bounds, fmax, spec,
       table = std::vector<float>(table, table + 256)](const Tensor& g_in) {
        const Tensor g = g_in.to(kFloat32);
        const float* gp = g.data_ptr<float>();
        const float* xp = x32.data_ptr<float>();
        const float* qp = q.data_ptr<float>();
        const float* sp = scale.data_ptr<float>();
        const float* ap = amax.data_ptr<float>();
        Tensor out = empty(x32.shape(), kFloat32);
        float* op = out.data_ptr<float>();
        detail::parallel_for(
            blocks, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(len, 1)), [&](int64_t b0, int64_t b1) {
              for (int64_t b = b0; b < b1; ++b) {
                const float s = sp[b];
                const int64_t lo = b * len, hi = lo + len;
                if (mode == Float8FakeQuantizeConfig::Backward::StraightThrough || guarded[static_cast<size_t>(b)]) {
                  for (int64_t i = lo; i < hi; ++i) op[i] = mask[static_cast<size_t>(i)] ? gp[i] : 0.0f;
                  continue;
                }
                // the gradient through the float8 cast (PyTorch's eager cast: RNE, no saturation), the
                // clamp mask and x / s; and the scale's two terms (mul and div), each summed in float32
                float sum_gq = 0.0f, sum_div = 0.0f;
                constexpr int64_t kChunk = 512;
                uint8_t code[kChunk];
                for (int64_t o = lo; o < hi; o += kChunk) {
                  const int64_t m = std::min(kChunk, hi - o);
                  minifloat_encode_scaled(spec, gp + o, s, nullptr, code, m, /*saturate=*/false);  // eager cast
                  for (int64_t j = 0; j < m; ++j) {
                    const int64_t i = o + j;
                    const float gq = mask[static_cast<size_t>(i)] ? table[code[j]] : 0.0f;
                    op[i] = round_to(gq / s, bf);
                    sum_gq += gp[i] * qp[i];
                    sum_div += -gq * ((xp[i] / s) / s);
                  }
                }
                // d scale in the input's dtype; d amax = d scale / fp8max, zero where the hp bounds
                // clamped the amax (still added below: 0 * sign(x) is a signed zero, as in autograd)
                const float ds = round_to(sum_gq + sum_div, bf);
                const float da = clamped[static_cast<size_t>(b)] && has_bounds ? 0.0f : round_to(ds / fmax, bf);
                int64_t ties = 0;
                for (int64_t i = lo; i < hi; ++i) ties += std::fabs(xp[i]) == ap[b];
                const float per = round_to(da / static_cast<float>(std::max<int64_t>(ties, 1)), bf);
                for (int64_t i = lo; i < hi; ++i) {  // amax's backward: per * (|x| == amax), then abs's: * sign(x)
                  const float hit = std::fabs(xp[i]) == ap[b] ? 1.0f : 0.0f;
                  const float sign = xp[i] > 0 ? 1.0f : xp[i] < 0 ? -1.0f : 0.0f;
                  op[i] = round_to(op[i] + round_to(per * hit * sign, bf), bf);
                }
              }
            });
        return std::vector<Tensor>{bf ? out.to(kBFloat16) : out};
      });
  return y;
}

}  // namespace lowbit::qat
