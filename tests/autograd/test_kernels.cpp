// Optimized float32 kernels against their plain reference implementations at sizes that take
// the vectorized, blocked and multi-threaded paths.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "op_harness.h"
#include "test_util.h"

using namespace lowbit;
using lowbit::testing::max_rel_err;

namespace {
Tensor rnd(const Shape& s, uint64_t seed, double lo = -3, double hi = 3) {
  Generator g(seed);
  Tensor t = empty(s);
  t.uniform_(lo, hi, &g);
  return t;
}
// runs f with optimized and with reference kernels, returns max relative error
double compare(const std::function<Tensor()>& f) {
  Tensor fast = f();
  set_reference_kernels(true);
  Tensor ref = f();
  set_reference_kernels(false);
  EXPECT_EQ(fast.shape(), ref.shape());
  return max_rel_err(fast, ref);
}
}  // namespace

TEST(Kernels, BinaryBroadcastPaths) {
  const Tensor a = rnd({64, 300}, 1), b = rnd({64, 300}, 2), row = rnd({300}, 3), col = rnd({64, 1}, 4), s = rnd({}, 5);
  EXPECT_EQ(compare([&] { return add(a, b); }), 0.0);
  EXPECT_EQ(compare([&] { return mul(a, row); }), 0.0);
  EXPECT_EQ(compare([&] { return div(a, col); }), 0.0);
  EXPECT_EQ(compare([&] { return sub(s, a); }), 0.0);
  EXPECT_EQ(compare([&] { return maximum(col, row); }), 0.0);
  EXPECT_EQ(compare([&] { return gt(a, row).to(kFloat32); }), 0.0);
  const Tensor big = rnd({1 << 18}, 6), big2 = rnd({1 << 18}, 7);
  EXPECT_EQ(compare([&] { return mul(big, big2); }), 0.0);
}

TEST(Kernels, UnaryAndActivationKernels) {
  const Tensor x = rnd({1 << 17}, 11, -8, 8), pos = rnd({1 << 17}, 12, 0.01, 50);
  EXPECT_LE(compare([&] { return exp(x); }), 2e-6);
  EXPECT_LE(compare([&] { return log(pos); }), 2e-6);
  EXPECT_LE(compare([&] { return tanh(x); }), 4e-6);
  EXPECT_LE(compare([&] { return sigmoid(x); }), 2e-6);
  EXPECT_LE(compare([&] { return silu(x); }), 4e-6);
  EXPECT_LE(compare([&] { return gelu(x); }), 4e-6);
  EXPECT_LE(compare([&] { return gelu(x, "tanh"); }), 4e-6);
  EXPECT_EQ(compare([&] { return relu(x); }), 0.0);
  EXPECT_EQ(compare([&] { return clamp(x, -1.0, 2.0); }), 0.0);
  EXPECT_LE(compare([&] { return sqrt(pos); }), 1e-7);
}

TEST(Kernels, BackwardKernels) {
  const Tensor x0 = rnd({1 << 16}, 21, -6, 6), w = rnd({1 << 16}, 22);
  for (auto f : std::vector<std::function<Tensor(const Tensor&)>>{
           [](const Tensor& x) { return relu(x); }, [](const Tensor& x) { return gelu(x); },
           [](const Tensor& x) { return gelu(x, "tanh"); }, [](const Tensor& x) { return silu(x); },
           [](const Tensor& x) { return tanh(x); }, [](const Tensor& x) { return sigmoid(x); }}) {
    EXPECT_LE(compare([&] {
                Tensor x = x0.clone().requires_grad_();
                sum(mul(f(x), w)).backward();
                return x.grad();
              }),
              2e-5);
  }
}

TEST(Kernels, Reductions) {
  const Tensor x = rnd({3, 70000}, 31), y = rnd({40, 50, 60}, 32), big = rnd({1 << 22}, 33);
  EXPECT_LE(compare([&] { return sum(x, {1}); }), 4e-6);
  EXPECT_LE(compare([&] { return sum(big); }), 1e-6);
  EXPECT_LE(compare([&] { return sum(y, {0}); }), 1e-6);
  EXPECT_LE(compare([&] { return sum(y, {1}); }), 1e-6);
  EXPECT_LE(compare([&] { return mean(y, {0, 2}); }), 1e-6);
  EXPECT_EQ(compare([&] { return amax(y, {2}); }), 0.0);
  EXPECT_EQ(compare([&] { return amin(y, {0, 1}); }), 0.0);
  EXPECT_LE(compare([&] { return softmax(y, -1); }), 1e-6);
  EXPECT_LE(compare([&] { return log_softmax(y, 1); }), 1e-6);
}

TEST(Kernels, ReductionsAreThreadCountIndependent) {
  const Tensor big = rnd({(1 << 22) + 123}, 41), rows = rnd({7, 100003}, 42);
  const int saved = get_num_threads();
  std::vector<Tensor> r;
  for (int t : {1, 2, 3}) {
    set_num_threads(t);
    r.push_back(cat({sum(big).reshape({1}), sum(rows, {1}), amax(rows, {1})}));
  }
  set_num_threads(saved);
  EXPECT_EQ(std::memcmp(r[0].raw_data(), r[1].raw_data(), r[0].nbytes()), 0);
  EXPECT_EQ(std::memcmp(r[0].raw_data(), r[2].raw_data(), r[0].nbytes()), 0);
}

TEST(Kernels, NanPropagation) {
  Tensor x = from_vector<float>({1.0f, std::nanf(""), 3.0f});
  EXPECT_TRUE(std::isnan(amax(x).item<float>()));
  EXPECT_TRUE(std::isnan(amin(x).item<float>()));
  EXPECT_TRUE(std::isnan(max(x, 0).first.item<float>()));
  EXPECT_TRUE(std::isnan(relu(x).data_ptr<float>()[1]));
  EXPECT_TRUE(std::isnan(clamp(x, 0.0, 2.0).data_ptr<float>()[1]));
  EXPECT_TRUE(std::isnan(maximum(x, zeros({3})).data_ptr<float>()[1]));
}

// float32 accumulation over K up to 784 terms of |a*b| <= 9: rounding differences reach ~1e-4
// relative to max(1, |result|) when the result is small; a wrong kernel is off by O(1).
constexpr double kGemmTol = 5e-4;
TEST(Kernels, GemmAllTransposesAgainstReference) {
  for (auto [m, k, n] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{256, 784, 64}, {33, 17, 65}, {1, 300, 200}}) {
    const Tensor a = rnd({m, k}, 51), b = rnd({k, n}, 52), w = rnd({n, k}, 53), bias = rnd({n}, 54),
                 g = rnd({m, n}, 55);
    EXPECT_LE(compare([&] { return matmul(a, b); }), kGemmTol);
    EXPECT_LE(compare([&] { return linear(a, w, bias); }), kGemmTol);
    EXPECT_LE(compare([&] {  // linear backward products: g·W and gᵀ·X
                Tensor x = a.clone().requires_grad_(), wt = w.clone().requires_grad_();
                linear(x, wt).backward(g);
                return cat({x.grad().flatten(), wt.grad().flatten()});
              }),
              kGemmTol);
  }
  const Tensor a = rnd({4, 30, 20}, 56), b = rnd({4, 20, 10}, 57), b1 = rnd({1, 20, 10}, 58);
  EXPECT_LE(compare([&] { return matmul(a, b); }), kGemmTol);
  EXPECT_LE(compare([&] { return matmul(a, b1); }), kGemmTol);
}

TEST(Kernels, PermuteMatchesIndexing) {
  const Tensor x = rnd({3, 4, 5, 6}, 61);
  const Tensor p = permute(x, {2, 0, 3, 1});
  ASSERT_EQ(p.shape(), (Shape{5, 3, 6, 4}));
  const float* xp = x.data_ptr<float>();
  const float* pp = p.data_ptr<float>();
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 4; ++b)
      for (int c = 0; c < 5; ++c)
        for (int d = 0; d < 6; ++d) ASSERT_EQ(pp[((c * 3 + a) * 6 + d) * 4 + b], xp[((a * 4 + b) * 5 + c) * 6 + d]);
}

TEST(Kernels, GemmBf16IsExactWhereFloat32SumsAre) {
  // small integers: every product and every partial sum is exact in float32, so oneDNN's bf16
  // GEMM must equal the exact result bit for bit, for every transpose and with a bias
  Generator g(17);
  for (const auto& [m, n, k] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1}, {7, 5, 3}, {64, 96, 256}, {256, 130, 100}}) {
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        SCOPED_TRACE(fmt::format("m={} n={} k={} ta={} tb={}", m, n, k, ta, tb));
        Tensor a32 = randint(-8, 9, ta ? Shape{k, m} : Shape{m, k}, &g).to(kFloat32);
        Tensor b32 = randint(-8, 9, tb ? Shape{n, k} : Shape{k, n}, &g).to(kFloat32);
        Tensor bias = randint(-100, 100, {n}, &g).to(kFloat32);
        const Tensor c = gemm_bf16(a32.to(kBFloat16), ta, b32.to(kBFloat16), tb, bias);
        ASSERT_EQ(c.shape(), (Shape{m, n}));
        ASSERT_EQ(c.dtype(), kFloat32);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double s = bias.data_ptr<float>()[j];
            for (int64_t q = 0; q < k; ++q)
              s += static_cast<double>(a32.data_ptr<float>()[ta ? q * m + i : i * k + q]) *
                   b32.data_ptr<float>()[tb ? j * k + q : q * n + j];
            ASSERT_EQ(c.data_ptr<float>()[i * n + j], static_cast<float>(s)) << i << ", " << j;
          }
      }
  }
}

TEST(Kernels, GemmFloat32TransposesBatchesAndErrors) {
  // small integers: exact in float32, so every transpose, the batch (and a broadcast batch of 1)
  // and the bias must give the exact sums
  Generator g(19);
  const int64_t bt = 3, m = 37, n = 20, k = 50;
  for (const int64_t ba : {bt, int64_t{1}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        SCOPED_TRACE(fmt::format("ba={} ta={} tb={}", ba, ta, tb));
        const Tensor a = randint(-8, 9, ta ? Shape{ba, k, m} : Shape{ba, m, k}, &g).to(kFloat32);
        const Tensor b = randint(-8, 9, tb ? Shape{bt, n, k} : Shape{bt, k, n}, &g).to(kFloat32);
        const Tensor bias = randint(-100, 100, {n}, &g).to(kFloat32);
        const Tensor c = gemm(a, ta, b, tb, bias);
        ASSERT_EQ(c.shape(), (Shape{bt, m, n}));
        const float* ap = a.data_ptr<float>();
        const float* bp = b.data_ptr<float>();
        for (int64_t p = 0; p < bt; ++p)
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
              double s = bias.data_ptr<float>()[j];
              const float* pa = ap + (ba == 1 ? 0 : p) * m * k;
              const float* pb = bp + p * k * n;
              for (int64_t q = 0; q < k; ++q)
                s += static_cast<double>(ta ? pa[q * m + i] : pa[i * k + q]) * (tb ? pb[j * k + q] : pb[q * n + j]);
              ASSERT_EQ(c.data_ptr<float>()[(p * m + i) * n + j], static_cast<float>(s)) << p << " " << i << " " << j;
            }
      }
  const Tensor a = randn({4, 5}, &g), b = randn({6, 5}, &g);
  EXPECT_EQ(gemm(a, false, b, true).shape(), (Shape{4, 6}));
  lowbit::testing::expect_error([&] { gemm(a, false, b, false); }, {"gemm: op(A) is 4x5 but op(B) is 6x5"});
  lowbit::testing::expect_error([&] { gemm(a.to(kFloat64), false, b, true); }, {"gemm", "float32"});
  lowbit::testing::expect_error([&] { gemm(a, false, b, true, randn({5}, &g)); }, {"gemm: bias", "6 elements"});
  lowbit::testing::expect_error(
      [&] {
        gemm(randn({2, 4, 5}, &g), false, randn({3, 6, 5}, &g), true);
      },
      {"gemm: batch counts 2 and 3"});
}

TEST(Kernels, GemmBf16MatchesFloat32GemmOfTheSameValues) {
  // random bf16 values: only the summation order differs from the float32 GEMM of the upcast values
  Generator g(18);
  const int64_t m = 200, n = 300, k = 784;
  const Tensor a = randn({m, k}, &g).to(kBFloat16), b = randn({n, k}, &g).to(kBFloat16);
  const Tensor c = gemm_bf16(a, false, b, true);
  const Tensor ref = matmul(a.to(kFloat32), b.to(kFloat32).t());
  const Tensor abs_ref = matmul(abs(a.to(kFloat32)), abs(b.to(kFloat32)).t());
  for (int64_t i = 0; i < m * n; ++i)
    ASSERT_LE(std::fabs(c.data_ptr<float>()[i] - ref.data_ptr<float>()[i]),
              2.0 * k * 1.2e-7 * abs_ref.data_ptr<float>()[i])
        << i;
  set_reference_kernels(true);
  const Tensor c_ref = gemm_bf16(a, false, b, true);
  set_reference_kernels(false);
  for (int64_t i = 0; i < m * n; ++i)  // against float64 sums of the same products
    ASSERT_LE(std::fabs(c.data_ptr<float>()[i] - c_ref.data_ptr<float>()[i]), k * 1.2e-7 * abs_ref.data_ptr<float>()[i])
        << i;
  lowbit::testing::expect_error([&] { gemm_bf16(a.to(kFloat32), false, b, true); }, {"gemm_bf16", "bfloat16"});
  lowbit::testing::expect_error([&] { gemm_bf16(a, false, b, false); },
                                {"gemm_bf16: op(A) is 200x784 but op(B) is 300x784"});
}

// The fused layer_norm (one pass forward, one backward) against its composition of elementary
// ops, at a GPT block's shape: outputs and every gradient within a few float32 ulps of the row
// scale; and the same bits for 1, 2 and 3 threads (the weight and bias gradients are summed over
// fixed chunks of rows).
TEST(Kernels, FusedLayerNormMatchesItsComposition) {
  Generator g(31);
  const int64_t rows = 4 * 128 + 3, c = 256;
  const Tensor x0 = add(mul(randn({rows, c}, &g), 3.0), 1.5), w0 = randn({c}, &g), b0 = randn({c}, &g);
  const Tensor dy = randn({rows, c}, &g);
  auto composed = [&](const Tensor& x, const Tensor& w, const Tensor& b) {
    const Tensor mu = mean(x, {1}, true), xc = sub(x, mu);
    return add(mul(mul(xc, rsqrt(add(mean(mul(xc, xc), {1}, true), 1e-5))), w), b);
  };
  Tensor x1 = x0.clone().requires_grad_(), w1 = w0.clone().requires_grad_(), b1 = b0.clone().requires_grad_();
  Tensor x2 = x0.clone().requires_grad_(), w2 = w0.clone().requires_grad_(), b2 = b0.clone().requires_grad_();
  const Tensor y1 = layer_norm(x1, {c}, w1, b1, 1e-5), y2 = composed(x2, w2, b2);
  EXPECT_EQ(y1.grad_fn_name(), "NativeLayerNormBackward0");
  y1.backward(dy);
  y2.backward(dy);
  auto max_diff = [](const Tensor& a, const Tensor& b) {
    double m = 0;
    for (int64_t i = 0; i < a.numel(); ++i)
      m = std::max(m, std::fabs(static_cast<double>(a.data_ptr<float>()[i]) - b.data_ptr<float>()[i]));
    return m;
  };
  EXPECT_LT(max_diff(y1, y2), 2e-5);
  EXPECT_LT(max_diff(x1.grad(), x2.grad()), 2e-5);
  EXPECT_LT(max_diff(w1.grad(), w2.grad()), 2e-3);  // sums over 515 rows of values ~1
  EXPECT_LT(max_diff(b1.grad(), b2.grad()), 2e-3);
  // thread-count independence
  std::vector<Tensor> grads;
  for (int t : {1, 2, 3}) {
    set_num_threads(t);
    Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_();
    layer_norm(x, {c}, w, Tensor(), 1e-5).backward(dy);
    grads.push_back(w.grad());
    grads.push_back(x.grad());
  }
  set_num_threads(2);
  for (size_t i = 2; i < grads.size(); ++i)
    EXPECT_EQ(std::memcmp(grads[i].raw_data(), grads[i % 2].raw_data(), grads[i].nbytes()), 0) << i;
}

// softmax / log_softmax backward over the last dim, fused into one pass per row, against the
// composition PyTorch's formulas spell out (attention-sized scores).
TEST(Kernels, FusedSoftmaxBackwardMatchesItsComposition) {
  Generator g(32);
  const Tensor x0 = mul(randn({8, 128, 128}, &g), 4.0), dy = randn({8, 128, 128}, &g);
  for (bool log : {false, true}) {
    SCOPED_TRACE(log ? "log_softmax" : "softmax");
    Tensor x = x0.clone().requires_grad_();
    const Tensor y = log ? log_softmax(x, -1) : softmax(x, -1);
    y.backward(dy);
    NoGradGuard ng;
    const Tensor want =
        log ? sub(dy, mul(exp(y), sum(dy, {2}, true))) : sub(mul(dy, y), mul(y, sum(mul(dy, y), {2}, true)));
    double m = 0;
    for (int64_t i = 0; i < want.numel(); ++i)
      m = std::max(m, std::fabs(static_cast<double>(x.grad().data_ptr<float>()[i]) - want.data_ptr<float>()[i]));
    EXPECT_LT(m, 1e-5);
  }
}

namespace {
double max_abs_diff(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(kFloat64), y = b.to(kFloat64);
  EXPECT_EQ(x.shape(), y.shape());
  double m = 0;
  for (int64_t i = 0; i < x.numel(); ++i) m = std::max(m, std::fabs(x.data_ptr<double>()[i] - y.data_ptr<double>()[i]));
  return m;
}
// Attention spelled out in elementary ops (what the fused kernel replaces).
Tensor attention_composed(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale) {
  Tensor s = mul(matmul(q, transpose(k, -2, -1)), scale);
  if (causal) {
    const int64_t L = q.size(-2), S = k.size(-2);
    Tensor m = empty({L, S}, kBool);
    for (int64_t i = 0; i < L; ++i)
      for (int64_t j = 0; j < S; ++j) m.data_ptr<bool>()[i * S + j] = j > i;
    s = masked_fill(s, m, -std::numeric_limits<double>::infinity());
  }
  return matmul(softmax(s, -1), v);
}
}  // namespace

// scaled_dot_product_attention's fused float32 kernel (one batched GEMM with Kᵀ as strides, one
// scale + mask + softmax pass per row, P·V; one backward node) against the composition of
// elementary ops in float64: outputs and the three gradients, causal or not, more keys than
// queries and fewer, 3-D and 4-D inputs, an explicit scale.
TEST(Kernels, FusedAttentionMatchesItsComposition) {
  Generator g(33);
  struct Case {
    Shape lead;
    int64_t L, S, E, Ev;
    bool causal;
    std::optional<double> scale;
  };
  const std::vector<Case> cases = {{{6}, 33, 33, 16, 16, true, std::nullopt},
                                   {{2, 3}, 17, 29, 8, 12, true, std::nullopt},
                                   {{2, 3}, 29, 17, 8, 12, true, 0.3},
                                   {{5}, 20, 24, 32, 8, false, std::nullopt}};
  for (const auto& c : cases) {
    SCOPED_TRACE(fmt::format("lead {} L={} S={} causal={}", shape_str(c.lead), c.L, c.S, c.causal));
    auto shape = [&](int64_t r, int64_t cols) {
      Shape s = c.lead;
      s.insert(s.end(), {r, cols});
      return s;
    };
    const Tensor q0 = mul(randn(shape(c.L, c.E), &g), 2.0), k0 = randn(shape(c.S, c.E), &g),
                 v0 = randn(shape(c.S, c.Ev), &g), dy = randn(shape(c.L, c.Ev), &g);
    Tensor q = q0.clone().requires_grad_(), k = k0.clone().requires_grad_(), v = v0.clone().requires_grad_();
    const Tensor y = scaled_dot_product_attention(q, k, v, Tensor(), 0.0, c.causal, c.scale);
    EXPECT_EQ(y.grad_fn_name(), "ScaledDotProductAttentionBackward0");
    y.backward(dy);
    Tensor qd = q0.to(kFloat64).requires_grad_(), kd = k0.to(kFloat64).requires_grad_(),
           vd = v0.to(kFloat64).requires_grad_();
    const double sc = c.scale ? *c.scale : 1.0 / std::sqrt(static_cast<double>(c.E));
    const Tensor yd = attention_composed(qd, kd, vd, c.causal, sc);
    yd.backward(dy.to(kFloat64));
    EXPECT_LT(max_abs_diff(y, yd), 2e-5);
    EXPECT_LT(max_abs_diff(q.grad(), qd.grad()), 5e-5);
    EXPECT_LT(max_abs_diff(k.grad(), kd.grad()), 5e-5);
    EXPECT_LT(max_abs_diff(v.grad(), vd.grad()), 5e-5);
  }
  // only the inputs that need a gradient get one
  Tensor q = randn({2, 8, 4}, &g).requires_grad_(), k = randn({2, 8, 4}, &g), v = randn({2, 8, 4}, &g);
  scaled_dot_product_attention(q, k, v, Tensor(), 0.0, true).backward(ones({2, 8, 4}));
  EXPECT_TRUE(q.grad().defined());
  EXPECT_FALSE(k.grad().defined());
}

// attention_qkv (heads split from and merged into (B, T, 3C) without permutes) against the
// composition it replaces: permute to (3, B, H, T, D), attention per head, permute back — in
// float64 for the fused float32 kernel; bit for bit for the dropout path (which is that
// composition, with the same generator).
TEST(Kernels, AttentionQkvMatchesPermutedHeads) {
  Generator g(34);
  const int64_t B = 3, T = 19, H = 4, D = 8, C = H * D;
  auto composed = [&](const Tensor& qkv, bool causal, double dropout_p, Generator* gen) {
    const Tensor heads = permute(qkv.reshape({B, T, 3, H, D}), {2, 0, 3, 1, 4});
    const Tensor y = scaled_dot_product_attention(heads.select(0, 0), heads.select(0, 1), heads.select(0, 2), Tensor(),
                                                  dropout_p, causal, std::nullopt, gen);
    return permute(y, {0, 2, 1, 3}).reshape({B, T, C});
  };
  const Tensor x0 = randn({B, T, 3 * C}, &g), dy = randn({B, T, C}, &g);
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "full");
    Tensor x = x0.clone().requires_grad_(), xd = x0.to(kFloat64).requires_grad_();
    const Tensor y = attention_qkv(x, H, causal);
    EXPECT_EQ(y.grad_fn_name(), "AttentionQkvBackward0");
    const Tensor yd = composed(xd, causal, 0.0, nullptr);
    y.backward(dy);
    yd.backward(dy.to(kFloat64));
    EXPECT_LT(max_abs_diff(y, yd), 2e-5);
    EXPECT_LT(max_abs_diff(x.grad(), xd.grad()), 5e-5);
  }
  {  // dropout: the composition itself, the same bits for the same generator
    Generator g1(5), g2(5);
    Tensor x1 = x0.clone().requires_grad_(), x2 = x0.clone().requires_grad_();
    const Tensor y1 = attention_qkv(x1, H, true, 0.25, std::nullopt, &g1), y2 = composed(x2, true, 0.25, &g2);
    EXPECT_EQ(std::memcmp(y1.raw_data(), y2.raw_data(), y1.nbytes()), 0);
    y1.backward(dy);
    y2.backward(dy);
    EXPECT_EQ(std::memcmp(x1.grad().raw_data(), x2.grad().raw_data(), x1.grad().nbytes()), 0);
  }
  lowbit::testing::expect_error(
      [&] {
        attention_qkv(randn({2, 5, 10}, &g), 2);
      },
      {"attention_qkv", "(batch, seq, 3 * d_model)", "[2, 5, 10]"});
  lowbit::testing::expect_error(
      [&] {
        attention_qkv(randn({2, 5, 12}, &g), 3);
      },
      {"attention_qkv: d_model (4) must be divisible by n_heads (3)"});
  lowbit::testing::expect_error([&] { attention_qkv(randn({5, 12}, &g), 2); }, {"attention_qkv", "[5, 12]"});
}

// set_float32_matmul_precision("medium"): every float32 GEMM (linear, matmul and their backward)
// rounds its operands to bfloat16 and runs the bfloat16 GEMM -- bit-identical to gemm_bf16 of the
// rounded operands; "highest" restores float32; other names are refused.
TEST(Kernels, Float32MatmulPrecisionMedium) {
  Generator g(41);
  const Tensor x0 = randn({37, 64}, &g), w0 = randn({24, 64}, &g), b0 = randn({24}, &g), dy = randn({37, 24}, &g);
  EXPECT_EQ(get_float32_matmul_precision(), "highest");
  set_float32_matmul_precision("medium");
  Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_();
  const Tensor y = linear(x, w, b0);
  y.backward(dy);
  const Tensor mm = matmul(x0.reshape({1, 37, 64}), w0.t().reshape({1, 64, 24}));
  set_float32_matmul_precision("highest");
  auto bf = [](const Tensor& t) { return t.to(kBFloat16); };
  auto same = [](const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
  };
  EXPECT_TRUE(same(y, gemm_bf16(bf(x0), false, bf(w0), true, b0)));
  EXPECT_TRUE(same(x.grad(), gemm_bf16(bf(dy), false, bf(w0), false)));
  EXPECT_TRUE(same(w.grad(), gemm_bf16(bf(dy), true, bf(x0), false)));
  EXPECT_TRUE(same(mm.reshape({37, 24}), gemm_bf16(bf(x0), false, bf(w0), true)));
  // and differs from float32 (the operands were rounded)
  EXPECT_FALSE(same(linear(x0, w0, b0), y));
  set_float32_matmul_precision("high");  // no TF32 on this CPU: float32
  EXPECT_TRUE(same(linear(x0, w0, b0), gemm(x0, false, w0, true, b0)));
  set_float32_matmul_precision("highest");
  lowbit::testing::expect_error([] { set_float32_matmul_precision("low"); }, {"set_float32_matmul_precision", "'low'"});
}
