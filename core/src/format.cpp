#include "lowbit/core/format.h"

#include <array>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include "lowbit/autograd/dtype.h"
#include "lowbit/autograd/error.h"
#include "lowbit/autograd/kernel.h"

namespace lowbit::core {

namespace {
constexpr double p2(int e) {  // 2^e for constant tables
  double v = 1.0;
  for (; e > 0; --e) v *= 2.0;
  for (; e < 0; ++e) v /= 2.0;
  return v;
}
// The table reads best as aligned rows.
// clang-format off
constexpr int per_byte_of(int bits) { return bits <= 4 ? 2 : bits <= 8 ? 1 : 0; }
constexpr int storage_of(int bits) { return bits <= 8 ? 1 : bits / 8; }
constexpr Format int_row(FormatId id, const char* name, int bits) {
  const int64_t lo = bits == 1 ? -1 : -(int64_t{1} << (bits - 1)), hi = bits == 1 ? 0 : (int64_t{1} << (bits - 1)) - 1;
  return {id, name, bits, true, FormatKind::Integer, lo, hi, 0, 0, 0, false, false, false, 0, static_cast<double>(hi),
          0.0, 1.0, Overflow::Saturate, per_byte_of(bits), storage_of(bits)};
}
constexpr Format uint_row(FormatId id, const char* name, int bits) {
  const int64_t hi = (int64_t{1} << bits) - 1;
  return {id, name, bits, false, FormatKind::Integer, 0, hi, 0, 0, 0, false, false, false, 0, static_cast<double>(hi),
          0.0, 1.0, Overflow::Saturate, per_byte_of(bits), 1};
}
// sign + E exponent bits + M mantissa bits
constexpr Format float_row(FormatId id, const char* name, int e, int m, int bias, bool inf, bool nan, bool negzero,
                           uint32_t nan_code, double max, Overflow ovf) {
  const int bits = 1 + e + m;
  return {id, name, bits, true, FormatKind::Float, 0, 0, e, m, bias, inf, nan, negzero, nan_code, max, p2(1 - bias),
          p2(1 - bias - m), ovf, per_byte_of(bits), storage_of(bits)};
}
// e8m0: an unsigned 8-bit exponent, bias 127, 0xFF = NaN, no zero
constexpr Format e8m0_row() {
  return {FormatId::Float8E8M0FNU, "float8_e8m0fnu", 8, false, FormatKind::PowerOfTwo, 0, 0, 8, 0, 127, false, true,
          false, 0xFF, p2(127), p2(-127), p2(-127), Overflow::ToNaN, 1, 1};
}

constexpr std::array<Format, kNumFormats> kTable = {{
    int_row(FormatId::Int1, "int1", 1),   int_row(FormatId::Int2, "int2", 2),   int_row(FormatId::Int3, "int3", 3),
    int_row(FormatId::Int4, "int4", 4),   int_row(FormatId::Int5, "int5", 5),   int_row(FormatId::Int6, "int6", 6),
    int_row(FormatId::Int7, "int7", 7),   int_row(FormatId::Int8, "int8", 8),   int_row(FormatId::Int16, "int16", 16),
    int_row(FormatId::Int32, "int32", 32),
    uint_row(FormatId::UInt1, "uint1", 1), uint_row(FormatId::UInt2, "uint2", 2), uint_row(FormatId::UInt3, "uint3", 3),
    uint_row(FormatId::UInt4, "uint4", 4), uint_row(FormatId::UInt5, "uint5", 5), uint_row(FormatId::UInt6, "uint6", 6),
    uint_row(FormatId::UInt7, "uint7", 7), uint_row(FormatId::UInt8, "uint8", 8),
    //        id                            name               E  M  bias inf    nan    -0     NaN code     max finite  overflow
    float_row(FormatId::Float8E4M3FN,   "float8_e4m3fn",   4, 3,  7, false, true,  true,  0x7F,        448.0,      Overflow::ToNaN),
    float_row(FormatId::Float8E5M2,     "float8_e5m2",     5, 2, 15, true,  true,  true,  0x7E,        57344.0,    Overflow::ToInf),
    float_row(FormatId::Float8E4M3FNUZ, "float8_e4m3fnuz", 4, 3,  8, false, true,  false, 0x80,        240.0,      Overflow::ToNaN),
    float_row(FormatId::Float8E5M2FNUZ, "float8_e5m2fnuz", 5, 2, 16, false, true,  false, 0x80,        57344.0,    Overflow::ToNaN),
    float_row(FormatId::Float6E2M3FN,   "float6_e2m3fn",   2, 3,  1, false, false, true,  0,           7.5,        Overflow::Saturate),
    float_row(FormatId::Float6E3M2FN,   "float6_e3m2fn",   3, 2,  3, false, false, true,  0,           28.0,       Overflow::Saturate),
    float_row(FormatId::Float4E2M1FN,   "float4_e2m1fn",   2, 1,  1, false, false, true,  0,           6.0,        Overflow::Saturate),
    e8m0_row(),
    float_row(FormatId::BFloat16,       "bfloat16",        8, 7, 127, true, true,  true,  0x7FC0,      3.38953139e38, Overflow::ToInf),
    float_row(FormatId::Float32,        "float32",         8, 23, 127, true, true, true,  0x7FC00000u, static_cast<double>(FLT_MAX), Overflow::ToInf),
}};
// clang-format on

constexpr bool rows_in_id_order() {
  for (size_t i = 0; i < kTable.size(); ++i)
    if (static_cast<size_t>(kTable[i].id) != i) return false;
  return true;
}
static_assert(kTable.size() == kNumFormats, "one row per FormatId");
static_assert(rows_in_id_order(), "rows must be in FormatId order");

struct Alias {
  const char* alias;
  FormatId id;
};
constexpr Alias kAliases[] = {
    {"fp8_e4m3", FormatId::Float8E4M3FN}, {"e4m3", FormatId::Float8E4M3FN},
    {"fp8_e5m2", FormatId::Float8E5M2},   {"e5m2", FormatId::Float8E5M2},
    {"fp6_e2m3", FormatId::Float6E2M3FN}, {"fp6_e3m2", FormatId::Float6E3M2FN},
    {"fp4_e2m1", FormatId::Float4E2M1FN}, {"float4_e2m1fn_x2", FormatId::Float4E2M1FN},
    {"e8m0", FormatId::Float8E8M0FNU},    {"bf16", FormatId::BFloat16},
    {"fp32", FormatId::Float32},
};

uint32_t bits_of(float x) { return std::bit_cast<uint32_t>(x); }
float float_of(uint32_t u) { return std::bit_cast<float>(u); }

// Largest finite magnitude code of a minifloat (e4m3fn: 0x7E, e5m2: 0x7B, fnuz: 0x7F, fp6/fp4: all ones).
uint32_t max_magnitude_code(const Format& f) {
  const uint32_t all = (1u << (f.exp_bits + f.mant_bits)) - 1;
  if (f.has_inf) return all - (1u << f.mant_bits);       // the exponent below all-ones, full mantissa
  if (f.has_nan && f.has_negative_zero) return all - 1;  // S.1111.111 is NaN
  return all;
}

// sign + exponent + mantissa formats of at most 8 bits (fp8, fp6, fp4)
uint32_t encode_minifloat(const Format& f, float x, bool saturate) {
  const int E = f.exp_bits, M = f.mant_bits;
  const uint32_t u = bits_of(x), a = u & 0x7fffffffu;
  const uint32_t sign_code = (u >> 31) << (E + M);
  const uint32_t max_mag = max_magnitude_code(f);
  if (a > 0x7f800000u) {  // NaN
    if (f.has_nan) return f.has_negative_zero ? (f.nan_code | sign_code) : f.nan_code;
    return sign_code | max_mag;
  }
  uint64_t mag;
  const uint32_t min_normal_bits = static_cast<uint32_t>(127 - f.bias + 1) << 23;
  if (a >= min_normal_bits) {
    // rebias the exponent and round the mantissa to M bits, ties to even
    const int64_t r = static_cast<int64_t>(a) + (static_cast<int64_t>(f.bias - 127) << 23) +
                      ((int64_t{1} << (22 - M)) - 1) + ((a >> (23 - M)) & 1);
    mag = static_cast<uint64_t>(r) >> (23 - M);
  } else {
    // subnormal: adding 2^(24 - M - bias) makes the FPU round |x| to a multiple of the
    // smallest subnormal (ties to even); the difference of the bit patterns is the code
    const uint32_t magic_bits = static_cast<uint32_t>((127 - f.bias) + (23 - M) + 1) << 23;
    mag = bits_of(float_of(a) + float_of(magic_bits)) - magic_bits;
  }
  if (mag > max_mag) {
    if (saturate || f.overflow == Overflow::Saturate) {
      mag = max_mag;
    } else if (f.overflow == Overflow::ToNaN) {
      return f.has_negative_zero ? (f.nan_code | sign_code) : f.nan_code;
    } else {
      mag = ((1u << E) - 1) << M;  // infinity
    }
  }
  if (mag == 0 && !f.has_negative_zero) return 0;
  return sign_code | static_cast<uint32_t>(mag);
}

float decode_minifloat(const Format& f, uint32_t code) {
  const int E = f.exp_bits, M = f.mant_bits;
  code &= (1u << (1 + E + M)) - 1;
  const bool neg = (code >> (E + M)) & 1;
  const uint32_t e = (code >> M) & ((1u << E) - 1), m = code & ((1u << M) - 1);
  if (f.has_nan && !f.has_negative_zero && code == f.nan_code) return std::numeric_limits<float>::quiet_NaN();
  if (f.has_nan && f.has_negative_zero && !f.has_inf && (code & ~(1u << (E + M))) == f.nan_code)
    return std::numeric_limits<float>::quiet_NaN();
  if (f.has_inf && e == (1u << E) - 1)
    return m == 0 ? (neg ? -INFINITY : INFINITY) : std::numeric_limits<float>::quiet_NaN();
  const float v = e == 0 ? std::ldexp(static_cast<float>(m), 1 - f.bias - M)
                         : std::ldexp(static_cast<float>((1u << M) + m), static_cast<int>(e) - f.bias - M);
  return neg ? -v : v;
}

uint32_t encode_e8m0(float x) {
  const uint32_t u = bits_of(x);
  if (u >> 31 && (u & 0x7fffffffu) != 0) return 0xFF;  // negative
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return 0xFF;  // inf, NaN
  if (a == 0) return 0;
  int e;
  const float m = std::frexp(float_of(a), &e);  // a = m * 2^e, m in [0.5, 1)
  // the nearest power of two by the mantissa: 1.m >= 1.5 rounds up (PyTorch's cast)
  const int p = m >= 0.75f ? e : e - 1;
  const int code = p + 127;
  if (code <= 0) return 0;
  if (code > 254) return 0xFF;
  return static_cast<uint32_t>(code);
}

uint32_t encode_integer(const Format& f, float x) {
  if (std::isnan(x)) return 0;
  const double r = std::nearbyint(static_cast<double>(x));  // ties to even (default rounding mode)
  const int64_t v =
      static_cast<int64_t>(std::min(std::max(r, static_cast<double>(f.qmin)), static_cast<double>(f.qmax)));
  return static_cast<uint32_t>(static_cast<uint64_t>(v) & (f.bits == 32 ? 0xffffffffu : ((1u << f.bits) - 1)));
}
float decode_integer(const Format& f, uint32_t code) {
  const uint32_t mask = f.bits == 32 ? 0xffffffffu : ((1u << f.bits) - 1);
  code &= mask;
  if (f.is_signed && f.bits < 32 && (code >> (f.bits - 1)) & 1)
    return static_cast<float>(static_cast<int64_t>(code) - (int64_t{1} << f.bits));
  if (f.is_signed && f.bits == 32) return static_cast<float>(static_cast<int32_t>(code));
  return static_cast<float>(code);
}
}  // namespace

const Format* formats() { return kTable.data(); }
const Format& format(FormatId id) { return kTable[static_cast<size_t>(id)]; }

const Format* find_format(std::string_view name) {
  for (const auto& f : kTable)
    if (name == f.name) return &f;
  for (const auto& a : kAliases)
    if (name == a.alias) return &format(a.id);
  return nullptr;
}

std::string format_names(FormatKind kind) {
  std::string out;
  for (const auto& f : kTable)
    if (f.kind == kind) out += (out.empty() ? "" : ", ") + std::string(f.name);
  return out;
}

const Format& format_by_name(std::string_view name, std::string_view what, const FormatKind* kind_filter) {
  const Format* f = find_format(name);
  if (f && (!kind_filter || f->kind == *kind_filter)) return *f;
  std::string known;
  if (kind_filter) {
    known = format_names(*kind_filter);
  } else {
    for (FormatKind k : {FormatKind::Integer, FormatKind::Float, FormatKind::PowerOfTwo})
      known += (known.empty() ? "" : ", ") + format_names(k);
  }
  throw Error(fmt::format("{}: unknown {} '{}' (known: {})", what,
                          kind_filter && *kind_filter == FormatKind::Integer ? "integer format" : "format", name,
                          known));
}

uint32_t encode(const Format& f, float x, bool saturate) {
  switch (f.kind) {
    case FormatKind::Integer: return encode_integer(f, x);
    case FormatKind::PowerOfTwo: return encode_e8m0(x);
    case FormatKind::Float: break;
  }
  if (f.bits <= 8) return encode_minifloat(f, x, saturate);
  const float y = saturate && std::isinf(x) ? std::copysign(static_cast<float>(f.max_finite), x) : x;
  if (f.id == FormatId::BFloat16) {
    uint16_t b = BFloat16::from_float(y);
    if (saturate && (b & 0x7fffu) == 0x7f80u)
      b = static_cast<uint16_t>((b & 0x8000u) | 0x7f7fu);  // rounded up to inf: the largest finite
    return b;
  }
  return bits_of(y);
}

float decode(const Format& f, uint32_t code) {
  switch (f.kind) {
    case FormatKind::Integer: return decode_integer(f, code);
    case FormatKind::PowerOfTwo:
      return (code & 0xFF) == 0xFF ? std::numeric_limits<float>::quiet_NaN()
                                   : std::ldexp(1.0f, static_cast<int>(code & 0xFF) - 127);
    case FormatKind::Float: break;
  }
  if (f.bits <= 8) return decode_minifloat(f, code);
  if (f.id == FormatId::BFloat16) return BFloat16::to_float(static_cast<uint16_t>(code));
  return float_of(code);
}

void encode_n(const Format& f, const float* x, uint8_t* codes, int64_t n, bool saturate) {
  LOWBIT_CHECK(f.bits <= 8, "encode_n: {} has {}-bit codes (at most 8)", f.name, f.bits);
  detail::parallel_for(n, kParallelGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) codes[i] = static_cast<uint8_t>(encode(f, x[i], saturate));
  });
}

void decode_n(const Format& f, const uint8_t* codes, float* out, int64_t n) {
  LOWBIT_CHECK(f.bits <= 8, "decode_n: {} has {}-bit codes (at most 8)", f.name, f.bits);
  float table[256];
  for (uint32_t c = 0; c < 256; ++c) table[c] = decode(f, c);
  detail::parallel_for(n, kParallelGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[i] = table[codes[i]];
  });
}

int64_t packed_bytes(const Format& f, int64_t n) {
  if (f.per_byte == 2) return (n + 1) / 2;
  return n * f.storage_bytes;
}

void pack(const Format& f, const uint8_t* codes, uint8_t* packed, int64_t n) {
  LOWBIT_CHECK(f.per_byte >= 1, "pack: {} is not a one-byte format", f.name);
  if (f.per_byte == 1) {
    std::memcpy(packed, codes, static_cast<size_t>(n));
    return;
  }
  for (int64_t i = 0; i + 1 < n; i += 2)
    packed[i / 2] = static_cast<uint8_t>((codes[i] & 0x0F) | ((codes[i + 1] & 0x0F) << 4));
  if (n % 2) packed[n / 2] = codes[n - 1] & 0x0F;
}

void unpack(const Format& f, const uint8_t* packed, uint8_t* codes, int64_t n) {
  LOWBIT_CHECK(f.per_byte >= 1, "unpack: {} is not a one-byte format", f.name);
  if (f.per_byte == 1) {
    std::memcpy(codes, packed, static_cast<size_t>(n));
    return;
  }
  for (int64_t i = 0; i < n; ++i) codes[i] = (packed[i / 2] >> ((i % 2) * 4)) & 0x0F;
}

}  // namespace lowbit::core
