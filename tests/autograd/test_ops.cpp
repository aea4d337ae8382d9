// Every differentiable op: forward vs float64 reference kernels, backward vs finite differences
// (tests/op_harness.h), plus one error-message case per op.
#include <gtest/gtest.h>

#include <limits>

#include "op_harness.h"

using namespace lowbit;
using lowbit::testing::OpCase;
using V = std::vector<Tensor>;

namespace {
Tensor bool_pattern(const Shape& shape, int period) {
  Tensor m = empty(shape, kBool);
  for (int64_t i = 0; i < m.numel(); ++i) m.data_ptr<bool>()[i] = (i % period) == 0;
  return m;
}
Tensor idx(std::vector<int64_t> v, Shape shape = {}) { return from_vector(v, shape); }

std::vector<OpCase> op_cases() {
  std::vector<OpCase> c;
  auto U = [&](std::string name, Shape s, std::function<Tensor(const Tensor&)> f, double lo = -2, double hi = 2,
               double tol = 2e-5) {
    c.push_back({std::move(name), {s}, [f](const V& v) { return f(v[0]); }, lo, hi, tol});
  };
  auto B = [&](std::string name, Shape a, Shape b, std::function<Tensor(const Tensor&, const Tensor&)> f,
               double lo = -2, double hi = 2) {
    c.push_back({std::move(name), {a, b}, [f](const V& v) { return f(v[0], v[1]); }, lo, hi});
  };
  // arithmetic with broadcasting, size-1 and empty edges
  B("add", {3, 4}, {3, 4}, [](auto& a, auto& b) { return add(a, b); });
  B("add_broadcast_outer", {3, 1}, {1, 4}, [](auto& a, auto& b) { return a + b; });
  B("add_broadcast_trailing", {2, 3, 4}, {4}, [](auto& a, auto& b) { return add(a, b, 0.5); });
  B("add_broadcast_scalar_shape", {2, 3}, {}, [](auto& a, auto& b) { return add(a, b); });
  B("add_empty", {0, 3}, {3}, [](auto& a, auto& b) { return add(a, b); });
  U("add_scalar", {5}, [](auto& a) { return a + 1.5; });
  B("sub_broadcast", {2, 1, 4}, {3, 1}, [](auto& a, auto& b) { return sub(a, b, 2.0); });
  B("mul_broadcast", {2, 3, 4}, {3, 1}, [](auto& a, auto& b) { return a * b; });
  U("mul_scalar", {2, 2}, [](auto& a) { return 3.0 * a; });
  B(
      "div", {3, 4}, {4}, [](auto& a, auto& b) { return a / b; }, 0.5, 2.0);
  B("maximum", {3, 4}, {1, 4}, [](auto& a, auto& b) { return maximum(a, b); });
  B("minimum", {2, 3}, {2, 3}, [](auto& a, auto& b) { return minimum(a, b); });
  // unary math and activations
  U("neg", {4, 3}, [](auto& a) { return -a; });
  U("abs", {4, 3}, [](auto& a) { return abs(a); });
  U("exp", {4, 3}, [](auto& a) { return exp(a); });
  U(
      "log", {4, 3}, [](auto& a) { return log(a); }, 0.1, 3.0);
  U(
      "sqrt", {4, 3}, [](auto& a) { return sqrt(a); }, 0.1, 3.0);
  U(
      "rsqrt", {4, 3}, [](auto& a) { return rsqrt(a); }, 0.1, 3.0);
  U("pow_3", {4, 3}, [](auto& a) { return pow(a, 3.0); });
  U(
      "pow_neg_1_5", {4, 3}, [](auto& a) { return pow(a, -1.5); }, 0.2, 2.0);
  U("square", {4, 3}, [](auto& a) { return square(a); });
  U("tanh", {4, 3}, [](auto& a) { return tanh(a); });
  U(
      "sigmoid", {4, 3}, [](auto& a) { return sigmoid(a); }, -6, 6);
  U("relu", {4, 3}, [](auto& a) { return relu(a); });
  U(
      "gelu_erf", {4, 5}, [](auto& a) { return gelu(a); }, -4, 4);
  U(
      "gelu_tanh", {4, 5}, [](auto& a) { return gelu(a, "tanh"); }, -4, 4);
  U(
      "silu", {4, 5}, [](auto& a) { return silu(a); }, -6, 6);
  U("clamp", {4, 5}, [](auto& a) { return clamp(a, -0.5, 0.7); });
  U("clamp_min_only", {4, 5}, [](auto& a) { return clamp(a, 0.1, std::nullopt); });
  c.push_back({"where", {{3, 4}, {3, 4}}, [](const V& v) { return where(bool_pattern({3, 4}, 3), v[0], v[1]); }});
  c.push_back({"where_broadcast", {{3, 1}, {4}}, [](const V& v) {
                 return where(bool_pattern({3, 4}, 2), v[0], v[1]);
               }});
  c.push_back({"masked_fill", {{3, 4}}, [](const V& v) { return masked_fill(v[0], bool_pattern({1, 4}, 2), -1.5); }});
  // comparisons: forward only
  for (auto [name, f] : std::vector<std::pair<std::string, Tensor (*)(const Tensor&, const Tensor&)>>{
           {"eq", eq}, {"ne", ne}, {"lt", lt}, {"le", le}, {"gt", gt}, {"ge", ge}}) {
    c.push_back({"compare_" + name,
                 {{3, 4}, {4}},
                 [f](const V& v) { return f(round(v[0]), round(v[1])).to(kFloat32); },
                 -2,
                 2,
                 0,
                 0,
                 false});
  }
  // reductions
  U("sum_all", {3, 4, 5}, [](auto& a) { return sum(a); });
  U("sum_dim_keepdim", {3, 4, 5}, [](auto& a) { return sum(a, {1}, true); });
  U("sum_dims_0_2", {3, 4, 5}, [](auto& a) { return sum(a, {0, 2}); });
  U("sum_negative_dim", {3, 4, 5}, [](auto& a) { return sum(a, {-1}); });
  U("sum_size1_dim", {3, 1, 5}, [](auto& a) { return sum(a, {1}); });
  U("mean_dims", {3, 4, 5}, [](auto& a) { return mean(a, {1, 2}, true); });
  U("mean_all", {6}, [](auto& a) { return mean(a); });
  U("amax_dim", {3, 4, 5}, [](auto& a) { return amax(a, {1}); });
  U("amax_all", {3, 4}, [](auto& a) { return amax(a); });
  U("amin_dims", {3, 4, 5}, [](auto& a) { return amin(a, {0, 2}, true); });
  U("var_unbiased", {3, 6}, [](auto& a) { return var(a, {1}); });
  U("var_population_all", {3, 6}, [](auto& a) { return var(a, {}, 0.0); });
  U("max_dim_values", {3, 4, 5}, [](auto& a) { return max(a, 1).first; });
  U("max_dim_keepdim", {3, 4}, [](auto& a) { return max(a, -1, true).first; });
  c.push_back({"argmax", {{3, 5}}, [](const V& v) { return argmax(v[0], 1).to(kFloat32); }, -2, 2, 0, 0, false});
  U("softmax_last", {3, 7}, [](auto& a) { return softmax(a, -1); });
  U("softmax_dim0", {4, 3, 2}, [](auto& a) { return softmax(a, 0); });
  U("log_softmax", {3, 7}, [](auto& a) { return log_softmax(a, 1); });
  // linear algebra
  B("matmul_2d", {3, 4}, {4, 5}, [](auto& a, auto& b) { return matmul(a, b); });
  B("matmul_batched", {2, 3, 4}, {2, 4, 5}, [](auto& a, auto& b) { return matmul(a, b); });
  B("matmul_broadcast_batch", {2, 1, 3, 4}, {3, 4, 2}, [](auto& a, auto& b) { return matmul(a, b); });
  B("matmul_3d_2d", {2, 3, 4}, {4, 5}, [](auto& a, auto& b) { return matmul(a, b); });
  B("matmul_1d_2d", {4}, {4, 3}, [](auto& a, auto& b) { return matmul(a, b); });
  B("matmul_2d_1d", {3, 4}, {4}, [](auto& a, auto& b) { return matmul(a, b); });
  B("matmul_dot", {5}, {5}, [](auto& a, auto& b) { return matmul(a, b); });
  B("matmul_empty_k", {3, 0}, {0, 2}, [](auto& a, auto& b) { return matmul(a, b); });
  c.push_back({"linear_bias", {{5, 4}, {3, 4}, {3}}, [](const V& v) { return linear(v[0], v[1], v[2]); }});
  c.push_back({"linear_no_bias_3d", {{2, 5, 4}, {3, 4}}, [](const V& v) { return linear(v[0], v[1]); }});
  // shape ops
  U("transpose", {2, 3, 4}, [](auto& a) { return transpose(a, 0, 2); });
  U("permute", {2, 3, 4}, [](auto& a) { return permute(a, {1, 2, 0}); });
  U("reshape", {2, 3, 4}, [](auto& a) { return a.reshape({4, -1}) * 2.0; });
  U("flatten", {2, 3, 4}, [](auto& a) { return a.flatten(1) * 2.0; });
  U("squeeze_unsqueeze", {2, 1, 4}, [](auto& a) { return a.squeeze(1).unsqueeze(0) * 2.0; });
  U("narrow_view", {5, 3}, [](auto& a) { return narrow(a, 0, 1, 3) * 2.0; });
  U("narrow_copy", {3, 5}, [](auto& a) { return narrow(a, 1, 2, 2) * 2.0; });
  U("select", {3, 5}, [](auto& a) { return a.select(1, -1) * 2.0; });
  B("cat", {2, 3}, {2, 2}, [](auto& a, auto& b) { return cat({a, b}, 1); });
  B("stack", {2, 3}, {2, 3}, [](auto& a, auto& b) { return stack({a, b}, 1); });
  U("split", {2, 5}, [](auto& a) {
    auto p = split(a, 2, 1);
    return cat({p[0] * 2.0, p[1], p[2] * 3.0}, 1);
  });
  U("chunk", {6, 2}, [](auto& a) {
    auto p = chunk(a, 3, 0);
    return cat({p[2], p[0] * -1.0, p[1]}, 0);
  });
  U("index_select", {4, 3}, [](auto& a) { return index_select(a, 0, idx({3, 0, 3})); });
  U("index_select_dim1", {2, 4}, [](auto& a) { return index_select(a, 1, idx({1, 1, 2})); });
  U("embedding", {5, 3}, [](auto& a) { return embedding(a, idx({4, 0, 1, 4}, {2, 2})); });
  // nn functions
  U("dropout", {8, 8}, [](auto& a) {
    Generator g(7);
    return dropout(a, 0.3, true, &g);
  });
  U("dropout_eval", {4}, [](auto& a) { return dropout(a, 0.3, false) * 1.0; });
  U("cross_entropy", {4, 5}, [](auto& a) { return cross_entropy(a, idx({1, 0, 4, 2})); });
  U("cross_entropy_ignore_index", {4, 5}, [](auto& a) { return cross_entropy(a, idx({1, -100, 4, 2})); });
  U("cross_entropy_label_smoothing", {4, 5}, [](auto& a) { return cross_entropy(a, idx({1, 3, 4, 2}), 3, 0.1); });
  U("cross_entropy_none", {4, 5}, [](auto& a) {
    return cross_entropy(a, idx({1, 0, 4, 2}), -100, 0.0, Reduction::None);
  });
  U("cross_entropy_sum", {4, 5}, [](auto& a) {
    return cross_entropy(a, idx({1, 0, 4, 2}), -100, 0.2, Reduction::Sum);
  });
  U("cross_entropy_spatial", {2, 3, 4}, [](auto& a) {
    return cross_entropy(a, idx({0, 1, 2, 0, 2, 2, 1, 0}, {2, 4}));
  });
  B("mse_loss", {3, 4}, {3, 4}, [](auto& a, auto& b) { return mse_loss(a, b); });
  c.push_back({"layer_norm", {{3, 6}, {6}, {6}}, [](const V& v) { return layer_norm(v[0], {6}, v[1], v[2]); }});
  U("layer_norm_2d_no_affine", {2, 3, 4}, [](auto& a) { return layer_norm(a, {3, 4}); });
  c.push_back({"rms_norm", {{3, 6}, {6}}, [](const V& v) { return rms_norm(v[0], {6}, v[1]); }});
  c.push_back({"sdpa", {{2, 4, 3}, {2, 5, 3}, {2, 5, 2}}, [](const V& v) {
                 return scaled_dot_product_attention(v[0], v[1], v[2]);
               }});
  c.push_back({"sdpa_causal", {{2, 2, 4, 3}, {2, 2, 4, 3}, {2, 2, 4, 3}}, [](const V& v) {
                 return scaled_dot_product_attention(v[0], v[1], v[2], Tensor(), 0.0, true);
               }});
  c.push_back({"sdpa_bool_mask", {{4, 3}, {5, 3}, {5, 2}}, [](const V& v) {
                 Tensor m = bool_pattern({4, 5}, 2);
                 m.data_ptr<bool>()[1] = true;  // every row keeps at least one key
                 for (int i = 0; i < 4; ++i) m.data_ptr<bool>()[i * 5] = true;
                 return scaled_dot_product_attention(v[0], v[1], v[2], m);
               }});
  U("attention_qkv_causal", {2, 5, 12}, [](auto& a) { return attention_qkv(a, 2, true); });
  U("attention_qkv", {1, 4, 6}, [](auto& a) { return attention_qkv(a, 1, false, 0.0, 0.7); });
  c.push_back({"sdpa_float_mask_scale", {{4, 3}, {5, 3}, {5, 2}, {4, 5}}, [](const V& v) {
                 return scaled_dot_product_attention(v[0], v[1], v[2], v[3], 0.0, false, 0.3);
               }});
  return c;
}
}  // namespace

class OpTest : public ::testing::TestWithParam<OpCase> {};
TEST_P(OpTest, ForwardAndGradcheck) { lowbit::testing::run_case(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Ops, OpTest, ::testing::ValuesIn(op_cases()),
                         [](const auto& info) { return info.param.name; });

// ---------------- error messages ----------------
struct ErrorCase {
  std::string name;
  std::function<void()> fn;
  std::vector<std::string> expect;  // substrings of the message
};

namespace {
std::vector<ErrorCase> error_cases() {
  const Tensor a23 = ones({2, 3}), a4 = ones({4}), i3 = zeros({3}, kInt64), a45 = ones({4, 5}),
               d23 = ones({2, 3}, kFloat64);
  auto F = [](std::function<void()> f) { return f; };
  return {
      {"add_broadcast", F([=] { add(a23, a4); }), {"add", "[2, 3]", "[4]", "not broadcastable"}},
      {"add_dtype", F([=] { add(a23, d23); }), {"add", "float32", "float64", "same dtype"}},
      {"sub", F([=] { sub(a23, a4); }), {"sub", "[2, 3]", "[4]"}},
      {"mul", F([=] { mul(a23, a4); }), {"mul", "[2, 3]", "[4]"}},
      {"div", F([=] { div(a23, a4); }), {"div", "[2, 3]", "[4]"}},
      {"maximum", F([=] { maximum(a23, a4); }), {"maximum", "[2, 3]", "[4]"}},
      {"minimum", F([=] { minimum(a23, a4); }), {"minimum", "[2, 3]", "[4]"}},
      {"neg", F([=] { neg(i3); }), {"neg", "[3]", "int64", "floating"}},
      {"abs", F([=] { abs(i3); }), {"abs", "[3]", "int64"}},
      {"exp", F([=] { exp(i3); }), {"exp", "int64"}},
      {"log", F([=] { log(i3); }), {"log", "int64"}},
      {"sqrt", F([=] { sqrt(i3); }), {"sqrt", "int64"}},
      {"rsqrt", F([=] { rsqrt(i3); }), {"rsqrt", "int64"}},
      {"pow", F([=] { pow(i3, 2.0); }), {"pow", "int64"}},
      {"tanh", F([=] { tanh(i3); }), {"tanh", "int64"}},
      {"sigmoid", F([=] { sigmoid(i3); }), {"sigmoid", "int64"}},
      {"relu", F([=] { relu(i3); }), {"relu", "int64"}},
      {"gelu_approx", F([=] { gelu(a4, "fast"); }), {"gelu", "approximate", "'fast'"}},
      {"gelu_dtype", F([=] { gelu(i3); }), {"gelu", "int64"}},
      {"silu", F([=] { silu(i3); }), {"silu", "int64"}},
      {"clamp", F([=] { clamp(a4, std::nullopt, std::nullopt); }), {"clamp", "min", "max"}},
      {"where_cond", F([=] { where(a4, a4, a4); }), {"where", "bool", "float32"}},
      {"where_shapes", F([=] { where(bool_pattern({4}, 2), a23, a23); }), {"where", "[4]", "[2, 3]"}},
      {"masked_fill",
       F([=] {
         masked_fill(a4, bool_pattern({2, 3}, 2), 0.0);
       }),
       {"masked_fill", "[4]", "[2, 3]"}},
      {"compare", F([=] { lt(a23, a4); }), {"lt", "[2, 3]", "[4]"}},
      {"sum_dim", F([=] { sum(a23, {2}); }), {"sum", "dimension out of range", "got 2"}},
      {"sum_dup_dim",
       F([=] {
         sum(a23, {1, -1});
       }),
       {"sum", "multiple times", "[2, 3]"}},
      {"mean", F([=] { mean(i3); }), {"mean", "int64"}},
      {"amax", F([=] { amax(a23, {3}); }), {"amax", "dimension out of range"}},
      {"amin", F([=] { amin(i3); }), {"amin", "int64"}},
      {"var", F([=] { var(a23, {-3}); }), {"var", "dimension out of range"}},
      {"max_empty",
       F([=] {
         max(zeros({2, 0}), 1);
       }),
       {"max", "empty", "[2, 0]"}},
      {"argmax", F([=] { argmax(a23, 5); }), {"max", "dimension out of range"}},
      {"softmax", F([=] { softmax(a23, 2); }), {"softmax", "dimension out of range"}},
      {"log_softmax", F([=] { log_softmax(i3, 0); }), {"log_softmax", "int64"}},
      {"matmul",
       F([=] {
         matmul(ones({2, 3}), ones({4, 5}));
       }),
       {"mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"}},
      {"matmul_batch",
       F([=] {
         matmul(ones({2, 2, 3}), ones({3, 3, 4}));
       }),
       {"matmul", "batch", "[2]", "[3]"}},
      {"linear",
       F([=] {
         linear(ones({2, 3}), ones({4, 5}));
       }),
       {"linear", "[2, 3]", "[4, 5]", "input.size(-1)=3", "weight.size(1)=5"}},
      {"linear_bias",
       F([=] {
         linear(ones({2, 3}), ones({4, 3}), ones({5}));
       }),
       {"linear", "bias [5]", "out_features=4"}},
      {"reshape",
       F([=] {
         a23.reshape({4, 2});
       }),
       {"reshape", "[4, 2]", "size 6"}},
      {"transpose", F([=] { transpose(a23, 0, 2); }), {"transpose", "dimension out of range"}},
      {"permute", F([=] { permute(a23, {0}); }), {"permute", "[2, 3]"}},
      {"narrow", F([=] { narrow(a23, 1, 2, 2); }), {"narrow", "exceeds", "[2, 3]"}},
      {"select", F([=] { a23.select(0, 2); }), {"select", "index 2", "[2, 3]"}},
      {"cat",
       F([=] {
         cat({a23, ones({3, 3})}, 1);
       }),
       {"cat", "[2, 3]", "[3, 3]", "dimension 1"}},
      {"stack",
       F([=] {
         stack({a23, ones({3, 2})});
       }),
       {"stack", "[2, 3]", "[3, 2]"}},
      {"split",
       F([=] {
         split(a23, std::vector<int64_t>{1, 1}, 1);
       }),
       {"split", "sum to 2", "[2, 3]"}},
      {"chunk", F([=] { chunk(a23, 0); }), {"chunk", "positive"}},
      {"index_select",
       F([=] {
         index_select(a23, 1, from_vector<int64_t>({0, 3}));
       }),
       {"index_select", "index 3", "size 3"}},
      {"embedding", F([=] { embedding(a45, from_vector<int64_t>({7})); }), {"embedding", "index 7", "size 4"}},
      {"embedding_dtype", F([=] { embedding(a45, ones({2})); }), {"embedding", "int64", "float32"}},
      {"dropout", F([=] { dropout(a4, 1.5); }), {"dropout", "between 0 and 1", "1.5"}},
      {"cross_entropy_target",
       F([=] {
         cross_entropy(a45, from_vector<int64_t>({0, 1}));
       }),
       {"cross_entropy", "[4, 5]", "[4]", "[2]"}},
      {"cross_entropy_class",
       F([=] {
         cross_entropy(a45, from_vector<int64_t>({0, 1, 2, 9}));
       }),
       {"cross_entropy", "target 9", "5 classes"}},
      {"cross_entropy_dtype", F([=] { cross_entropy(a45, ones({4})); }), {"cross_entropy", "int64", "float32"}},
      {"mse_loss", F([=] { mse_loss(a23, a4); }), {"mse_loss", "[2, 3]", "[4]"}},
      {"layer_norm", F([=] { layer_norm(a23, {4}); }), {"layer_norm", "normalized_shape=[4]", "[2, 3]"}},
      {"layer_norm_weight", F([=] { layer_norm(a23, {3}, ones({4})); }), {"layer_norm", "weight", "[4]", "[3]"}},
      {"rms_norm", F([=] { rms_norm(a23, {2}); }), {"rms_norm", "normalized_shape=[2]", "[2, 3]"}},
      {"sdpa",
       F([=] {
         scaled_dot_product_attention(ones({4, 3}), ones({5, 2}), ones({5, 2}));
       }),
       {"scaled_dot_product_attention", "[4, 3]", "[5, 2]"}},
      {"item", F([=] { a23.item<float>(); }), {"item", "6 elements", "[2, 3]"}},
      {"data_ptr", F([=] { a23.data_ptr<double>(); }), {"data_ptr", "float32", "float64"}},
      {"requires_grad_int",
       F([=] {
         Tensor t = i3;
         t.requires_grad_();
       }),
       {"requires_grad_", "floating", "int64"}},
      {"from_vector",
       F([=] {
         from_vector<float>({1, 2, 3}, {2, 2});
       }),
       {"from_vector", "3 values", "[2, 2]"}},
      {"shape_negative",
       F([=] {
         zeros({2, -1});
       }),
       {"negative dimension", "[2, -1]"}},
      {"too_many_dims",
       F([=] {
         zeros({1, 1, 1, 1, 1, 1, 1, 1, 1});
       }),
       {"at most 8 dimensions"}},
  };
}
}  // namespace

class OpErrorTest : public ::testing::TestWithParam<ErrorCase> {};
TEST_P(OpErrorTest, MessageNamesOpAndShapes) {
  const auto& c = GetParam();
  try {
    c.fn();
    FAIL() << "expected lowbit::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& s : c.expect)
      EXPECT_NE(msg.find(s), std::string::npos) << "message: " << msg << "\nmissing: " << s;
  }
}
INSTANTIATE_TEST_SUITE_P(Ops, OpErrorTest, ::testing::ValuesIn(error_cases()),
                         [](const auto& info) { return info.param.name; });
