// Internal helpers for op implementations (not installed).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/autograd/parallel.h"

namespace lowbit::detail {

#define LOWBIT_DISPATCH_CASE(DT, CT, T, ...) \
  case DT: {                                 \
    using T = CT;                            \
    __VA_ARGS__;                             \
    break;                                   \
  }

/// Runs the body with T = the C++ type of dtype (all dtypes).
#define LOWBIT_DISPATCH_ALL(dtype, T, ...)                                     \
  switch (dtype) {                                                             \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Float32, float, T, __VA_ARGS__)      \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::BFloat16, ::lowbit::BFloat16, T, __VA_ARGS__) \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Float64, double, T, __VA_ARGS__)     \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Int8, int8_t, T, __VA_ARGS__)        \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::UInt8, uint8_t, T, __VA_ARGS__)      \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Int32, int32_t, T, __VA_ARGS__)      \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Int64, int64_t, T, __VA_ARGS__)      \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Bool, bool, T, __VA_ARGS__)          \
  }

/// Runs the body with T = float or double (compute types).
#define LOWBIT_DISPATCH_FLOAT(dtype, T, ...)                               \
  switch (dtype) {                                                         \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Float32, float, T, __VA_ARGS__)  \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Float64, double, T, __VA_ARGS__) \
    default:                                                               \
      LOWBIT_ASSERT(false && "float dispatch on non-compute dtype");       \
  }

/// Splits [0, n) into chunks and runs fn(begin, end) in parallel when n >= grain.
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  const int threads = get_num_threads();
  if (n < grain || threads <= 1 || omp_in_parallel()) {
    fn(int64_t{0}, n);
    return;
  }
  const int64_t tasks = std::min<int64_t>(threads, (n + grain - 1) / grain);
#pragma omp parallel num_threads(static_cast<int>(tasks))
  {
    const int64_t t = omp_get_thread_num();
    const int64_t nt = omp_get_num_threads();
    const int64_t begin = n * t / nt, end = n * (t + 1) / nt;
    if (begin < end) fn(begin, end);
  }
}

/// Floating op inputs: float32/float64 pass through; bfloat16 is computed in float32.
inline bool is_compute(DType d) { return d == DType::Float32 || d == DType::Float64; }
/// The compute dtype of a floating dtype (bfloat16 -> float32).
inline DType compute_dtype(DType d) { return d == DType::BFloat16 ? DType::Float32 : d; }
/// Throws unless t is floating; names op and shape.
void check_floating(const Tensor& t, const char* op, const char* what = "input");
/// Throws unless a and b have the same dtype.
void check_same_dtype(const Tensor& a, const Tensor& b, const char* op);
/// Broadcast shape of a and b or an error naming op and both shapes.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
/// Strides (in elements) for t viewed as out_shape with broadcasting (0 on broadcast dims).
std::vector<int64_t> broadcast_strides(const Shape& in, const Shape& out);
/// Row-major contiguous strides.
std::vector<int64_t> contiguous_strides(const Shape& shape);
/// Materializes a broadcast of t to shape (copy).
Tensor expand_copy(const Tensor& t, const Shape& shape);
/// Internal GEMM: C = op(A)·op(B) for 2-D or 3-D (batched, batch 1 broadcast) float tensors.
Tensor gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias = Tensor());

}  // namespace lowbit::detail
