// The MX integer GEMM behind MXQuantizedLinear (MXFP4 / MXFP6-e2m3): its AVX-512 kernel against
// its scalar reference bit for bit, the reference against the exact sum in double within its
// bound, and the module's integer path against its dequantize path.
//
// Bound: every block's int32 sum is exact and (sa x sw) is an exact power of two (normal range),
// so the only roundings are the float32 FMA per block (K/block of them) and the bias add:
// |kernel - exact| <= (K/block + 1) * 2^-24 * (sum_k |x_dq w_dq| + |bias|).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "golden.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/core/format.h"
#include "lowbit/mx/mx.h"
#include "lowbit/nn/layers.h"
#include "lowbit/qat/mx_quantized.h"
#include "lowbit/qat/quantize.h"
#include "lowbit/qat/recipes.h"
#include "qat/src/int_kernels.h"
#include "test_util.h"

using namespace lowbit;
namespace t = lowbit::testing;
namespace kn = lowbit::qat::kernels;

namespace {
struct Problem {
  int64_t m, n, k, block;
  core::FormatId elem;
  bool with_bias;
};

struct Data {
  std::vector<uint8_t> w_codes, a;  // weight codes (N x K); activations u8 (value x mult + 128)
  std::vector<float> w_scales, a_scales, bias;
  std::vector<int8_t> lut;
  int mult = 0;
};

// random codes and power-of-two scales (2^-20 .. 2^8), a NaN weight block and a NaN activation
// block when asked
Data make_data(const Problem& p, uint64_t seed, bool nan_blocks) {
  const core::Format& e = core::format(p.elem);
  Data d;
  d.mult = core::int8_value_multiplier(e);
  const int codes = 1 << e.bits;
  d.lut.resize(codes);
  for (int c = 0; c < codes; ++c) d.lut[c] = static_cast<int8_t>(std::lrint(core::decode(e, c) * d.mult));
  Generator g(seed);
  auto ints = [&](int64_t n, int hi) {
    Tensor u = empty({n});
    u.uniform_(0, hi, &g);
    std::vector<int> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[i] = std::min(hi - 1, static_cast<int>(u.data_ptr<float>()[i]));
    return v;
  };
  const int64_t gw = p.k / p.block;
  for (int c : ints(p.n * p.k, codes)) d.w_codes.push_back(static_cast<uint8_t>(c));
  for (int c : ints(p.m * p.k, codes)) d.a.push_back(static_cast<uint8_t>(d.lut[c] + 128));
  for (int s : ints(p.n * gw, 29)) d.w_scales.push_back(std::ldexp(1.0f, s - 20) / d.mult);
  for (int s : ints(p.m * gw, 29)) d.a_scales.push_back(std::ldexp(1.0f, s - 20) / d.mult);
  if (nan_blocks) {
    d.w_scales[d.w_scales.size() / 2] = std::numeric_limits<float>::quiet_NaN();
    d.a_scales[d.a_scales.size() / 3] = std::numeric_limits<float>::quiet_NaN();
  }
  if (p.with_bias)
    for (int b : ints(p.n, 2000)) d.bias.push_back(static_cast<float>(b - 1000) / 64.0f);
  return d;
}

std::vector<float> run(const Problem& p, const Data& d, bool reference) {
  const kn::MXInt8Weight w = kn::pack_mx_int8(d.w_codes.data(), d.lut.data(), static_cast<int>(d.lut.size()),
                                              d.w_scales.data(), p.n, p.k, p.block);
  std::vector<float> out(static_cast<size_t>(p.m * p.n));
  kn::gemm_mx_int8(d.a.data(), p.m, d.a_scales.data(), w, p.with_bias ? d.bias.data() : nullptr, out.data(), reference);
  return out;
}

const std::vector<Problem>& problems() {
  using F = core::FormatId;
  static const std::vector<Problem> ps = {
      {1, 16, 32, 32, F::Float4E2M1FN, false},
      {4, 48, 256, 32, F::Float4E2M1FN, true},
      {7, 80, 96, 32, F::Float4E2M1FN, true},
      {9, 32, 128, 16, F::Float4E2M1FN, false},
      {5, 64, 192, 64, F::Float4E2M1FN, true},
      {3, 48, 64, 8, F::Float4E2M1FN, false},
      {6, 48, 128, 32, F::Float6E2M3FN, true},
      {13, 112, 160, 32, F::Float6E2M3FN, false},
      {2, 16, 48, 12, F::Float6E2M3FN, true},
      {1, 4096 / 16 * 16, 512, 32, F::Float4E2M1FN, true},
      {33, 96, 1024, 32, F::Float6E2M3FN, true},
      {2, 48, 256, 32, F::Float6E2M3FN, true},
      {1, 32, 64, 16, F::Float6E2M3FN, false},
      {2, 80, 128, 32, F::Float4E2M1FN, true},
      // longer K (1184 = 37 blocks, 960 = 40 blocks of 24), ragged row blocks
      {11, 48, 1184, 32, F::Float4E2M1FN, true},
      {6, 32, 960, 24, F::Float6E2M3FN, true},
  };
  return ps;
}
}  // namespace

TEST(MXInt8, ValueMultiplierTable) {
  using F = core::FormatId;
  EXPECT_EQ(core::int8_value_multiplier(core::format(F::Float4E2M1FN)), 2);
  EXPECT_EQ(core::int8_value_multiplier(core::format(F::Float6E2M3FN)), 8);
  EXPECT_EQ(core::int8_value_multiplier(core::format(F::Float6E3M2FN)), 0);  // 28 x 16 = 448 > 127
  EXPECT_EQ(core::int8_value_multiplier(core::format(F::Float8E4M3FN)), 0);
  EXPECT_EQ(core::int8_value_multiplier(core::format(F::Float8E5M2)), 0);
  EXPECT_EQ(core::int8_value_multiplier(core::format(F::Float8E8M0FNU)), 0);
  EXPECT_EQ(core::int8_value_multiplier(core::format(F::Int4)), 1);
  EXPECT_EQ(core::int8_value_multiplier(core::format(F::Int8)), 1);
  EXPECT_EQ(core::int8_value_multiplier(core::format(F::UInt8)), 0);  // 255 does not fit int8
}

TEST(MXInt8, PackedLayoutHoldsEveryValue) {
  for (const Problem& p : problems()) {
    const Data d = make_data(p, 5 + p.k, false);
    const kn::MXInt8Weight w = kn::pack_mx_int8(d.w_codes.data(), d.lut.data(), static_cast<int>(d.lut.size()),
                                                d.w_scales.data(), p.n, p.k, p.block);
    EXPECT_EQ(w.nibbles, p.elem == core::FormatId::Float4E2M1FN);
    int64_t bad = 0;
    for (int64_t r = 0; r < p.n; ++r)
      for (int64_t c = 0; c < p.k; ++c) bad += w.value_at(r, c) != d.lut[d.w_codes[r * p.k + c]];
    EXPECT_EQ(bad, 0);
  }
}

TEST(MXInt8, SimdEqualsReferenceBitForBit) {
  if (!kn::simd_available()) GTEST_SKIP() << "AVX-512 VNNI kernels not compiled in";
  for (const Problem& p : problems())
    for (const bool nan : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "m=" << p.m << " n=" << p.n << " k=" << p.k << " block=" << p.block
                                        << " nan=" << nan);
      const Data d = make_data(p, 11 + p.m * 131 + p.n, nan);
      const std::vector<float> simd = run(p, d, false), ref = run(p, d, true);
      int64_t mismatches = 0, nans = 0;
      for (size_t i = 0; i < ref.size(); ++i) {
        nans += std::isnan(ref[i]);
        mismatches += std::memcmp(&simd[i], &ref[i], 4) != 0 && !(std::isnan(simd[i]) && std::isnan(ref[i]));
      }
      EXPECT_EQ(mismatches, 0);
      // a NaN block poisons its row (activation) and its column (weight)
      if (nan) EXPECT_EQ(nans, p.m + p.n - 1);
    }
}

TEST(MXInt8, ReferenceWithinItsBoundOfTheExactSum) {
  for (const Problem& p : problems()) {
    SCOPED_TRACE(::testing::Message() << "m=" << p.m << " n=" << p.n << " k=" << p.k << " block=" << p.block);
    const Data d = make_data(p, 17 + p.k, false);
    const std::vector<float> out = run(p, d, true);
    const int64_t g = p.k / p.block;
    double worst = 0.0;
    for (int64_t i = 0; i < p.m; ++i)
      for (int64_t j = 0; j < p.n; ++j) {
        double exact = p.with_bias ? d.bias[j] : 0.0, mag = p.with_bias ? std::fabs(d.bias[j]) : 0.0;
        for (int64_t c = 0; c < p.k; ++c) {
          const double term = static_cast<double>(d.a[i * p.k + c] - 128) * d.a_scales[i * g + c / p.block] *
                              d.lut[d.w_codes[j * p.k + c]] * d.w_scales[j * g + c / p.block];
          exact += term;
          mag += std::fabs(term);
        }
        if (mag > 0) worst = std::max(worst, std::fabs(out[i * p.n + j] - exact) / mag);
      }
    EXPECT_LE(worst, (g + 1) * std::ldexp(1.0, -24));
  }
}

TEST(MXInt8, PackRefusesWhatTheLayoutCannotHold) {
  const std::vector<uint8_t> codes(16 * 64, 3);
  const std::vector<int8_t> lut16(16, 1), lut64(64, 1);
  const std::vector<float> s(16 * 8, 1.0f);
  t::expect_error([&] { kn::pack_mx_int8(codes.data(), lut16.data(), 16, s.data(), 15, 64, 32); },
                  {"pack_mx_int8", "N=15"});
  t::expect_error([&] { kn::pack_mx_int8(codes.data(), lut16.data(), 16, s.data(), 16, 64, 12); },
                  {"block % 8 == 0", "block=12"});
  std::vector<uint8_t> bad = codes;
  bad[5] = 70;
  t::expect_error([&] { kn::pack_mx_int8(bad.data(), lut64.data(), 64, s.data(), 16, 64, 32); },
                  {"1 codes are outside the value table (64 entries)"});
}

// The converted module's integer path against its dequantize (bfloat16) path, within the two
// paths' float32 bounds: each within (K/block + 1) resp. K roundings of the exact sum.
TEST(MXInt8, QuantizedLinearIntegerPathMatchesDequantizePath) {
  struct Case {
    const char* recipe;
    int64_t in, out, rows;
    bool integer;
  };
  for (const Case& c : std::vector<Case>{{"mxfp4", 256, 96, 37, true},
                                         {"mxfp4", 64, 16, 1, true},
                                         {"mxfp6", 128, 48, 5, true},
                                         {"mxfp4", 64, 40, 3, false},  // N % 16 != 0
                                         {"mxfp8", 128, 48, 5, false}}) {
    SCOPED_TRACE(::testing::Message() << c.recipe << " " << c.in << "->" << c.out << " rows=" << c.rows);
    manual_seed(31);
    auto model = std::make_shared<nn::Sequential>(
        std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(c.in, c.out)});
    const auto base = qat::recipe_config(c.recipe, "int4", 32);
    qat::quantize_(model, qat::QATConfig(base, "prepare"));
    qat::quantize_(model, qat::QATConfig(base, "convert"));
    auto* mq = dynamic_cast<qat::MXQuantizedLinear*>(model->get_submodule("0").get());
    ASSERT_NE(mq, nullptr);
    const bool expect_int = c.integer && kn::simd_available();
    EXPECT_EQ(mq->kernel_name(), expect_int ? "int8 GEMM (VNNI)" : "dequantize + bfloat16 GEMM");
    const Tensor x = mul(randn({c.rows, c.in}), full({1}, 3.0f));
    NoGradGuard ng;
    const Tensor y_int = mq->forward(x);
    mq->kernel = qat::MXQuantizedLinear::Kernel::Dequantize;
    EXPECT_EQ(mq->kernel_name(), "dequantize + bfloat16 GEMM");
    const Tensor y_dq = mq->forward(x);
    mq->kernel = qat::MXQuantizedLinear::Kernel::Integer;
    // the quantized activation and weight values give the magnitude of each output's sum
    auto fq = std::make_shared<qat::FakeQuantizer>(*mq->activation_config);
    const Tensor mag = add(matmul(abs(fq->forward(x)), abs(mq->dequantized_weight()).t()), abs(mq->bias.to(kFloat32)));
    double worst = 0.0;
    for (int64_t i = 0; i < mag.numel(); ++i)
      worst = std::max(worst, std::fabs(static_cast<double>(y_int.data_ptr<float>()[i]) - y_dq.data_ptr<float>()[i]) /
                                  (mag.data_ptr<float>()[i] + 1e-30));
    EXPECT_LE(worst, (c.in + c.in / 32 + 2) * std::ldexp(1.0, -24));
    // an in-place change of the stored weight re-packs it (integer path) and re-makes the cached
    // bfloat16 weight (dequantize path)
    double fill = 2.0;
    for (const auto k : {qat::MXQuantizedLinear::Kernel::Integer, qat::MXQuantizedLinear::Kernel::Dequantize}) {
      if (k == qat::MXQuantizedLinear::Kernel::Integer && !expect_int) continue;
      mq->kernel = k;
      const Tensor before = mq->forward(x);
      mq->weight_scale.fill_(fill);  // every block scale the same power of two
      fill *= 2.0;
      const Tensor after = mq->forward(x);
      EXPECT_GT(t::count_mismatches(before, after), 0) << mq->kernel_name();
    }
    mq->kernel = qat::MXQuantizedLinear::Kernel::Integer;
  }
}
