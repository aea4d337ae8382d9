// Table-driven op harness shared by the op tests: forward in float32 (optimized kernels) against
// a float64 run on the reference kernels, backward against central finite differences in float64.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <lowbit/lowbit.h>

namespace lowbit::testing {

struct OpCase {
  std::string name;
  std::vector<Shape> shapes;  // floating inputs; other operands are captured by fn
  std::function<Tensor(const std::vector<Tensor>&)> fn;
  double lo = -2.0, hi = 2.0;  // input range
  double fwd_tol = 2e-5;       // float32 vs float64 (relative to max(1, |ref|))
  double grad_tol = 1e-6;      // analytic vs finite differences in float64
  bool differentiable = true;
};

inline Tensor make_input(const Shape& shape, double lo, double hi, uint64_t seed) {
  Generator g(seed);
  Tensor t = empty(shape, kFloat64);
  t.uniform_(lo, hi, &g);
  return t;
}

/// max_i |a_i - b_i| / max(1, |b_i|)
inline double max_rel_err(const Tensor& a, const Tensor& b) {
  const Tensor a64 = a.to(kFloat64), b64 = b.to(kFloat64);
  double e = 0;
  for (int64_t i = 0; i < a64.numel(); ++i) {
    const double x = a64.data_ptr<double>()[i], y = b64.data_ptr<double>()[i];
    if (std::isnan(x) && std::isnan(y)) continue;
    if (std::isinf(x) && x == y) continue;
    e = std::max(e, std::fabs(x - y) / std::max(1.0, std::fabs(y)));
  }
  return e;
}

inline double weighted_sum(const Tensor& out, const Tensor& w) {
  NoGradGuard ng;
  return sum(mul(out.to(kFloat64), w)).item<double>();
}

inline void run_case(const OpCase& c) {
  SCOPED_TRACE(c.name);
  std::vector<Tensor> in64;
  for (size_t i = 0; i < c.shapes.size(); ++i) in64.push_back(make_input(c.shapes[i], c.lo, c.hi, 1000 + i));

  // forward: float64 on reference kernels vs float32 on optimized kernels
  set_reference_kernels(true);
  Tensor ref;
  try {
    ref = c.fn(in64);
  } catch (...) {
    set_reference_kernels(false);
    throw;
  }
  set_reference_kernels(false);
  std::vector<Tensor> in32;
  for (auto& t : in64) in32.push_back(t.to(kFloat32));
  Tensor out32 = c.fn(in32);
  ASSERT_EQ(out32.shape(), ref.shape());
  EXPECT_LE(max_rel_err(out32, ref), c.fwd_tol) << "forward mismatch";
  if (!c.differentiable || in64.empty()) return;

  // analytic gradient of L = sum(out * w) in float64 and in float32
  const Tensor w = make_input(ref.shape(), -1.0, 1.0, 77);
  std::vector<Tensor> leaves64, leaves32;
  for (auto& t : in64) leaves64.push_back(t.clone().requires_grad_());
  for (auto& t : in32) leaves32.push_back(t.clone().requires_grad_());
  Tensor out = c.fn(leaves64);
  ASSERT_TRUE(out.requires_grad());
  sum(mul(out, w)).backward();
  Tensor o32 = c.fn(leaves32);
  sum(mul(o32, w.to(kFloat32))).backward();

  const double h = 1e-6;
  for (size_t i = 0; i < leaves64.size(); ++i) {
    SCOPED_TRACE("input " + std::to_string(i));
    Tensor g = leaves64[i].grad();
    if (!g.defined()) g = zeros(leaves64[i].shape(), kFloat64);
    ASSERT_EQ(g.shape(), leaves64[i].shape());
    Tensor x = in64[i];
    double* p = x.data_ptr<double>();
    double worst = 0;
    for (int64_t j = 0; j < x.numel(); ++j) {
      const double orig = p[j];
      p[j] = orig + h;
      const double up = weighted_sum(c.fn(in64), w);
      p[j] = orig - h;
      const double dn = weighted_sum(c.fn(in64), w);
      p[j] = orig;
      const double num = (up - dn) / (2 * h);
      const double ana = g.data_ptr<double>()[j];
      worst = std::max(worst, std::fabs(num - ana) / std::max(1.0, std::fabs(num)));
    }
    EXPECT_LE(worst, c.grad_tol) << "gradient vs finite differences";
    Tensor g32 = leaves32[i].grad();
    if (!g32.defined()) g32 = zeros(leaves32[i].shape(), kFloat32);
    EXPECT_LE(max_rel_err(g32, g), c.fwd_tol * 20) << "float32 gradient vs float64 gradient";
  }
}

}  // namespace lowbit::testing
