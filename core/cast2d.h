// 2-D casts to a minifloat element format with one scale per tensor, row, column, 1 x B run,
// B x 1 run or B x B tile: the kernel machinery float8 and MX share. The scale rule is the
// caller's (a block's amax -> the multiplier its elements are scaled by before their cast), so a
// new format or recipe brings a rule, not a new kernel.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "lowbit/autograd/tensor.h"
#include "lowbit/core/format.h"

namespace lowbit::core {

/// Where the scales of a cast 2-D operand (rows x cols, row-major) run: one for the whole matrix;
/// one per row (amax over the row, or over each 1 x block run of it); one per column (amax over
/// the column, or over each block x 1 run of it); one per block x block tile.
enum class ScaleAxis { Tensor, Row, Col, Tile };

/// What a cast writes: the element codes (one byte each, unpacked); their values as bfloat16
/// (exact); or, for power-of-2 multipliers only, the dequantized values code / multiplier as
/// bfloat16 (exact too unless below bfloat16's normal range: see Cast2D::bf16_subnormal) -- an
/// operand a bf16 gemm uses without scaling after.
enum class CastOutput { Codes, Bf16Codes, Bf16Dequantized };

/// A cast 2-D operand: `values` (rows x cols: codes of code_dtype(elem) or bfloat16, per output)
/// and its float32 multipliers: 1, rows or cols values (block = 0); with blocks, row-major per
/// block: Row (rows x ceil(cols/block)), Col (ceil(rows/block) x cols), Tile (ceil(rows/block) x
/// ceil(cols/block)).
struct Cast2D {
  Tensor values;
  Tensor scale;
  ScaleAxis axis = ScaleAxis::Tensor;
  CastOutput output = CastOutput::Codes;
  int64_t block = 0;
  /// Bf16Dequantized only: some multiplier is so large that a nonzero code's dequantized value
  /// could be a bfloat16 denormal, which vdpbf16ps flushes to zero -- a gemm must not use `values`.
  bool bf16_subnormal = false;
  const Format* elem = nullptr;
  /// The multiplier of element (r, c).
  float scale_at(int64_t r, int64_t c) const;
};

/// A block's amax (NaN if it holds a NaN) -> the multiplier of its elements.
using AmaxToMultiplier = std::function<float(float amax)>;

/// The dtype of a Codes cast's values: the format's own one-byte dtype (float8), else uint8 (fp6,
/// fp4: one unpacked code per byte).
DType code_dtype(const Format& elem);

/// Casts n values x[i] * s (s[0], or s[i] when each) with the saturating RNE codec of elem and
/// writes them as `output` at element offset `at` of out; inv (each, Bf16Dequantized) = 1 / s
/// per element.
void cast_run(const Format& elem, CastOutput output, void* out, const float* x, const float* s, bool each, int64_t n,
              int64_t at, const float* inv = nullptr);

/// m[j] = max(m[j], |x[j]|) with NaN sticky.
inline void column_max_update(const float* x, int64_t n, float* m) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float v = x[j] < 0.0f ? -x[j] : x[j];
    m[j] = (v > m[j] || v != v) ? v : m[j];
  }
}
/// max with NaN propagating.
inline float nan_max(float a, float b) {
  return (a != a || b != b) ? std::numeric_limits<float>::quiet_NaN() : (a > b ? a : b);
}

/// Sets c.bf16_subnormal for a Bf16Dequantized cast whose smallest nonzero code, dequantized,
/// falls below bfloat16's smallest normal 2^-126 under some multiplier.
void flag_bf16_subnormal(Cast2D& c);

/// The blockwise cast: amax over each 1 x block run of a row (Row), block x 1 run of a column
/// (Col) or block x block tile (Tile; ragged last blocks everywhere), the multiplier rule(amax)
/// per block, the saturating RNE cast of x * multiplier. A run is cast while in cache after its
/// amax; Col and Tile work a strip of `block` rows at a time (maxima, then the strip's cast).
/// Bf16Dequantized needs power-of-2 multipliers. x: float32, rows x cols, contiguous.
Cast2D cast_blocked_2d(const float* x, int64_t rows, int64_t cols, const Format& elem, ScaleAxis axis, int64_t block,
                       const AmaxToMultiplier& rule, CastOutput output = CastOutput::Codes);

/// The dequantized operand in float32 (values must be codes): decode(code) / multiplier (true
/// division, as torchao's emulated gemms build it).
Tensor dequantize_f32(const Cast2D& c);

}  // namespace lowbit::core
