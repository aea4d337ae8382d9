// NVFP4 training (mx/nvfp4_training.h): TransformerEngine's NVFP4 casts, the 16-point random
// Hadamard transform, stochastic rounding to fp4, and NVFP4Linear.
#include "lowbit/mx/nvfp4_training.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/core/blocks.h"
#include "lowbit/core/cast2d.h"
#include "lowbit/core/format.h"

namespace lowbit::mx {

void NVFP4TrainingConfig::validate() const {
  for (size_t i = 0; i < rht_sign_vector.size(); ++i)
    LOWBIT_CHECK(rht_sign_vector[i] == 1 || rht_sign_vector[i] == -1,
                 "NVFP4TrainingConfig: rht_sign_vector must hold 16 values of +1 or -1, element {} is {}", i,
                 rht_sign_vector[i]);
}

std::string NVFP4TrainingConfig::to_string() const {
  std::string s;
  for (int v : rht_sign_vector) s += (s.empty() ? "" : ", ") + std::to_string(v);
  return fmt::format("NVFP4TrainingConfig(rht={}, stochastic_rounding={}, rht_sign_vector=({}))",
                     rht ? "True" : "False", stochastic_rounding ? "True" : "False", s);
}

namespace {
using TEScales = core::TENVFP4BlockScale;
// |y| <= 6 rounded to the fp4 e2m1 grid {0, .5, 1, 1.5, 2, 3, 4, 6} -- to nearest even, or
// stochastically with 16 random bits r -- branch-free so that loops over it vectorize: the grid's
// spacing (0.5 below 2, 1 below 4, 2 up to 6) is selected per element and t = |y| / spacing is
// rounded to an integer with the 2^23 trick (ties to even: the even mantissa code), or floored and
// moved up when r < frac * 65536. NaN stays NaN.
inline float fp4_round(float y, bool stochastic, uint32_t r) {
  const float a = std::fabs(y);
  const float step = a < 2.0f ? 0.5f : (a < 4.0f ? 1.0f : 2.0f), inv = 1.0f / step;
  const float t = a * inv;
  const float fl = (t + 0x1p23f) - 0x1p23f;  // nearest integer, ties to even (0 <= t <= 12)
  float q;
  if (stochastic) {
    const float lo = fl > t ? fl - 1.0f : fl;  // floor
    q = (static_cast<float>(r) < (t - lo) * 65536.0f ? lo + 1.0f : lo) * step;
  } else {
    q = fl * step;
  }
  return std::copysign(q, y);
}
// 16 elements: clamp(x * mult, ±6) (NaN stays NaN), fp4 rounding, times s8, as bfloat16 bits.
// q * s8 has at most 2 + 4 significant bits and lies in [2^-10, 2688], so it is exact in bfloat16
// and its high 16 bits are its bfloat16 (a NaN keeps its quiet bit). The AVX-512 version is the
// same arithmetic, one vector per block.
template <bool SR>
inline void cast_16(const float* x, const TEScales& s, const uint32_t* r16, uint16_t* out) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
  __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x), _mm512_set1_ps(s.mult));
  y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, _mm512_set1_ps(6.0f), _CMP_GT_OQ), y, _mm512_set1_ps(6.0f));
  y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, _mm512_set1_ps(-6.0f), _CMP_LT_OQ), y, _mm512_set1_ps(-6.0f));
  const __m512i sign_mask = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  const __m512 a = _mm512_castsi512_ps(_mm512_andnot_si512(sign_mask, _mm512_castps_si512(y)));
  const __mmask16 below2 = _mm512_cmp_ps_mask(a, _mm512_set1_ps(2.0f), _CMP_LT_OQ),
                  below4 = _mm512_cmp_ps_mask(a, _mm512_set1_ps(4.0f), _CMP_LT_OQ);
  // NaN compares false: step 2, as the scalar version
  __m512 step = _mm512_mask_blend_ps(below4, _mm512_set1_ps(2.0f), _mm512_set1_ps(1.0f));
  step = _mm512_mask_blend_ps(below2, step, _mm512_set1_ps(0.5f));
  __m512 inv = _mm512_mask_blend_ps(below4, _mm512_set1_ps(0.5f), _mm512_set1_ps(1.0f));
  inv = _mm512_mask_blend_ps(below2, inv, _mm512_set1_ps(2.0f));
  const __m512 t = _mm512_mul_ps(a, inv), big = _mm512_set1_ps(0x1p23f);
  const __m512 fl = _mm512_sub_ps(_mm512_add_ps(t, big), big);
  __m512 q;
  if constexpr (SR) {
    const __m512 lo = _mm512_mask_sub_ps(fl, _mm512_cmp_ps_mask(fl, t, _CMP_GT_OQ), fl, _mm512_set1_ps(1.0f));
    const __m512 r = _mm512_cvtepu32_ps(_mm512_loadu_si512(r16));
    const __mmask16 up =
        _mm512_cmp_ps_mask(r, _mm512_mul_ps(_mm512_sub_ps(t, lo), _mm512_set1_ps(65536.0f)), _CMP_LT_OQ);
    q = _mm512_mul_ps(_mm512_mask_add_ps(lo, up, lo, _mm512_set1_ps(1.0f)), step);
  } else {
    q = _mm512_mul_ps(fl, step);
  }
  q = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(q), _mm512_and_si512(sign_mask, _mm512_castps_si512(y))));
  const __m512 v = _mm512_mul_ps(q, _mm512_set1_ps(s.s8));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                      _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16)));
#else
  for (int i = 0; i < 16; ++i) {
    float y = x[i] * s.mult;
    y = y > 6.0f ? 6.0f : (y < -6.0f ? -6.0f : y);
    const float v = fp4_round(y, SR, SR ? r16[i] : 0u) * s.s8;
    uint32_t u;
    std::memcpy(&u, &v, 4);
    out[i] = static_cast<uint16_t>(u >> 16);
  }
#endif
}
}  // namespace

float fp4_round_stochastic(float y, uint32_t r16) {
  // through the cast's own kernel (multiplier and scale 1)
  float x[16] = {y};
  uint32_t r[16] = {r16 & 0xffffu};
  uint16_t out[16];
  cast_16<true>(x, TEScales{1.0f, 1.0f}, r, out);
  return BFloat16::to_float(out[0]);
}

NVFP4TECast nvfp4_te_cast(const float* x, int64_t rows, int64_t cols, float global_amax, NVFP4Blocks blocks,
                          bool stochastic, uint64_t seed) {
  const bool tiles = blocks == NVFP4Blocks::Tile16x16;
  LOWBIT_CHECK(rows >= 0 && cols % 16 == 0 && (!tiles || rows % 16 == 0),
               "nvfp4_te_cast: {} blocks need cols{} divisible by 16, got {} x {}", tiles ? "16x16" : "1x16",
               tiles ? " and rows" : "", rows, cols);
  NVFP4TECast c;
  c.global_amax = global_amax;
  c.per_tensor_scale = global_amax / (448.0f * 6.0f);
  const float enc = core::te_nvfp4_encode_scale(global_amax), dec = 1.0f / enc;
  const int64_t nb = cols / 16;
  c.values = empty({rows, cols}, kBFloat16);
  c.block_scales = empty({tiles ? rows / 16 : rows, nb}, kFloat32);
  uint16_t* v = static_cast<uint16_t*>(c.values.raw_data());
  float* bs = c.block_scales.data_ptr<float>();
  const int64_t units = tiles ? rows / 16 : rows;  // a strip of 16 rows, or one row
  detail::parallel_for(units, std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)), [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u)
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t r0 = tiles ? u * 16 : u, nr = tiles ? 16 : 1;
        float amax = 0.0f;
        for (int64_t r = r0; r < r0 + nr; ++r) amax = core::nan_max(amax, core::amax_of_run(x + r * cols + b * 16, 16));
        const TEScales s = core::te_nvfp4_block_scale(amax, enc, dec);
        bs[u * nb + b] = s.s8;
        for (int64_t r = r0; r < r0 + nr; ++r) {
          const int64_t at = r * cols + b * 16;
          uint32_t r16[16];
          if (stochastic)
            for (int64_t q = 0; q < 4; ++q) {  // element at + 4q + i: 16 bits i of counter (at + 4q) / 4
              const uint64_t w = Generator::bits(seed, static_cast<uint64_t>(at / 4 + q));
              for (int i = 0; i < 4; ++i) r16[q * 4 + i] = static_cast<uint32_t>(w >> (16 * i)) & 0xffffu;
            }
          if (stochastic)
            cast_16<true>(x + at, s, r16, v + at);
          else
            cast_16<false>(x + at, s, nullptr, v + at);
        }
      }
  });
  return c;
}

Tensor rht16_transposed(const float* x, int64_t m, int64_t c, const std::array<int, 16>& signs) {
  const int64_t m16 = (m + 15) / 16 * 16, chunks = m16 / 16;
  Tensor out = empty({c, m16}, kFloat32);
  float* o = out.data_ptr<float>();
  detail::parallel_for(chunks, 1, [&](int64_t k0, int64_t k1) {
    std::vector<float> v(static_cast<size_t>(16 * c));
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t i = 0; i < 16; ++i) {  // row i of the chunk times its sign (zeros past m)
        const int64_t r = k * 16 + i;
        float* vi = v.data() + i * c;
        if (r < m) {
          const float s = static_cast<float>(signs[static_cast<size_t>(i)]);
          for (int64_t j = 0; j < c; ++j) vi[j] = x[r * c + j] * s;
        } else {
          std::fill(vi, vi + c, 0.0f);
        }
      }
      // the Walsh-Hadamard butterflies (Sylvester order: H[i][j] = (-1)^popcount(i & j))
      for (int64_t h = 1; h < 16; h *= 2)
        for (int64_t i = 0; i < 16; i += 2 * h)
          for (int64_t l = i; l < i + h; ++l) {
            float* a = v.data() + l * c;
            float* b = v.data() + (l + h) * c;
            for (int64_t j = 0; j < c; ++j) {
              const float p = a[j], q = b[j];
              a[j] = p + q;
              b[j] = p - q;
            }
          }
      for (int64_t j = 0; j < c; ++j)
        for (int64_t i = 0; i < 16; ++i)
          o[j * m16 + k * 16 + i] = static_cast<float>(BFloat16(v[static_cast<size_t>(i * c + j)] * 0.25f));
    }
  });
  return out;
}

namespace {
// float32 rounded to bfloat16 values, kept in float32 (torchao casts the linear's operands to bf16)
Tensor bf16_values(const Tensor& t) { return t.to(kBFloat16).to(kFloat32); }
float tensor_amax(const Tensor& t) {
  const float* p = t.data_ptr<float>();
  const int64_t n = t.numel(), chunk = 1 << 16, nc = (n + chunk - 1) / chunk;
  std::vector<float> part(static_cast<size_t>(std::max<int64_t>(nc, 1)), 0.0f);
  detail::parallel_for(nc, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ci = c0; ci < c1; ++ci) part[ci] = core::amax_of_run(p + ci * chunk, std::min(chunk, n - ci * chunk));
  });
  float a = 0.0f;
  for (float v : part) a = core::nan_max(a, v);
  return a;
}
NVFP4TECast cast_of(const Tensor& t, NVFP4Blocks blocks, bool stochastic = false, uint64_t seed = 0) {
  return nvfp4_te_cast(t.data_ptr<float>(), t.size(0), t.size(1), tensor_amax(t), blocks, stochastic, seed);
}
// op(A)·op(B) on the block-scaled values (a bf16 gemm, float32 sums) times both per-tensor scales
Tensor nvfp4_gemm(const NVFP4TECast& a, bool ta, const NVFP4TECast& b, bool tb) {
  NoGradGuard ng;
  return mul(gemm_bf16(a.values, ta, b.values, tb), full({1}, a.per_tensor_scale * b.per_tensor_scale));
}
Tensor transposed_padded(const Tensor& x, int64_t m16) {  // xᵀ with zero columns up to m16 (no RHT)
  NoGradGuard ng;
  const int64_t m = x.size(0), c = x.size(1);
  Tensor out = zeros({c, m16});
  const float* p = x.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t j = 0; j < c; ++j)
    for (int64_t i = 0; i < m; ++i) o[j * m16 + i] = p[i * c + j];
  return out;
}
}  // namespace

NVFP4Linear::NVFP4Linear(const Tensor& weight, const Tensor& bias, const NVFP4TrainingConfig& config)
    : nn::Linear(weight, bias), config_(config) {
  config_.validate();
  LOWBIT_CHECK(in_features % 16 == 0 && out_features % 16 == 0,
               "NVFP4Linear: in_features and out_features must be multiples of 16 (16x16 weight tiles), got {} x {}",
               out_features, in_features);
  Tensor st = zeros({2}, kInt64);
  st.data_ptr<int64_t>()[0] =
      static_cast<int64_t>(default_generator().reserve(1) * 0x9e3779b97f4a7c15ULL ^ default_generator().seed());
  sr_state = register_buffer("sr_state", st);
}

std::string NVFP4Linear::extra_repr() const {
  return fmt::format("{}, rht={}, stochastic_rounding={}", nn::Linear::extra_repr(), config_.rht ? "True" : "False",
                     config_.stochastic_rounding ? "True" : "False");
}

Tensor NVFP4Linear::forward(const Tensor& x) {
  const char* op = "NVFP4Linear";
  check_low_precision_input(x, op);
  LOWBIT_CHECK(sr_state.defined() && sr_state.dtype() == kInt64 && sr_state.numel() == 2,
               "{}: sr_state must be an int64 buffer of 2 elements, got {}", op, lowbit::detail::desc(sr_state));
  const NVFP4TrainingConfig c = config_;
  const DType dt = x.dtype();
  Tensor x2, w;
  {
    NoGradGuard ng;
    x2 = bf16_values(x.detach().reshape({-1, in_features}));
    w = bf16_values(weight.detach());
  }
  const NVFP4TECast cx = cast_of(x2, NVFP4Blocks::Row1x16);
  const auto cw = std::make_shared<NVFP4TECast>(cast_of(w, NVFP4Blocks::Tile16x16));
  Tensor y2 = nvfp4_gemm(cx, false, *cw, true).to(dt);
  if (lowbit::detail::any_requires_grad({&x, &weight})) {
    const Shape xs = x.shape();
    const bool gx = x.requires_grad(), gw = weight.requires_grad();
    const int64_t n_out = out_features;
    Tensor state = sr_state;
    lowbit::detail::record(
        y2, "NVFP4LinearBackward0", {x, weight}, [x2, cw, c, xs, gx, gw, n_out, dt, state](const Tensor& g_in) mutable {
          NoGradGuard ng;
          const Tensor g = bf16_values(g_in.reshape({-1, n_out}).to(kFloat32));
          int64_t* st = state.data_ptr<int64_t>();
          st[1] += 1;  // a fresh stream per backward, reproducible from the saved state
          const uint64_t seed = Generator::bits(static_cast<uint64_t>(st[0]), static_cast<uint64_t>(st[1]));
          const bool sr = c.stochastic_rounding;
          Tensor dx, dw;
          if (gx)  // dY (1x16 along N, stochastic) · W (its 16x16 tiles)
            dx = nvfp4_gemm(cast_of(g, NVFP4Blocks::Row1x16, sr, seed), false, *cw, false).to(dt).reshape(xs);
          if (gw) {  // RHT(dYᵀ) · RHT(Xᵀ)ᵀ, both in 1x16 blocks along M
            const int64_t m = g.size(0), m16 = (m + 15) / 16 * 16;
            const Tensor gt = c.rht ? rht16_transposed(g.data_ptr<float>(), m, g.size(1), c.rht_sign_vector)
                                    : transposed_padded(g, m16);
            const Tensor xt = c.rht ? rht16_transposed(x2.data_ptr<float>(), m, x2.size(1), c.rht_sign_vector)
                                    : transposed_padded(x2, m16);
            dw = nvfp4_gemm(cast_of(gt, NVFP4Blocks::Row1x16, sr, seed ^ 1), false, cast_of(xt, NVFP4Blocks::Row1x16),
                            true)
                     .to(dt);
          }
          return std::vector<Tensor>{dx, dw};
        });
  }
  return output_with_bias(y2, x);
}

nn::Attributes NVFP4Linear::checkpoint_attributes() const {
  std::vector<int64_t> signs(config_.rht_sign_vector.begin(), config_.rht_sign_vector.end());
  return {{"rht", int64_t{config_.rht ? 1 : 0}},
          {"stochastic_rounding", int64_t{config_.stochastic_rounding ? 1 : 0}},
          {"rht_sign_vector", signs}};
}

std::shared_ptr<nn::Module> convert_to_nvfp4_training(
    const std::shared_ptr<nn::Module>& model, const NVFP4TrainingConfig& config,
    const std::function<bool(const nn::Linear&, const std::string&)>& filter, std::vector<std::string>* skipped) {
  LOWBIT_CHECK(model != nullptr, "convert_to_nvfp4_training: model is null");
  config.validate();
  return nn::replace_linears(model, [&](const nn::Linear& lin, const std::string& fqn) -> std::shared_ptr<nn::Module> {
    if (lin.in_features % 16 != 0 || lin.out_features % 16 != 0) {
      if (skipped)
        skipped->push_back(fmt::format("{} ({}x{}: NVFP4 needs multiples of 16)", fqn.empty() ? "(root)" : fqn,
                                       lin.out_features, lin.in_features));
      return nullptr;
    }
    if (filter && !filter(lin, fqn)) return nullptr;
    return std::make_shared<NVFP4Linear>(lin.weight, lin.bias, config);
  });
}

void register_nvfp4_module_types() {
  static std::once_flag once;
  std::call_once(once, [] {
    nn::register_module_type("NVFP4Linear", [](const nn::Attributes& a, const nn::NamedTensors& t) {
      const char* ty = "NVFP4Linear";
      nn::NamedTensors lin;
      Tensor state;
      for (const auto& [name, v] : t) {
        if (name == "sr_state")
          state = v;
        else
          lin.emplace_back(name, v);
      }
      const auto [w, b] = nn::linear_tensors_from_file(lin, ty);
      NVFP4TrainingConfig c;
      c.rht = nn::attr_flag(a, "rht", ty);
      c.stochastic_rounding = nn::attr_flag(a, "stochastic_rounding", ty);
      const std::vector<int64_t> signs = nn::attr_ints(a, "rht_sign_vector", ty);
      LOWBIT_CHECK(signs.size() == 16, "{}: rht_sign_vector must have 16 elements, got {}", ty, signs.size());
      for (size_t i = 0; i < 16; ++i) c.rht_sign_vector[i] = static_cast<int>(signs[i]);
      auto m = std::make_shared<NVFP4Linear>(w, b, c);
      if (state.defined()) {
        LOWBIT_CHECK(state.dtype() == kInt64 && state.numel() == 2,
                     "{}: sr_state must be an int64 tensor of 2 elements, got {}", ty, lowbit::detail::desc(state));
        std::memcpy(m->sr_state.raw_data(), state.raw_data(), 16);
      }
      return std::static_pointer_cast<nn::Module>(m);
    });
  });
}

}  // namespace lowbit::mx
