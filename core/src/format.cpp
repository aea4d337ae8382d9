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
          0.0, 1.0, Overflow::Saturate, per_byte_of(bits), storage_of(bits),
          bits <= 8 ? DType::Int8 : DType::Int32, nullptr};
}
constexpr Format uint_row(FormatId id, const char* name, int bits) {
  const int64_t hi = (int64_t{1} << bits) - 1;
  return {id, name, bits, false, FormatKind::Integer, 0, hi, 0, 0, 0, false, false, false, 0, static_cast<double>(hi),
          0.0, 1.0, Overflow::Saturate, per_byte_of(bits), 1, DType::UInt8, nullptr};
}
// sign + E exponent bits + M mantissa bits, from the codec's description (autograd/minifloat.h)
constexpr Format minifloat_row(FormatId id, const char* name, const MinifloatSpec& s, DType storage) {
  const int bits = s.bits();
  return {id, name, bits, true, FormatKind::Float, 0, 0, s.exp_bits, s.mant_bits, s.bias, s.has_inf, s.has_nan,
          s.has_negative_zero, s.nan_code, s.max_finite, p2(1 - s.bias), p2(1 - s.bias - s.mant_bits), s.overflow,
          per_byte_of(bits), storage_of(bits), storage, &s};
}
// bfloat16 and float32: 16 and 32 bits, 8 exponent bits
constexpr Format wide_float_row(FormatId id, const char* name, int m, uint32_t nan_code, double max, DType storage) {
  return {id, name, 9 + m, true, FormatKind::Float, 0, 0, 8, m, 127, true, true, true, nan_code, max, p2(-126),
          p2(-126 - m), Overflow::ToInf, 0, (9 + m) / 8, storage, nullptr};
}
// e8m0: an unsigned 8-bit exponent, bias 127, 0xFF = NaN, no zero
constexpr Format e8m0_row() {
  return {FormatId::Float8E8M0FNU, "float8_e8m0fnu", 8, false, FormatKind::PowerOfTwo, 0, 0, 8, 0, 127, false, true,
          false, 0xFF, p2(127), p2(-127), p2(-127), Overflow::ToNaN, 1, 1, DType::Float8_e8m0fnu, nullptr};
}

constexpr std::array<Format, kNumFormats> kTable = {{
    int_row(FormatId::Int1, "int1", 1),   int_row(FormatId::Int2, "int2", 2),   int_row(FormatId::Int3, "int3", 3),
    int_row(FormatId::Int4, "int4", 4),   int_row(FormatId::Int5, "int5", 5),   int_row(FormatId::Int6, "int6", 6),
    int_row(FormatId::Int7, "int7", 7),   int_row(FormatId::Int8, "int8", 8),   int_row(FormatId::Int16, "int16", 16),
    int_row(FormatId::Int32, "int32", 32),
    uint_row(FormatId::UInt1, "uint1", 1), uint_row(FormatId::UInt2, "uint2", 2), uint_row(FormatId::UInt3, "uint3", 3),
    uint_row(FormatId::UInt4, "uint4", 4), uint_row(FormatId::UInt5, "uint5", 5), uint_row(FormatId::UInt6, "uint6", 6),
    uint_row(FormatId::UInt7, "uint7", 7), uint_row(FormatId::UInt8, "uint8", 8),
    minifloat_row(FormatId::Float8E4M3FN,   "float8_e4m3fn",   kFloat8E4M3FN,   DType::Float8_e4m3fn),
    minifloat_row(FormatId::Float8E5M2,     "float8_e5m2",     kFloat8E5M2,     DType::Float8_e5m2),
    minifloat_row(FormatId::Float8E4M3FNUZ, "float8_e4m3fnuz", kFloat8E4M3FNUZ, DType::Float8_e4m3fnuz),
    minifloat_row(FormatId::Float8E5M2FNUZ, "float8_e5m2fnuz", kFloat8E5M2FNUZ, DType::Float8_e5m2fnuz),
    minifloat_row(FormatId::Float6E2M3FN,   "float6_e2m3fn",   kFloat6E2M3FN,   DType::UInt8),
    minifloat_row(FormatId::Float6E3M2FN,   "float6_e3m2fn",   kFloat6E3M2FN,   DType::UInt8),
    minifloat_row(FormatId::Float4E2M1FN,   "float4_e2m1fn",   kFloat4E2M1FN,   DType::Float4_e2m1fn_x2),
    e8m0_row(),
    wide_float_row(FormatId::BFloat16,  "bfloat16", 7,  0x7FC0,      3.38953139e38,                 DType::BFloat16),
    wide_float_row(FormatId::Float32,   "float32",  23, 0x7FC00000u, static_cast<double>(FLT_MAX), DType::Float32),
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
    case FormatKind::PowerOfTwo: return e8m0_encode(x);
    case FormatKind::Float: break;
  }
  if (f.minifloat) return minifloat_encode(*f.minifloat, x, saturate);
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
    case FormatKind::PowerOfTwo: return e8m0_decode(code);
    case FormatKind::Float: break;
  }
  if (f.minifloat) return minifloat_decode(*f.minifloat, code);
  if (f.id == FormatId::BFloat16) return BFloat16::to_float(static_cast<uint16_t>(code));
  return std::bit_cast<float>(code);
}

void encode_n(const Format& f, const float* x, uint8_t* codes, int64_t n, bool saturate) {
  LOWBIT_CHECK(f.bits <= 8, "encode_n: {} has {}-bit codes (at most 8)", f.name, f.bits);
  if (f.minifloat) return minifloat_encode_n(*f.minifloat, x, codes, n, saturate);
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

namespace {
int compute_int8_value_multiplier(const Format& f) {
  if (f.bits > 8 || !(f.min_subnormal > 0.0) || f.min_subnormal < 1.0 / 128) return 0;
  const double m = 1.0 / f.min_subnormal;
  if (m != std::ldexp(1.0, std::ilogb(m))) return 0;  // a power of two
  for (uint32_t c = 0; c < (1u << f.bits); ++c) {
    const double v = decode(f, c);
    if (std::isnan(v)) continue;
    const double q = v * m;
    if (!std::isfinite(q) || q != std::nearbyint(q) || q < -128.0 || q > 127.0) return 0;
  }
  return static_cast<int>(m);
}
}  // namespace

int int8_value_multiplier(const Format& f) {  // per format, computed once (MX linears ask per call)
  static const std::vector<int> table = [] {
    std::vector<int> t(kNumFormats);
    for (size_t i = 0; i < kNumFormats; ++i) t[i] = compute_int8_value_multiplier(formats()[i]);
    return t;
  }();
  return table[static_cast<size_t>(f.id)];
}

namespace {
// two codes per byte, the first in the low nibble: on 16-bit pairs, so the loop vectorizes
void pack_pairs_low_first(const uint8_t* __restrict codes, uint8_t* __restrict packed, int64_t pairs) {
#pragma omp simd
  for (int64_t k = 0; k < pairs; ++k) {
    uint16_t u;
    std::memcpy(&u, codes + 2 * k, 2);
    packed[k] = static_cast<uint8_t>((u & 0x0F) | ((u >> 4) & 0xF0));
  }
}
// its inverse: each byte -> (low nibble, high nibble) as two bytes
void unpack_pairs_low_first(const uint8_t* __restrict packed, uint8_t* __restrict codes, int64_t pairs) {
#pragma omp simd
  for (int64_t k = 0; k < pairs; ++k) {
    const uint16_t u = static_cast<uint16_t>((packed[k] & 0x0F) | ((packed[k] >> 4) << 8));
    std::memcpy(codes + 2 * k, &u, 2);
  }
}
}  // namespace

void pack(const Format& f, const uint8_t* codes, uint8_t* packed, int64_t n) {
  LOWBIT_CHECK(f.per_byte >= 1, "pack: {} is not a one-byte format", f.name);
  if (f.per_byte == 1) {
    std::memcpy(packed, codes, static_cast<size_t>(n));
    return;
  }
  pack_pairs_low_first(codes, packed, n / 2);
  if (n % 2) packed[n / 2] = codes[n - 1] & 0x0F;
}

void unpack(const Format& f, const uint8_t* packed, uint8_t* codes, int64_t n) {
  LOWBIT_CHECK(f.per_byte >= 1, "unpack: {} is not a one-byte format", f.name);
  if (f.per_byte == 1) {
    std::memcpy(codes, packed, static_cast<size_t>(n));
    return;
  }
  unpack_pairs_low_first(packed, codes, n / 2);
  if (n % 2) codes[n - 1] = packed[n / 2] & 0x0F;  // an odd count's last code
}

}  // namespace lowbit::core
