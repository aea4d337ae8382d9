// Helpers shared by the test files.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <lowbit/autograd/error.h>
#include <lowbit/autograd/tensor.h>

namespace lowbit::testing {

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

}  // namespace lowbit::testing
