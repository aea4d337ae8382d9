// Internals of the float8 casts shared by the public casts (cast.cpp) and Float8Linear
// (linear.cpp). Not installed.
#pragma once
#include "lowbit/autograd/minifloat.h"
#include "lowbit/float8/float8.h"

namespace lowbit::float8::detail {

/// Where the scales of a cast 2-D operand (rows x cols, row-major) run: one for the whole matrix,
/// one per row (amax over the row), one per column (amax over the column).
enum class ScaleAxis { Tensor, Row, Col };

/// A cast 2-D operand: codes (uint8 storage, rows x cols) and its float32 multipliers
/// (1, rows or cols values).
struct Cast2D {
  Tensor codes;
  Tensor scale;
  ScaleAxis axis;
};

/// The codec of a float8 dtype (throws naming the dtype otherwise).
const MinifloatSpec& float8_spec(DType d, const char* what);

/// amax along `axis` -> scale (float8_amax_to_scale, optionally power of 2) -> saturating RNE
/// cast of fp32(x) * scale. x: float32 (rows x cols, contiguous).
Cast2D cast_2d(const float* x, int64_t rows, int64_t cols, DType fp8, ScaleAxis axis, bool pow2);

/// The cast's codes as bfloat16 values (exact: every float8 value is a normal bfloat16).
Tensor codes_to_bf16(const Tensor& codes, DType fp8);

/// The dequantized operand in float32: decode(code) / scale (true division), as torchao's
/// emulated gemm builds it.
Tensor dequantize_f32(const Cast2D& c, DType fp8);

}  // namespace lowbit::float8::detail
