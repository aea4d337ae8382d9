// Element types. float32 is the compute type; bfloat16 is a storage type (math upcasts to
// float32 and rounds back to nearest-even); float64 exists for references and gradcheck.
// The low-precision storage dtypes (PyTorch's float8_e4m3fn, float8_e5m2, their fnuz variants,
// float8_e8m0fnu and float4_e2m1fn_x2) hold codes: tensors of them can be created, viewed,
// copied, converted with to() (round to nearest even, saturating), printed and checkpointed;
// arithmetic takes float32 (convert first), as in PyTorch.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace lowbit {

enum class DType : uint8_t {
  Float32,
  BFloat16,
  Float64,
  Int8,
  UInt8,
  Int32,
  Int64,
  Bool,
  Float8_e4m3fn,
  Float8_e5m2,
  Float8_e4m3fnuz,
  Float8_e5m2fnuz,
  Float8_e8m0fnu,
  Float4_e2m1fn_x2,  // two float4_e2m1fn codes per element: element 2i in the low nibble
};
/// Number of dtypes (checked against the dtype table at compile time).
inline constexpr int kNumDTypes = 14;

inline constexpr DType kFloat32 = DType::Float32;
inline constexpr DType kBFloat16 = DType::BFloat16;
inline constexpr DType kFloat64 = DType::Float64;
inline constexpr DType kInt8 = DType::Int8;
inline constexpr DType kUInt8 = DType::UInt8;
inline constexpr DType kInt32 = DType::Int32;
inline constexpr DType kInt64 = DType::Int64;
inline constexpr DType kBool = DType::Bool;
inline constexpr DType kFloat8_e4m3fn = DType::Float8_e4m3fn;
inline constexpr DType kFloat8_e5m2 = DType::Float8_e5m2;
inline constexpr DType kFloat8_e4m3fnuz = DType::Float8_e4m3fnuz;
inline constexpr DType kFloat8_e5m2fnuz = DType::Float8_e5m2fnuz;
inline constexpr DType kFloat8_e8m0fnu = DType::Float8_e8m0fnu;
inline constexpr DType kFloat4_e2m1fn_x2 = DType::Float4_e2m1fn_x2;

/// Bytes per element.
size_t element_size(DType dtype);
/// "float32", "bfloat16", ... as PyTorch names them.
const char* dtype_name(DType dtype);
/// Parses a dtype name ("float32", "bf16", "int8", ...); throws lowbit::Error on unknown names.
DType dtype_from_name(const std::string& name);
bool is_floating(DType dtype);  // float32, bfloat16, float64: the dtypes ops compute on
bool is_integral(DType dtype);  // int8, uint8, int32, int64 (not bool)
/// float8_*, float8_e8m0fnu, float4_e2m1fn_x2: codes of a low-precision format, converted with
/// to(); ops other than views, copies and conversions reject them.
bool is_low_precision(DType dtype);

/// bfloat16 bits. Conversion from float rounds to nearest, ties to even; NaN stays a quiet NaN.
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  explicit BFloat16(float f) : bits(from_float(f)) {}
  operator float() const { return to_float(bits); }

  static uint16_t from_float(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
    const uint32_t lsb = (u >> 16) & 1u;
    u += 0x7fffu + lsb;
    return static_cast<uint16_t>(u >> 16);
  }
  static float to_float(uint16_t b) {
    const uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

/// Maps a C++ type to its DType (float, double, BFloat16, int8_t, uint8_t, int32_t, int64_t, bool).
template <typename T>
struct dtype_of;
#define LOWBIT_DTYPE_OF(CT, DT)               \
  template <>                                 \
  struct dtype_of<CT> {                       \
    static constexpr DType value = DType::DT; \
  };
LOWBIT_DTYPE_OF(float, Float32)
LOWBIT_DTYPE_OF(BFloat16, BFloat16)
LOWBIT_DTYPE_OF(double, Float64)
LOWBIT_DTYPE_OF(int8_t, Int8)
LOWBIT_DTYPE_OF(uint8_t, UInt8)
LOWBIT_DTYPE_OF(int32_t, Int32)
LOWBIT_DTYPE_OF(int64_t, Int64)
LOWBIT_DTYPE_OF(bool, Bool)
#undef LOWBIT_DTYPE_OF

}  // namespace lowbit
