// Helpers shared by the test files.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <lowbit/autograd/error.h>
#include <lowbit/autograd/tensor.h>
#include <lowbit/nn/layers.h>

namespace lowbit::testing {

/// A test whose data or tool is missing here: a skip ctest reports (SKIP_REGULAR_EXPRESSION), or a
/// failure when LOWBIT_GOLDEN_DIR is set -- CI sets it and installs everything the tests use.
#define LOWBIT_SKIP_OR_FAIL(why)                                                                            \
  do {                                                                                                      \
    if (std::getenv("LOWBIT_GOLDEN_DIR")) FAIL() << why << " (LOWBIT_GOLDEN_DIR is set: CI must not skip)"; \
    GTEST_SKIP() << why;                                                                                    \
  } while (0)

/// Runs f, expects a lowbit::Error whose message contains every one of parts.
inline void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    FAIL() << "expected lowbit::Error";
  } catch (const Error& e) {
    for (auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\nmissing: " << p;
  }
}

/// ||a - b|| / ||b|| over float32 tensors of the same size.
inline double rel_err(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = static_cast<double>(a.data_ptr<float>()[i]) - b.data_ptr<float>()[i];
    num += d * d;
    den += static_cast<double>(b.data_ptr<float>()[i]) * b.data_ptr<float>()[i];
  }
  return std::sqrt(num / den);
}

/// max |a - b| / max |b| (any float dtypes, computed in float64); NaN where only one side has one
/// gives infinity, NaN on both sides is skipped.
inline double max_rel_to_max(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(kFloat64), y = b.to(kFloat64);
  double d = 0, m = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    const double p = x.data_ptr<double>()[i], q = y.data_ptr<double>()[i];
    if (std::isnan(p) || std::isnan(q)) {
      if (std::isnan(p) != std::isnan(q)) return INFINITY;
      continue;
    }
    d = std::max(d, std::fabs(p - q));
    m = std::max(m, std::fabs(q));
  }
  return m > 0 ? d / m : d;
}

/// A linear layer's forward and backward through a module that replaces nn::Linear(w0, b0)
/// (Float8Linear, MXLinear, ...): convert gets the Linear and returns the replacement.
struct LinearRun {
  Tensor output, grad_input, grad_weight, grad_bias;
};
inline LinearRun run_converted_linear(
    const Tensor& x0, const Tensor& w0, const Tensor& b0, const Tensor& upstream,
    const std::function<std::shared_ptr<nn::Module>(const std::shared_ptr<nn::Linear>&)>& convert) {
  auto lin =
      std::make_shared<nn::Linear>(w0.clone().requires_grad_(), b0.defined() ? b0.clone().requires_grad_() : Tensor());
  auto m = convert(lin);
  Tensor x = x0.clone().requires_grad_();
  Tensor y = m->forward(x);
  y.backward(upstream);
  auto* l = dynamic_cast<nn::Linear*>(m.get());
  return {y, x.grad(), l->weight.grad(), b0.defined() ? l->bias.grad() : Tensor()};
}

}  // namespace lowbit::testing
