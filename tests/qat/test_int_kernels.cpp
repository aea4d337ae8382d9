// Integer kernels of converted linears: the AVX-512 kernels against their scalar references, and
// QuantizedLinear's integer path against its exact (dequantize) path within the stated bound
// |integer - dequantize| <= 1e-5 * sum_k |x_dq[k] * w_dq[k]| (+ 1e-6 |bias|) per output.
#include <gtest/gtest.h>

#include <cstring>

#include <lowbit/lowbit.h>

#include "qat/src/int_kernels.h"
#include "golden.h"
#include "test_util.h"

using namespace lowbit;
using namespace lowbit::qat;

namespace {
std::vector<int8_t> random_codes(int64_t n, int lo, int hi, uint64_t seed) {
  Generator g(seed);
  Tensor t = empty({n});
  t.uniform_(lo, hi + 1, &g);
  std::vector<int8_t> c(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    c[i] = static_cast<int8_t>(std::min<float>(std::floor(t.data_ptr<float>()[i]), static_cast<float>(hi)));
  return c;
}
std::vector<float> random_floats(int64_t n, double lo, double hi, uint64_t seed) {
  Generator g(seed);
  Tensor t = empty({n});
  t.uniform_(lo, hi, &g);
  return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + n);
}
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// max over outputs of |a - b| / (sum_k |x_dq w_dq| + |bias|)
double bound_ratio(const Tensor& a, const Tensor& b, const Tensor& xdq, const Tensor& wdq, const Tensor& bias) {
  NoGradGuard ng;
  Tensor mag = matmul(abs(xdq.reshape({-1, xdq.size(-1)})), abs(wdq).t());
  if (bias.defined()) mag = add(mag, abs(bias));
  const Tensor d = abs(sub(a.reshape(mag.shape()), b.reshape(mag.shape())));
  double worst = 0.0;
  for (int64_t i = 0; i < d.numel(); ++i)
    worst = std::max(worst, static_cast<double>(d.data_ptr<float>()[i]) / (mag.data_ptr<float>()[i] + 1e-30));
  return worst;
}
}  // namespace

TEST(IntKernels, GroupedGemmSimdEqualsReferenceBitForBit) {
  if (!kernels::simd_available()) GTEST_SKIP() << "AVX-512 VNNI kernels not compiled in";
  for (const auto [n, k, group, lo, hi] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, int, int>>{{16, 128, 32, -8, 7},
                                                                    {48, 256, 32, -8, 7},
                                                                    {80, 512, 64, -2, 1},
                                                                    {96, 768, 768, -128, 127},
                                                                    {32, 1024, 4, -128, 127}}) {
    const auto codes = random_codes(n * k, lo, hi, 1 + n);
    const auto scales = random_floats(n * (k / group), 1e-3, 2e-2, 2 + n);
    const auto bias = random_floats(n, -1, 1, 3);
    const auto w = kernels::pack_grouped_s8(codes.data(), scales.data(), n, k, group);
    for (int64_t m : {1, 2, 3, 4, 7, 11}) {
      SCOPED_TRACE(fmt::format("M={} N={} K={} group={}", m, n, k, group));
      std::vector<uint8_t> a(static_cast<size_t>(m * k));
      const auto af = random_floats(m * k, 0, 256, 4 + m);
      for (int64_t i = 0; i < m * k; ++i) a[i] = static_cast<uint8_t>(std::min(af[i], 255.0f));
      const auto rs = random_floats(m, 1e-3, 1e-1, 5), off = random_floats(m, 100, 160, 6);
      std::vector<float> fast(static_cast<size_t>(m * n)), ref(fast.size());
      for (const float* b : {bias.data(), static_cast<const float*>(nullptr)}) {
        kernels::gemm_u8s8_grouped(a.data(), m, w, rs.data(), off.data(), b, fast.data());
        kernels::gemm_u8s8_grouped(a.data(), m, w, rs.data(), off.data(), b, ref.data(), /*reference=*/true);
        int mismatches = 0;
        for (size_t i = 0; i < fast.size(); ++i) mismatches += bits(fast[i]) != bits(ref[i]);
        EXPECT_EQ(mismatches, 0);
      }
    }
  }
  lowbit::testing::expect_error([] { kernels::pack_grouped_s8(nullptr, nullptr, 24, 64, 32); },
                                {"pack_grouped_s8", "N=24"});
}

TEST(IntKernels, WeightOnlyGemvSimdMatchesReference) {
  if (!kernels::simd_available()) GTEST_SKIP() << "AVX-512 kernels not compiled in";
  for (const auto [bitw, n, k, group, with_zp] : std::vector<std::tuple<int, int64_t, int64_t, int64_t, bool>>{
           {4, 37, 256, 32, false}, {4, 64, 512, 128, true}, {8, 21, 256, 256, false}, {8, 16, 192, 64, true}}) {
    const int64_t g = k / group, row_bytes = bitw == 4 ? k / 2 : k;
    const auto codes = random_codes(n * k, bitw == 4 ? -8 : -128, bitw == 4 ? 7 : 127, 7);
    std::vector<uint8_t> q(static_cast<size_t>(n * row_bytes));
    for (int64_t i = 0; i < n * k; ++i) {
      if (bitw == 8)
        q[i] = static_cast<uint8_t>(codes[i]);
      else
        q[i / 2] |= static_cast<uint8_t>((codes[i] & 0x0f) << ((i % 2) * 4));
    }
    const auto scales = random_floats(n * g, 1e-3, 2e-2, 8);
    const auto zp = with_zp ? random_codes(n * g, -3, 3, 9) : std::vector<int8_t>(static_cast<size_t>(n * g), 0);
    const auto bias = random_floats(n, -1, 1, 10);
    for (int64_t rows : {1, 2, 3, 4, 5, 9}) {
      SCOPED_TRACE(fmt::format("bits={} rows={} N={} K={} group={} zp={}", bitw, rows, n, k, group, with_zp));
      const auto x = random_floats(rows * k, -2, 2, 11 + rows);
      std::vector<float> fast(static_cast<size_t>(rows * n)), ref(fast.size());
      kernels::gemv_weight_only(x.data(), rows, q.data(), bitw, n, k, group, scales.data(), zp.data(), bias.data(),
                                fast.data());
      kernels::gemv_weight_only(x.data(), rows, q.data(), bitw, n, k, group, scales.data(), zp.data(), bias.data(),
                                ref.data(), true);
      // the same products summed in another order
      for (size_t i = 0; i < fast.size(); ++i) EXPECT_NEAR(fast[i], ref[i], 2e-5 * (1.0 + std::abs(ref[i]))) << i;
    }
  }
}

// Every recipe: the default (integer) path against the exact path of the same converted module,
// within the stated bound, with the integer kernel actually taken where the CPU has it.
TEST(QuantizedLinear, IntegerPathWithinStatedBoundOfDequantizePath) {
  struct Case {
    const char* recipe;
    const char* weight_dtype;
    int64_t group, rows;
    const char* path;
  };
  for (const Case c :
       {Case{"8da4w", "int4", 32, 37, "int8 GEMM (VNNI)"}, Case{"8da-intx", "int2", 64, 5, "int8 GEMM (VNNI)"},
        Case{"8da-intx", "int8", 128, 3, "int8 GEMM (VNNI)"}, Case{"int8-dyn", "int8", 32, 19, "int8 GEMM (VNNI)"},
        Case{"int4-weight-only", "int4", 64, 1, "weight-only GEMV"},
        Case{"int4-weight-only", "int4", 32, 6, "weight-only GEMV"},
        Case{"intx-weight-only", "int3", 32, 2, "weight-only GEMV"},
        Case{"int8-weight-only", "int8", 32, 1, "weight-only GEMV"},
        Case{"int4-weight-only", "int4", 32, 40, "dequantize + float32 GEMM"}}) {
    SCOPED_TRACE(fmt::format("{} {} g{} rows={}", c.recipe, c.weight_dtype, c.group, c.rows));
    manual_seed(5);
    auto lin = std::make_shared<nn::Linear>(256, 80);
    auto conv = quantize_(lin, *recipe_config(c.recipe, c.weight_dtype, c.group));
    auto* ql = dynamic_cast<QuantizedLinear*>(conv.get());
    ASSERT_NE(ql, nullptr);
    const Tensor x = mul(randn({c.rows, 256}), 2.0);
    NoGradGuard ng;
    if (kernels::simd_available()) EXPECT_EQ(ql->kernel_for(c.rows), c.path);
    const Tensor y_int = ql->forward(x);
    ql->kernel = QuantizedLinear::Kernel::Dequantize;
    EXPECT_EQ(ql->kernel_for(c.rows), "dequantize + float32 GEMM");
    const Tensor y_deq = ql->forward(x);
    ql->kernel = QuantizedLinear::Kernel::Integer;
    Tensor xdq = x;
    if (ql->activation_config) xdq = FakeQuantizer(*ql->activation_config).forward(x);
    const double r = bound_ratio(y_int, y_deq, xdq, ql->dequantized_weight(), ql->bias);
    EXPECT_LE(r, 1e-5);
    std::printf("%-18s %-5s g%-4lld rows=%-3lld %-26s |int - dequant| / sum|x w| <= %.2e\n", c.recipe, c.weight_dtype,
                static_cast<long long>(c.group), static_cast<long long>(c.rows), ql->kernel_for(c.rows).c_str(), r);
  }
}

TEST(QuantizedLinear, PackedWeightsFollowLoadStateDictAndShapes) {
  manual_seed(1);
  auto a = quantize_(std::make_shared<nn::Linear>(128, 32), *recipe_config("8da4w", "int4", 32));
  auto b = quantize_(std::make_shared<nn::Linear>(128, 32), *recipe_config("8da4w", "int4", 32));
  const Tensor x = randn({2, 3, 128});
  NoGradGuard ng;
  const Tensor ya = a->forward(x), yb = b->forward(x);  // packs a's weights
  EXPECT_EQ(ya.shape(), (Shape{2, 3, 32}));
  EXPECT_GT(lowbit::testing::rel_err(ya, yb), 1e-2);
  a->load_state_dict(b->state_dict());
  const Tensor ya2 = a->forward(x);  // the cache must see the new codes
  std::string where;
  EXPECT_EQ(lowbit::testing::count_mismatches(ya2, yb, &where), 0) << where;
  lowbit::testing::expect_error(
      [&] {
        a->forward(randn({4, 100}));
      },
      {"QuantizedLinear", "[4, 100]", "in_features=128"});
}

TEST(QuantizedLinear, InputsThatRequireGradTakeTheDifferentiablePath) {
  manual_seed(2);
  auto q = quantize_(std::make_shared<nn::Linear>(64, 16), *recipe_config("int8-dyn"));
  Tensor x = randn({4, 64}).requires_grad_();
  Tensor y = q->forward(x);
  sum(y).backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_EQ(x.grad().shape(), (Shape{4, 64}));
}

TEST(QuantizedLinear, BFloat16InputsTakeTheExactPathInTheirDtype) {
  manual_seed(3);
  auto q = quantize_(std::make_shared<nn::Linear>(64, 16), *recipe_config("8da4w", "int4", 32));
  auto* ql = dynamic_cast<QuantizedLinear*>(q.get());
  ASSERT_NE(ql, nullptr);
  const Tensor x = randn({4, 64}).to(kBFloat16);
  NoGradGuard ng;
  const Tensor y = q->forward(x);
  EXPECT_EQ(y.dtype(), kBFloat16);
  // the same as the dequantize path on the bf16 input (activation fake-quantized in bf16)
  const Tensor xq = FakeQuantizer(*ql->activation_config).forward(x);
  const Tensor expect = linear(xq, ql->dequantized_weight().to(kBFloat16), ql->bias.to(kBFloat16));
  std::string where;
  EXPECT_EQ(lowbit::testing::count_mismatches(y, expect, &where), 0) << where;
}
