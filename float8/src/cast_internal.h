// Internals of the float8 casts shared by the public casts (cast.cpp) and Float8Linear
// (linear.cpp). Not installed.
#pragma once
#include <vector>

#include "lowbit/autograd/minifloat.h"
#include "lowbit/float8/float8.h"

namespace lowbit::float8::detail {

/// Where the scales of a cast 2-D operand (rows x cols, row-major) run: one for the whole matrix,
/// one per row (amax over the row, or over each 1 x block run of it), one per column (amax over the
/// column, or over each block x 1 run of it), one per block x block tile.
enum class ScaleAxis { Tensor, Row, Col, Tile };

/// What a cast writes: the float8 codes; their values as bfloat16 (exact); or, for power-of-2
/// scales only, the dequantized values code / scale as bfloat16 (exact too: a float8 value times a
/// power of two, within bfloat16's range) -- an operand the bf16 gemm uses without scaling after.
enum class CastOutput { Codes, Bf16Codes, Bf16Dequantized };

/// A cast 2-D operand: `values` (rows x cols: float8 codes or bfloat16, per CastOutput) and its
/// float32 multipliers: 1, rows or cols values (block = 0); with blocks, row-major per block:
/// Row (rows x ceil(cols/block)), Col (ceil(rows/block) x cols), Tile (ceil(rows/block) x
/// ceil(cols/block)).
struct Cast2D {
  Tensor values;
  Tensor scale;
  ScaleAxis axis;
  CastOutput output;
  int64_t block = 0;
  /// Bf16Dequantized only: some scale is so large that a nonzero code's dequantized value could be
  /// a bfloat16 denormal, which vdpbf16ps flushes to zero -- the gemm must not use `values`.
  bool bf16_subnormal = false;
  /// The multiplier of element (r, c).
  float scale_at(int64_t r, int64_t c) const;
};

/// The codec of a float8 dtype (throws naming the dtype otherwise).
const MinifloatSpec& float8_spec(DType d, const char* what);

/// amax along `axis` -> scale (float8_amax_to_scale, optionally power of 2) -> saturating RNE
/// cast of fp32(x) * scale, written as `output` (Bf16Dequantized needs pow2). x: float32 (rows x
/// cols, contiguous). A row is cast while in cache after its amax (Row); a tensor or column amax
/// is a first pass over x (Tensor, Col).
/// column_amax: with Row, also gathers every column's amax in the same pass (for a later Col cast
/// of the same matrix); with Col, the column amax to use when it holds cols values (no amax pass).
Cast2D cast_2d(const float* x, int64_t rows, int64_t cols, DType fp8, ScaleAxis axis, bool pow2,
               CastOutput output = CastOutput::Codes, std::vector<float>* column_amax = nullptr);

/// The blockwise cast (TransformerEngine's Float8BlockScaling): amax over each 1 x block run of a
/// row (Row), block x 1 run of a column (Col) or block x block tile (Tile), a scale per block by
/// core::te_amax_to_scale, the saturating RNE cast of fp32(x) * scale. Ragged last blocks.
Cast2D cast_blocked_2d(const float* x, int64_t rows, int64_t cols, DType fp8, ScaleAxis axis, int64_t block, bool pow2,
                       CastOutput output = CastOutput::Codes);

/// The dequantized operand in float32 (values must be codes): decode(code) / scale (true division),
/// as torchao's emulated gemm builds it.
Tensor dequantize_f32(const Cast2D& c, DType fp8);

}  // namespace lowbit::float8::detail
