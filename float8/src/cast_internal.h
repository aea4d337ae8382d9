// Internals of the float8 casts shared by the public casts (cast.cpp) and Float8Linear
// (linear.cpp). Not installed.
#pragma once
#include <vector>

#include "lowbit/autograd/minifloat.h"
#include "lowbit/core/cast2d.h"
#include "lowbit/float8/float8.h"

namespace lowbit::float8::detail {

using core::Cast2D;
using core::CastOutput;
using core::ScaleAxis;

/// The codec of a float8 dtype (throws naming the dtype otherwise).
const MinifloatSpec& float8_spec(DType d, const char* what);
/// Its row of the format table.
const core::Format& float8_format(DType d);

/// amax along `axis` -> scale (float8_amax_to_scale, optionally power of 2) -> saturating RNE
/// cast of fp32(x) * scale, written as `output` (Bf16Dequantized needs pow2). x: float32 (rows x
/// cols, contiguous). A row is cast while in cache after its amax (Row); a tensor or column amax
/// is a first pass over x (Tensor, Col).
/// column_amax: with Row, also gathers every column's amax in the same pass (for a later Col cast
/// of the same matrix); with Col, the column amax to use when it holds cols values (no amax pass).
Cast2D cast_2d(const float* x, int64_t rows, int64_t cols, DType fp8, ScaleAxis axis, bool pow2,
               CastOutput output = CastOutput::Codes, std::vector<float>* column_amax = nullptr);

/// The blockwise cast (TransformerEngine's Float8BlockScaling): core::cast_blocked_2d with the
/// scale rule core::te_amax_to_scale.
Cast2D cast_blocked_2d(const float* x, int64_t rows, int64_t cols, DType fp8, ScaleAxis axis, int64_t block, bool pow2,
                       CastOutput output = CastOutput::Codes);

}  // namespace lowbit::float8::detail
