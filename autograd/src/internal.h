// Internal helpers for op implementations (not installed).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/parallel.h"

namespace lowbit::detail {

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
/// softmax (or log_softmax) of one float32 row of n, the kernel softmax() runs per row; y may be x
/// when !log (reduce.cpp)
void softmax_row_f32(const float* x, float* y, int64_t n, bool log);
/// gx = y * (g - sum(g * y)) over one float32 row, softmax's backward per row; gx may be g
void softmax_backward_row_f32(const float* y, const float* g, float* gx, int64_t n);

/// bfloat16 converted to float32 for computation (other dtypes unchanged).
inline Tensor upcast(const Tensor& t) { return t.dtype() == kBFloat16 ? t.to(kFloat32) : t; }

}  // namespace lowbit::detail
