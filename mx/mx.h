// MX block formats (OCP Microscaling; torchao.prototype.mx_formats, spec §4 and §9 items 6-7):
// blocks of block_size consecutive elements along the last dim share an e8m0 power-of-two scale;
// elements are fp8 e4m3fn / e5m2, fp6 e2m3 / e3m2 or fp4 e2m1. to_mx and dequantize are
// bit-exact with torchao for every scale mode (FLOOR, CEIL, EVEN, RCEIL).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "lowbit/autograd/tensor.h"
#include "lowbit/core/format.h"
#include "lowbit/core/scale.h"

namespace lowbit::mx {

using core::E8M0Rounding;
using core::FormatId;

/// The element format of an MX tensor: float8_e4m3fn, float8_e5m2, fp6_e2m3, fp6_e3m2 or fp4_e2m1
/// (core's rows; torchao's spellings and core's names are both accepted by name). Throws naming
/// the valid ones otherwise.
const core::Format& mx_element(FormatId id);
const core::Format& mx_element(std::string_view name);
/// "float8_e4m3fn, float8_e5m2, fp6_e2m3, fp6_e3m2, fp4_e2m1"
std::string mx_element_names();
/// The short torchao name of an element format ("float8_e4m3fn", "fp6_e2m3", "fp4_e2m1").
const char* element_name(FormatId id);
/// "FLOOR" | "CEIL" | "EVEN" | "RCEIL" (case-sensitive, torchao's ScaleCalculationMode names).
E8M0Rounding parse_scale_mode(std::string_view name);

/// torchao's MXTensor: element codes and e8m0 block scales.
struct MXTensor {
  /// fp8: the float8 dtype, shape (..., K); fp6: uint8 codes in bits 0-5 (sign bit 5), (..., K),
  /// unpacked; fp4: float4_e2m1fn_x2, (..., K/2), element 2i in the low nibble (PyTorch's and
  /// torchao's order since v0.15).
  Tensor qdata;
  /// float8_e8m0fnu, (..., K / block_size): the biased exponents b; 255 = NaN. The block's
  /// elements were multiplied by 2^(127 - b) before their cast.
  Tensor scale;
  FormatId elem = FormatId::Float8E4M3FN;
  int64_t block_size = 32;
  DType orig_dtype = DType::Float32;
  /// The (..., K) shape of the high-precision tensor.
  Shape shape;
  /// element value * 2^(b - 127) in float32 (NaN for b = 255), then cast to dtype (default
  /// orig_dtype, rounding to nearest even): torchao's to_dtype.
  Tensor dequantize(std::optional<DType> dtype = std::nullopt) const;
  /// The element codes, unpacked (one byte per element, (..., K)).
  Tensor codes() const;
};

/// torchao's to_mx (spec §4.2): x float32 or bfloat16, any shape whose last dim is a multiple of
/// block_size. Per block: amax (NaN if any element is NaN), its e8m0 scale by `mode`
/// (core::e8m0_scale), elements x * 2^(127 - b) cast with round-to-nearest-even -- fp8 clamped
/// to +-max (FLOOR/CEIL/EVEN; RCEIL uses PyTorch's plain cast, its ratio never exceeds the max by
/// more than rounding), fp6/fp4 saturating. A NaN block's codes are lowbit's encoder's (fp8: the
/// NaN code; fp6/fp4: the largest magnitude), torchao's are unspecified; both dequantize to NaN.
MXTensor to_mx(const Tensor& x, FormatId elem, int64_t block_size = 32, E8M0Rounding mode = E8M0Rounding::Floor);

/// to_mx(x.t(), ...) (torchao: to_mx(x.t().contiguous())) for a 2-D x (rows x cols) without the transposed copy: the
/// blocks run down x's columns (the operand torchao's mx_mm casts for grad_weight), the result
/// has shape (cols, rows), bit-identical to to_mx of the transpose. rows must be a multiple of
/// block_size (and even for fp4). One pass over x: strips of at least 256 rows, 16 columns
/// transposed in registers at a time.
MXTensor to_mx_transposed(const Tensor& x, FormatId elem, int64_t block_size = 32,
                          E8M0Rounding mode = E8M0Rounding::Floor);

}  // namespace lowbit::mx
