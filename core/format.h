// The table of number formats: every element format lowbit quantizes to or stores, as data
// (the idea of ggml's type_traits and PyTorch's float8/float4 dtypes). A consumer -- fake
// quantizers, quantized modules, packing, checkpoints, CLI help -- asks this table for a format's
// range, bits, signedness, encodings and packing instead of parsing its name. Adding a format is
// one row here plus one test row.
//
// Codecs are the reference: round to nearest, ties to even, on the float32 input, with the
// saturation rule of each format (see encode()). The bulk versions give the same codes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "lowbit/autograd/dtype.h"
#include "lowbit/autograd/minifloat.h"

namespace lowbit::core {

enum class FormatId : uint8_t {
  Int1,
  Int2,
  Int3,
  Int4,
  Int5,
  Int6,
  Int7,
  Int8,
  Int16,
  Int32,
  UInt1,
  UInt2,
  UInt3,
  UInt4,
  UInt5,
  UInt6,
  UInt7,
  UInt8,
  Float8E4M3FN,
  Float8E5M2,
  Float8E4M3FNUZ,
  Float8E5M2FNUZ,
  Float6E2M3FN,
  Float6E3M2FN,
  Float4E2M1FN,
  Float8E8M0FNU,
  BFloat16,
  Float32,
  kCount
};

enum class FormatKind : uint8_t {
  Integer,     // two's complement (signed) or unsigned integers
  Float,       // sign, exponent, mantissa (IEEE-like minifloats, bfloat16, float32)
  PowerOfTwo,  // exponent only: e8m0 block scales
};

/// What the plain (non-saturating) cast does with a value beyond the largest finite one after
/// rounding (autograd/minifloat.h). Every encode() saturates by default; PyTorch's eager casts up
/// to 2.11 do not.
using Overflow = ::lowbit::Overflow;

struct Format {
  FormatId id;
  const char* name;  // PyTorch's spelling where one exists: "int4", "float8_e4m3fn", "float4_e2m1fn"
  int bits;          // bits of one element
  bool is_signed;
  FormatKind kind;
  // Integer formats: the code range.
  int64_t qmin, qmax;
  // Float formats: field widths and exponent bias (PowerOfTwo: exp_bits = 8, bias = 127).
  int exp_bits, mant_bits, bias;
  bool has_inf, has_nan, has_negative_zero;
  uint32_t nan_code;     // the canonical NaN (the sign bit clear); 0 when the format has none
  double max_finite;     // largest finite value (integers: qmax)
  double min_normal;     // smallest positive normal value (0 for integers)
  double min_subnormal;  // smallest positive value (integers: 1)
  Overflow overflow;
  // Storage: elements per byte when packed (2 for formats of 4 bits or fewer: element 2i in the
  // low nibble, 2i+1 in the high nibble), 1 for 5..8-bit formats (fp6 is stored unpacked, one
  // code in the low 6 bits of a byte), 0 for multi-byte formats.
  int per_byte;
  int storage_bytes;  // bytes per element when unpacked: 1, 2 or 4
  // The engine dtype a tensor of these codes has (float8_e4m3fn, float4_e2m1fn_x2 for packed
  // fp4, int8/uint8 for the integer formats of up to 8 bits, ...).
  DType storage_dtype;
  // The codec's description for sign/exponent/mantissa formats of at most 8 bits, else null.
  const MinifloatSpec* minifloat;
};

/// Number of rows in the table (one per FormatId, in FormatId order; checked at compile time).
inline constexpr size_t kNumFormats = static_cast<size_t>(FormatId::kCount);

/// Every row, in FormatId order.
const Format* formats();
const Format& format(FormatId id);
/// The format named `name` (also "fp8_e4m3" style aliases: see the table), or nullptr.
const Format* find_format(std::string_view name);
/// The format named `name`; throws lowbit::Error naming `what` and listing the known names of
/// that kind (all kinds when kind_filter is null).
const Format& format_by_name(std::string_view name, std::string_view what = "format",
                             const FormatKind* kind_filter = nullptr);
/// "int1, int2, ..." -- the names of one kind, for help texts and errors.
std::string format_names(FormatKind kind);

/// Encodes one float32 value as the format's code (the low `bits` bits of the result): round to
/// nearest, ties to even. saturate = true clamps to +-max_finite (NaN stays NaN where the format
/// has one; formats without NaN map it to 0 for integers and to the largest magnitude for fp6 /
/// fp4); saturate = false follows the format's `overflow` rule, as PyTorch's eager casts do.
/// Integer codes are two's complement in `bits` bits. e8m0 follows PyTorch's float8_e8m0fnu
/// cast: the power of two nearest in the mantissa (half rounds up), 0 and values up to 2^-127
/// give 0, non-finite, negative or too large values give the NaN code 255.
uint32_t encode(const Format& f, float x, bool saturate = true);
/// The value of a code (integers: the signed or unsigned integer; NaN codes: a quiet NaN).
float decode(const Format& f, uint32_t code);

/// Bulk versions over n elements (codes one per byte, unpacked), bit-identical to the scalar
/// ones; formats of up to 8 bits only. decode_n uses a 256-entry table.
void encode_n(const Format& f, const float* x, uint8_t* codes, int64_t n, bool saturate = true);
void decode_n(const Format& f, const uint8_t* codes, float* out, int64_t n);

/// Packs codes of a format with per_byte == 2 two per byte, element 2i in the low nibble (n may
/// be odd: the last high nibble is 0); unpack is the inverse. Formats with per_byte == 1 copy.
void pack(const Format& f, const uint8_t* codes, uint8_t* packed, int64_t n);
void unpack(const Format& f, const uint8_t* packed, uint8_t* codes, int64_t n);
/// Bytes that n packed elements take.
int64_t packed_bytes(const Format& f, int64_t n);

/// The power of two m for which every finite value of f times m is an integer in [-128, 127]
/// (int8-exact: fp4 e2m1 -> 2, fp6 e2m3 -> 8, integers of up to 8 bits -> 1), or 0 when none
/// exists (fp6 e3m2, float8, e8m0). The MX integer GEMM runs on such values.
int int8_value_multiplier(const Format& f);

}  // namespace lowbit::core
