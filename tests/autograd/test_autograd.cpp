#include <gtest/gtest.h>

#include <cmath>

#include <lowbit/lowbit.h>

#include "test_util.h"

using namespace lowbit;

namespace {
Tensor leaf(std::vector<float> v, Shape s = {}) { return from_vector(v, s).requires_grad_(); }
float at(const Tensor& t, int i) { return t.to(kFloat32).data_ptr<float>()[i]; }
}  // namespace

TEST(Autograd, GradientsAccumulateAcrossBackwards) {
  Tensor x = leaf({1, 2, 3});
  sum(mul(x, x)).backward();
  EXPECT_FLOAT_EQ(at(x.grad(), 1), 4.0f);
  sum(mul(x, 3.0)).backward();
  EXPECT_FLOAT_EQ(at(x.grad(), 1), 7.0f);
}

// Post-accumulate hooks (what data parallelism sends buckets from) run once per backward per
// leaf, after every contribution has been summed, in registration order; removal works.
TEST(Autograd, PostAccumulateGradHooks) {
  Tensor w = from_vector<float>({1, 2, 3}).requires_grad_();
  std::vector<std::vector<float>> seen;
  std::vector<int> order;
  const uint64_t id = w.register_post_accumulate_grad_hook([&](const Tensor& leaf) {
    const float* g = leaf.grad().data_ptr<float>();
    seen.emplace_back(g, g + 3);
    order.push_back(1);
  });
  w.register_post_accumulate_grad_hook([&](const Tensor&) { order.push_back(2); });
  // w is used twice: the hook sees the sum of both paths, once
  Tensor loss = add(sum(mul(w, w)), sum(mul(w, full({3}, 3.0))));
  loss.backward();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], (std::vector<float>{5, 7, 9}));  // 2w + 3
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  // a second backward accumulates; the hook sees the accumulated gradient
  sum(w).backward();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1], (std::vector<float>{6, 8, 10}));
  w.remove_post_accumulate_grad_hook(id);
  sum(w).backward();
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_EQ(order.size(), 5u);
  Tensor y = mul(w, w);
  lowbit::testing::expect_error([&] { y.register_post_accumulate_grad_hook([](const Tensor&) {}); }, {"leaf"});
}

TEST(Autograd, SharedSubexpressionSumsBothPaths) {
  Tensor x = leaf({2});
  Tensor y = mul(x, x);
  Tensor z = add(y, mul(y, 3.0));  // z = 4 x^2
  z.backward(ones({1}));
  EXPECT_FLOAT_EQ(at(x.grad(), 0), 16.0f);
}

TEST(Autograd, NoGradGuardAndDetach) {
  Tensor x = leaf({1, 2});
  {
    NoGradGuard g;
    Tensor y = mul(x, 2.0);
    EXPECT_FALSE(y.requires_grad());
  }
  EXPECT_TRUE(grad_mode_enabled());
  Tensor d = x.detach();
  EXPECT_FALSE(d.requires_grad());
  EXPECT_TRUE(d.is_alias_of(x));
  Tensor y = add(mul(x, d), x);  // d is a constant
  sum(y).backward();
  EXPECT_FLOAT_EQ(at(x.grad(), 1), 3.0f);
}

TEST(Autograd, RetainGradOnNonLeaf) {
  Tensor x = leaf({1, 2});
  Tensor h = mul(x, 3.0);
  h.retain_grad();
  Tensor y = sum(mul(h, h));
  y.backward();
  EXPECT_TRUE(h.grad().defined());
  EXPECT_FLOAT_EQ(at(h.grad(), 1), 12.0f);  // 2h
  EXPECT_FLOAT_EQ(at(x.grad(), 1), 36.0f);
  Tensor h2 = mul(x, 2.0);
  sum(h2).backward();
  EXPECT_FALSE(h2.grad().defined());  // not retained
}

TEST(Autograd, BackwardWithGradientForNonScalar) {
  Tensor x = leaf({1, 2, 3});
  Tensor y = mul(x, x);
  y.backward(from_vector<float>({1, 0, 2}));
  EXPECT_FLOAT_EQ(at(x.grad(), 0), 2.0f);
  EXPECT_FLOAT_EQ(at(x.grad(), 1), 0.0f);
  EXPECT_FLOAT_EQ(at(x.grad(), 2), 12.0f);
}

TEST(Autograd, NonScalarWithoutGradientIsAnError) {
  Tensor x = leaf({1, 2, 3});
  try {
    mul(x, 2.0).backward();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("implicitly created only for scalar outputs"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("[3]"), std::string::npos);
  }
  try {
    mul(x, 2.0).backward(ones({2}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2]"), std::string::npos);
  }
}

TEST(Autograd, BackwardOnTensorWithoutGradIsAnError) {
  Tensor x = from_vector<float>({1, 2});
  try {
    sum(x).backward();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not require grad"), std::string::npos);
  }
}

TEST(Autograd, GraphIsFreedUnlessRetained) {
  Tensor x = leaf({1, 2});
  Tensor y = sum(exp(x));
  y.backward({}, /*retain_graph=*/true);
  y.backward();  // second pass allowed because the first retained
  EXPECT_NEAR(at(x.grad(), 0), 2 * std::exp(1.0f), 1e-5);
  try {
    y.backward();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("backward through the graph a second time"), std::string::npos);
  }
}

TEST(Autograd, RequiresGradOnlyOnLeaves) {
  Tensor x = leaf({1});
  Tensor y = mul(x, 2.0);
  EXPECT_THROW(y.requires_grad_(false), Error);
  EXPECT_FALSE(y.is_leaf());
  EXPECT_TRUE(x.is_leaf());
  EXPECT_EQ(y.grad_fn_name(), "MulBackward0");
}

TEST(Autograd, UnusedBranchAndIntegerPathsAreSkipped) {
  Tensor x = leaf({1, -2, 3});
  Tensor w = leaf({5});
  Tensor idx = argmax(x, 0);  // no grad
  EXPECT_FALSE(idx.requires_grad());
  Tensor y = sum(relu(x));
  y.backward();
  EXPECT_FALSE(w.grad().defined());
  EXPECT_FLOAT_EQ(at(x.grad(), 1), 0.0f);
}

TEST(Autograd, GradFunctionDoesNotTouchDotGrad) {
  Tensor x = leaf({1, 2});
  Tensor y = sum(mul(x, x));
  auto g = lowbit::grad(y, {x});
  EXPECT_FLOAT_EQ(at(g[0], 1), 4.0f);
  EXPECT_FALSE(x.grad().defined());
}

// Straight-through estimator written with the custom Function API.
struct RoundSTE : Function<RoundSTE> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, double lo, double hi) {
    ctx->save_for_backward({x});
    ctx->saved_data = {lo, hi};
    return clamp(round(x), lo, hi);
  }
  static std::vector<Tensor> backward(AutogradContext* ctx, const Tensor& g) {
    const Tensor& x = ctx->get_saved_variables()[0];
    const Tensor inside =
        mul(ge(x, full({}, ctx->saved_data[0])).to(g.dtype()), le(x, full({}, ctx->saved_data[1])).to(g.dtype()));
    return {mul(g, inside)};
  }
};

TEST(Autograd, CustomFunctionStraightThrough) {
  Tensor x = leaf({0.4f, 1.6f, 5.0f, -3.0f});
  Tensor y = RoundSTE::apply(x, -2.0, 2.0);
  EXPECT_FLOAT_EQ(at(y, 1), 2.0f);
  EXPECT_FLOAT_EQ(at(y, 2), 2.0f);
  EXPECT_TRUE(y.requires_grad());
  sum(mul(y, 3.0)).backward();
  EXPECT_FLOAT_EQ(at(x.grad(), 0), 3.0f);  // straight through
  EXPECT_FLOAT_EQ(at(x.grad(), 2), 0.0f);  // clamped: masked
  EXPECT_FLOAT_EQ(at(x.grad(), 3), 0.0f);
}

struct WrongArity : Function<WrongArity> {
  static Tensor forward(AutogradContext*, const Tensor& a, const Tensor& b) { return add(a, b); }
  static std::vector<Tensor> backward(AutogradContext*, const Tensor& g) { return {g}; }
};

TEST(Autograd, CustomFunctionWrongGradientCountIsAnError) {
  Tensor a = leaf({1}), b = leaf({2});
  Tensor y = WrongArity::apply(a, b);
  try {
    y.backward();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("returned 1 gradients; forward took 2"), std::string::npos);
  }
}

TEST(Autograd, BFloat16LeafGetsBFloat16Grad) {
  Tensor x = from_vector<float>({1, 2}).to(kBFloat16).requires_grad_();
  sum(mul(x, x)).backward();
  EXPECT_EQ(x.grad().dtype(), kBFloat16);
  EXPECT_FLOAT_EQ(at(x.grad(), 1), 4.0f);
}

TEST(Autograd, DeepChainDoesNotRecurse) {
  Tensor x = leaf({1});
  Tensor y = x;
  for (int i = 0; i < 20000; ++i) y = add(y, 0.0);
  sum(y).backward();
  EXPECT_FLOAT_EQ(at(x.grad(), 0), 1.0f);
}
