// NVFP4 training (spec §9 item 10) against its formulas: torchao runs it only on sm100 GPUs and
// the golden files hold no case of it. TransformerEngine's casts are checked value by value
// against an independent composition of the format table's codecs; stochastic rounding against
// its exact probabilities (every one of the 65536 random draws) and statistically; the RHT against
// its matrix; NVFP4Linear's three gemms against compositions of the public casts.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <filesystem>

#include <unistd.h>

#include "golden.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/core/format.h"
#include "lowbit/io/checkpoint.h"
#include "lowbit/mx/nvfp4_training.h"
#include "lowbit/nn/layers.h"
#include "test_util.h"

using namespace lowbit;
using namespace lowbit::mx;
namespace t = lowbit::testing;
using lowbit::testing::max_rel_to_max;

namespace {
const core::Format& e4m3() { return core::format(core::FormatId::Float8E4M3FN); }
const core::Format& e2m1() { return core::format(core::FormatId::Float4E2M1FN); }
float bf16(float v) { return static_cast<float>(BFloat16(v)); }

// the cast of one element by the formulas, with the format table's codecs
struct Expected {
  float value, s8;
};
Expected expected_element(float x, float block_amax, float global_amax) {
  float enc = global_amax == 0.0f ? 1.0f : std::min(2688.0f / global_amax, FLT_MAX);
  if (enc == 0.0f) enc = 1.0f;
  const float dec = 1.0f / enc;
  const float pv = std::min(block_amax * (enc * (1.0f / 6.0f)), 448.0f);
  const float s8 = core::decode(e4m3(), core::encode(e4m3(), pv));
  const float mult = std::min(1.0f / (s8 * dec), FLT_MAX);
  const float y = std::min(6.0f, std::max(-6.0f, x * mult));
  return {core::decode(e2m1(), core::encode(e2m1(), y)) * s8, s8};
}
float amax_of(const std::vector<float>& v) {
  float a = 0.0f;
  for (float x : v) a = std::max(a, std::fabs(x));
  return a;
}
// random values over a wide range of magnitudes, with a zero block, a tiny block and a huge value
std::vector<float> sample(int64_t rows, int64_t cols, uint64_t seed) {
  Generator g(seed);
  Tensor a = empty({rows * cols}), e = empty({rows * cols});
  a.normal_(0.0, 1.0, &g);
  e.uniform_(-12.0, 4.0, &g);
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows * cols; ++i)
    v[i] = bf16(a.data_ptr<float>()[i] * std::exp2(std::floor(e.data_ptr<float>()[i] / 4.0f)));
  for (int64_t j = 0; j < 16; ++j) v[j] = 0.0f;                            // a zero block
  for (int64_t j = 16; j < 32 && j < cols; ++j) v[j] = 1e-30f * (j - 20);  // a tiny block
  v[v.size() / 2] = 3.0e4f;
  return v;
}
}  // namespace

TEST(NVFP4Training, EncodeScaleIsTransformerEngines) {
  EXPECT_EQ(te_nvfp4_encode_scale(0.0f), 1.0f);
  EXPECT_EQ(te_nvfp4_encode_scale(INFINITY), 1.0f);   // 2688 / inf = 0 -> 1
  EXPECT_EQ(te_nvfp4_encode_scale(1e-38f), FLT_MAX);  // overflow capped
  EXPECT_EQ(te_nvfp4_encode_scale(2688.0f), 1.0f);
  EXPECT_EQ(te_nvfp4_encode_scale(3.0f), 896.0f);
  EXPECT_EQ(te_nvfp4_encode_scale(7.0f), 2688.0f / 7.0f);
  EXPECT_TRUE(std::isnan(te_nvfp4_encode_scale(NAN)));
}

TEST(NVFP4Training, CastsFollowTheFormulas) {
  for (const auto blocks : {NVFP4Blocks::Row1x16, NVFP4Blocks::Tile16x16}) {
    const bool tiles = blocks == NVFP4Blocks::Tile16x16;
    const int64_t rows = 48, cols = 80;
    const std::vector<float> x = sample(rows, cols, tiles ? 3 : 4);
    const float ga = amax_of(x);
    const NVFP4TECast c = nvfp4_te_cast(x.data(), rows, cols, ga, blocks);
    EXPECT_EQ(c.per_tensor_scale, ga / 2688.0f);
    int64_t bad_values = 0, bad_scales = 0, nonzero = 0;
    const float* bs = c.block_scales.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) {
        float ba = 0.0f;
        for (int64_t rr = tiles ? r / 16 * 16 : r; rr < (tiles ? r / 16 * 16 + 16 : r + 1); ++rr)
          for (int64_t jj = j / 16 * 16; jj < j / 16 * 16 + 16; ++jj) ba = std::max(ba, std::fabs(x[rr * cols + jj]));
        const Expected e = expected_element(x[r * cols + j], ba, ga);
        const float got =
            static_cast<float>(BFloat16::to_float(static_cast<const uint16_t*>(c.values.raw_data())[r * cols + j]));
        bad_values += std::memcmp(&got, &e.value, 4) != 0;
        nonzero += got != 0.0f;
        bad_scales += bs[(tiles ? r / 16 : r) * (cols / 16) + j / 16] != e.s8;
      }
    EXPECT_EQ(bad_values, 0);
    EXPECT_EQ(bad_scales, 0);
    EXPECT_GT(nonzero, rows * cols / 2);
    // no 2^-6 floor: the tiny block (row 0, columns 16-31) gets a scale of its own (zero: below
    // e4m3's range), where NVFP4Tensor would give it 2^-6
    if (!tiles) EXPECT_EQ(bs[1], 0.0f);
  }
  // every tie of the fp4 grid (and its negative) rounds to the even code, as the codec does:
  // block amax 6 and tensor amax 2688 make s8 = 1 and the multiplier 1
  const std::vector<float> ties = {6.0f,   0.25f,  0.75f,  1.25f,  1.75f, 2.5f,  3.5f,  5.0f,
                                   -0.25f, -0.75f, -1.25f, -1.75f, -2.5f, -3.5f, -5.0f, -6.0f};
  const NVFP4TECast tc = nvfp4_te_cast(ties.data(), 1, 16, 2688.0f, NVFP4Blocks::Row1x16);
  ASSERT_EQ(tc.block_scales.data_ptr<float>()[0], 1.0f);
  for (int i = 0; i < 16; ++i)
    EXPECT_EQ(tc.values.to(kFloat32).data_ptr<float>()[i],
              core::decode(e2m1(), core::encode(e2m1(), std::min(6.0f, ties[i]))))
        << ties[i];
  t::expect_error(
      [] {
        std::vector<float> v(16 * 8);
        nvfp4_te_cast(v.data(), 8, 16, 1.0f, NVFP4Blocks::Tile16x16);
      },
      {"16x16 blocks need cols and rows divisible by 16", "8 x 16"});
}

// P(away from zero) is exactly ceil(frac * 65536) / 65536 over the 16 random bits: checked over
// all 65536 draws, for every gap of the fp4 grid and both signs
TEST(NVFP4Training, StochasticRoundingProbabilitiesAreExact) {
  for (const float y : {0.1f, 0.3f, 0.75f, 1.2f, 1.9f, 2.25f, 3.5f, 3.99f, 4.5f, 5.0f, 5.9f, 6.0f, 2.0f, 0.0f}) {
    for (const float sgn : {1.0f, -1.0f}) {
      const float v = sgn * y;
      float lo = 0, hi = 0;
      for (uint32_t c = 0; c < 8; ++c) {  // neighbours on the grid
        const float g = core::decode(e2m1(), c);
        if (g <= y) lo = g;
      }
      hi = lo;
      for (uint32_t c = 7; c < 8; --c) {
        const float g = core::decode(e2m1(), c);
        if (g >= y) hi = g;
      }
      int64_t up = 0, other = 0;
      for (uint32_t r = 0; r < 65536; ++r) {
        const float q = fp4_round_stochastic(v, r);
        if (q == sgn * hi && hi != lo)
          ++up;
        else if (q != sgn * lo)
          ++other;
      }
      EXPECT_EQ(other, 0) << v;
      const double frac = hi == lo ? 0.0 : (y - lo) / (hi - lo);
      EXPECT_EQ(up, static_cast<int64_t>(std::ceil(frac * 65536.0))) << v;
    }
  }
  EXPECT_TRUE(std::isnan(fp4_round_stochastic(NAN, 0)));
}

// Through the cast: unbiased in expectation and reproducible from the seed, whatever the threads
TEST(NVFP4Training, StochasticCastIsUnbiasedAndSeeded) {
  const int64_t rows = 512, cols = 256;
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows * cols; ++i) x[i] = (i % 16 == 0) ? 6.0f : 2.6f;  // each block's amax 6
  // global amax 2688: enc 1, s8 = 1, values on the grid unscaled; 2.6 sits 0.6 of the way 2 -> 3
  std::vector<float> xs = x;
  xs[0] = 2688.0f;
  const int threads = get_num_threads();
  const NVFP4TECast a = nvfp4_te_cast(x.data(), rows, cols, 2688.0f, NVFP4Blocks::Row1x16, true, 99);
  set_num_threads(1);
  const NVFP4TECast b = nvfp4_te_cast(x.data(), rows, cols, 2688.0f, NVFP4Blocks::Row1x16, true, 99);
  set_num_threads(threads);
  EXPECT_EQ(t::count_mismatches(a.values, b.values), 0);
  const NVFP4TECast other = nvfp4_te_cast(x.data(), rows, cols, 2688.0f, NVFP4Blocks::Row1x16, true, 100);
  EXPECT_GT(t::count_mismatches(a.values, other.values), 0);
  const Tensor v = a.values.to(kFloat32);
  int64_t n = 0, up = 0;
  double mean = 0.0;
  for (int64_t i = 0; i < rows * cols; ++i) {
    if (i % 16 == 0) continue;
    const float q = v.data_ptr<float>()[i];
    ASSERT_TRUE(q == 2.0f || q == 3.0f) << q;
    up += q == 3.0f;
    mean += q;
    ++n;
  }
  const double p = 0.6, sd = std::sqrt(p * (1 - p) / n);
  EXPECT_NEAR(static_cast<double>(up) / n, p, 5 * sd);
  EXPECT_NEAR(mean / n, 2.6, 5 * sd);
}

TEST(NVFP4Training, RhtIsTheSignedHadamardTransform) {
  const int64_t m = 37, c = 5;  // ragged: 3 chunks, the last padded with zero rows
  std::vector<float> x(static_cast<size_t>(m * c));
  for (int64_t i = 0; i < m * c; ++i) x[i] = static_cast<float>((i * 37 % 129) - 64) / 16.0f;  // exact sums
  const Tensor out = rht16_transposed(x.data(), m, c, kTeRhtSigns);
  ASSERT_EQ(out.shape(), (Shape{c, 48}));
  int64_t bad = 0;
  for (int64_t j = 0; j < c; ++j)
    for (int64_t k = 0; k < 3; ++k)
      for (int64_t o = 0; o < 16; ++o) {
        double s = 0.0;
        for (int64_t i = 0; i < 16; ++i) {
          const int64_t r = k * 16 + i;
          const double h = (__builtin_popcountll(static_cast<unsigned long long>(i & o)) % 2) ? -1.0 : 1.0;
          if (r < m) s += x[r * c + j] * kTeRhtSigns[i] * h / 4.0;
        }
        bad += out.data_ptr<float>()[j * 48 + k * 16 + o] != bf16(static_cast<float>(s));
      }
  EXPECT_EQ(bad, 0);
  // orthogonal: RHT(a)ᵀRHT(b) = aᵀb up to the bfloat16 rounding of the transformed values
  const Tensor xt = transpose(from_vector(x, {m, c}), 0, 1);
  const Tensor lhs = matmul(out, transpose(out, 0, 1)), rhs = matmul(xt, transpose(xt, 0, 1));
  EXPECT_LE(max_rel_to_max(lhs, rhs), std::ldexp(1.0, -8));
}

// The three gemms against compositions of the public casts (round to nearest everywhere, so the
// composition is deterministic), within float32 summation bounds
TEST(NVFP4Training, LinearGemmsMatchTheirComposition) {
  for (const bool rht : {true, false}) {
    SCOPED_TRACE(rht ? "rht" : "no rht");
    manual_seed(5);
    auto lin = std::make_shared<nn::Linear>(64, 32);
    NVFP4TrainingConfig cfg;
    cfg.stochastic_rounding = false;
    cfg.rht = rht;
    NVFP4Linear m(lin->weight, lin->bias, cfg);
    const int64_t rows = 40;  // ragged M for the transform
    Tensor x = randn({rows, 64}).requires_grad_();
    const Tensor y = m.forward(x);
    const Tensor g = randn({rows, 32});
    y.backward(g);
    NoGradGuard ng;
    auto amax = [](const Tensor& t) {
      float a = 0;
      for (int64_t i = 0; i < t.numel(); ++i) a = std::max(a, std::fabs(t.data_ptr<float>()[i]));
      return a;
    };
    auto cast = [&](const Tensor& t, NVFP4Blocks b) {
      const Tensor c = t.clone();
      return nvfp4_te_cast(c.data_ptr<float>(), c.size(0), c.size(1), amax(c), b);
    };
    auto gemm_ref = [](const NVFP4TECast& a, bool ta, const NVFP4TECast& b, bool tb) {
      const Tensor av = a.values.to(kFloat32), bv = b.values.to(kFloat32);
      return mul(matmul(ta ? transpose(av, 0, 1) : av, tb ? transpose(bv, 0, 1) : bv),
                 full({1}, a.per_tensor_scale * b.per_tensor_scale));
    };
    const Tensor x16 = x.detach().to(kBFloat16).to(kFloat32), w16 = m.weight.detach().to(kBFloat16).to(kFloat32),
                 g16 = g.to(kBFloat16).to(kFloat32);
    const NVFP4TECast cw = cast(w16, NVFP4Blocks::Tile16x16);
    const Tensor y_ref = add(gemm_ref(cast(x16, NVFP4Blocks::Row1x16), false, cw, true), m.bias.detach());
    EXPECT_LE(max_rel_to_max(y, y_ref), 1e-6);
    const Tensor dx_ref = gemm_ref(cast(g16, NVFP4Blocks::Row1x16), false, cw, false);
    EXPECT_LE(max_rel_to_max(x.grad(), dx_ref), 1e-6);
    const Tensor gt = rht ? rht16_transposed(g16.data_ptr<float>(), rows, 32, kTeRhtSigns)
                          : cat({transpose(g16, 0, 1), zeros({32, 8})}, 1);
    const Tensor xt = rht ? rht16_transposed(x16.data_ptr<float>(), rows, 64, kTeRhtSigns)
                          : cat({transpose(x16, 0, 1), zeros({64, 8})}, 1);
    const Tensor dw_ref = gemm_ref(cast(gt, NVFP4Blocks::Row1x16), false, cast(xt, NVFP4Blocks::Row1x16), true);
    EXPECT_LE(max_rel_to_max(m.weight.grad(), dw_ref), 1e-6);
    EXPECT_LE(max_rel_to_max(m.bias.grad(), sum(g, {0})), 1e-6);
    // and they are gradients: close to float32's (fp4 has one mantissa bit: loose)
    const Tensor dw32 = matmul(transpose(g, 0, 1), x.detach());
    EXPECT_LE(max_rel_to_max(m.weight.grad(), dw32), 0.35);
    EXPECT_GT(t::count_mismatches(m.weight.grad(), dw32), 0);
  }
}

// Stochastic rounding in the backward: a fresh stream per call from the saved state, reproducible
// (same state -> same gradients, also with one thread), and unbiased: averaging calls converges
TEST(NVFP4Training, BackwardStreamsAreReproducibleAndUnbiased) {
  manual_seed(8);
  auto lin = std::make_shared<nn::Linear>(32, 16, false);
  NVFP4Linear m(lin->weight, Tensor(), NVFP4TrainingConfig{});
  const Tensor x = randn({32, 32}), g = randn({32, 16});
  auto grads = [&] {
    Tensor xr = x.clone().requires_grad_();
    m.zero_grad();
    m.forward(xr).backward(g);
    return std::pair{xr.grad().clone(), m.weight.grad().clone()};
  };
  const Tensor saved = m.sr_state.clone();
  const auto [dx1, dw1] = grads();
  EXPECT_EQ(m.sr_state.data_ptr<int64_t>()[1], saved.data_ptr<int64_t>()[1] + 1);
  const auto [dx2, dw2] = grads();
  EXPECT_GT(t::count_mismatches(dx1, dx2), 0);  // a new stream
  std::memcpy(m.sr_state.raw_data(), saved.raw_data(), 16);
  const int threads = get_num_threads();
  set_num_threads(1);
  const auto [dx3, dw3] = grads();
  set_num_threads(threads);
  EXPECT_EQ(t::count_mismatches(dx1, dx3), 0);
  EXPECT_EQ(t::count_mismatches(dw1, dw3), 0);
  // the mean over calls approaches the gemm of the unrounded gradient (error ~ 1/sqrt(calls))
  Tensor mean = zeros({32, 32});
  const int calls = 400;
  for (int i = 0; i < calls; ++i) mean = add(mean, grads().first);
  mean = mul(mean, full({1}, 1.0f / calls));
  NoGradGuard ng;
  // what an unbiased estimate centres on: the bf16 gradient times W's (deterministic) cast
  const Tensor w16 = m.weight.detach().to(kBFloat16).to(kFloat32);
  float wa = 0.0f;
  for (int64_t i = 0; i < w16.numel(); ++i) wa = std::max(wa, std::fabs(w16.data_ptr<float>()[i]));
  const NVFP4TECast cw = nvfp4_te_cast(w16.data_ptr<float>(), 16, 32, wa, NVFP4Blocks::Tile16x16);
  const Tensor exact =
      mul(matmul(g.to(kBFloat16).to(kFloat32), cw.values.to(kFloat32)), full({1}, cw.per_tensor_scale));
  const double err_one = max_rel_to_max(dx1, exact), err_mean = max_rel_to_max(mean, exact);
  EXPECT_LT(err_mean, err_one / 5) << err_mean << " vs " << err_one;
}

TEST(NVFP4Training, ConvertSaveRebuildAndHostileFiles) {
  manual_seed(3);
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(32, 48), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(48, 10)});
  std::vector<std::string> skipped;
  auto conv = convert_to_nvfp4_training(model, {}, nullptr, &skipped);
  EXPECT_EQ(conv->get_submodule("0")->type_name(), "NVFP4Linear");
  EXPECT_EQ(conv->get_submodule("2")->type_name(), "Linear");
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_NE(skipped[0].find("2 (10x48: NVFP4 needs multiples of 16)"), std::string::npos) << skipped[0];
  register_nvfp4_module_types();
  const Tensor x = randn({4, 32});
  Tensor xr = x.clone().requires_grad_();
  sum(conv->forward(xr)).backward();  // advances the stream
  const std::string path =
      (std::filesystem::temp_directory_path() / ("lowbit_nvfp4_train_" + std::to_string(::getpid()) + ".h5")).string();
  io::export_model(path, *conv);
  auto back = io::load_model(path);
  EXPECT_EQ(back->to_string(), conv->to_string());
  auto* m0 = dynamic_cast<NVFP4Linear*>(conv->get_submodule("0").get());
  auto* b0 = dynamic_cast<NVFP4Linear*>(back->get_submodule("0").get());
  ASSERT_NE(b0, nullptr);
  EXPECT_EQ(t::count_mismatches(b0->sr_state, m0->sr_state), 0);
  {
    NoGradGuard ng;
    EXPECT_EQ(t::count_mismatches(back->forward(x), conv->forward(x)), 0);
  }
  std::filesystem::remove(path);
  NVFP4TrainingConfig bad;
  bad.rht_sign_vector[3] = 2;
  t::expect_error([&] { convert_to_nvfp4_training(model, bad); }, {"rht_sign_vector", "element 3 is 2"});
  auto l = std::make_shared<nn::Linear>(24, 16);
  t::expect_error([&] { NVFP4Linear(l->weight, l->bias, {}); }, {"multiples of 16", "16 x 24"});
  // files: a wrong sign vector and a wrong state are refused by name
  nn::Attributes a = m0->checkpoint_attributes();
  nn::NamedTensors ts = {{"weight", m0->weight}, {"bias", m0->bias}, {"sr_state", m0->sr_state}};
  nn::Attributes a2 = a;
  a2["rht_sign_vector"] = std::vector<int64_t>{1, -1};
  t::expect_error([&] { nn::build_module("NVFP4Linear", a2, ts); }, {"rht_sign_vector must have 16 elements, got 2"});
  nn::NamedTensors ts2 = ts;
  ts2[2].second = zeros({3});
  t::expect_error([&] { nn::build_module("NVFP4Linear", a, ts2); }, {"sr_state must be an int64 tensor of 2 elements"});
}
