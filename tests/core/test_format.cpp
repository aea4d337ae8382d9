// The format table: every code of every 8-bit-or-smaller format round-trips, every float32
// boundary between two adjacent codes rounds to nearest with ties to even, the saturation rules
// and PyTorch's observed casts (spec §3.1, §4.1), integer ranges, packing.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <vector>

#include <lowbit/lowbit.h>

using namespace lowbit;
using namespace lowbit::core;

namespace {
bool same_value(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || (a == b && std::signbit(a) == std::signbit(b));
}

std::vector<const Format*> small_formats(FormatKind kind) {
  std::vector<const Format*> out;
  for (size_t i = 0; i < kNumFormats; ++i)
    if (formats()[i].kind == kind && formats()[i].bits <= 8) out.push_back(&formats()[i]);
  return out;
}
}  // namespace

TEST(FormatTable, RowsDescribeThemselves) {
  for (size_t i = 0; i < kNumFormats; ++i) {
    const Format& f = formats()[i];
    SCOPED_TRACE(f.name);
    EXPECT_EQ(static_cast<size_t>(f.id), i);
    EXPECT_EQ(find_format(f.name), &f);
    EXPECT_EQ(&format_by_name(f.name), &f);
    if (f.kind == FormatKind::Float) {
      EXPECT_EQ(f.bits, 1 + f.exp_bits + f.mant_bits);
      // the largest finite value and the smallest ones are what the codec produces
      EXPECT_EQ(decode(f, encode(f, static_cast<float>(f.max_finite))), static_cast<float>(f.max_finite));
      EXPECT_EQ(decode(f, encode(f, static_cast<float>(f.min_subnormal))), static_cast<float>(f.min_subnormal));
      EXPECT_EQ(decode(f, encode(f, static_cast<float>(f.min_normal))), static_cast<float>(f.min_normal));
    }
    EXPECT_EQ(f.per_byte, f.bits <= 4 ? 2 : f.bits <= 8 ? 1 : 0);
  }
  EXPECT_EQ(find_format("fp8_e4m3"), &format(FormatId::Float8E4M3FN));
  EXPECT_EQ(find_format("float4_e2m1fn_x2"), &format(FormatId::Float4E2M1FN));
  EXPECT_EQ(find_format("int9"), nullptr);
  const FormatKind integer = FormatKind::Integer;
  try {
    format_by_name("int9", "quantize.weight_dtype", &integer);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("quantize.weight_dtype: unknown integer format 'int9' (known: int1, int2"),
              std::string::npos)
        << e.what();
  }
}

TEST(FormatTable, IntegerRangesAndCodes) {
  const std::map<std::string, std::pair<int64_t, int64_t>> expected = {
      {"int1", {-1, 0}}, {"int2", {-2, 1}},  {"int4", {-8, 7}},   {"int8", {-128, 127}},
      {"uint1", {0, 1}}, {"uint4", {0, 15}}, {"uint8", {0, 255}}, {"int16", {-32768, 32767}}};
  for (const auto& [name, range] : expected) {
    const Format& f = format_by_name(name);
    EXPECT_EQ(f.qmin, range.first) << name;
    EXPECT_EQ(f.qmax, range.second) << name;
  }
  for (const Format* f : small_formats(FormatKind::Integer)) {
    SCOPED_TRACE(f->name);
    for (int64_t v = f->qmin; v <= f->qmax; ++v) {
      const uint32_t c = encode(*f, static_cast<float>(v));
      EXPECT_LT(c, 1u << f->bits);
      EXPECT_EQ(decode(*f, c), static_cast<float>(v));
    }
    EXPECT_EQ(decode(*f, encode(*f, 1e9f)), static_cast<float>(f->qmax));
    EXPECT_EQ(decode(*f, encode(*f, -1e9f)), static_cast<float>(f->qmin));
    if (f->qmax >= 3) {  // ties to even
      EXPECT_EQ(decode(*f, encode(*f, 0.5f)), 0.0f);
      EXPECT_EQ(decode(*f, encode(*f, 1.5f)), 2.0f);
      EXPECT_EQ(decode(*f, encode(*f, 2.5f)), 2.0f);
    }
  }
}

TEST(FormatTable, EveryCodeRoundTrips) {
  for (FormatKind kind : {FormatKind::Float, FormatKind::PowerOfTwo}) {
    for (const Format* f : small_formats(kind)) {
      SCOPED_TRACE(f->name);
      int nan_codes = 0;
      for (uint32_t c = 0; c < (1u << f->bits); ++c) {
        const float v = decode(*f, c);
        if (std::isnan(v)) {
          ++nan_codes;
          EXPECT_TRUE(std::isnan(decode(*f, encode(*f, v))));
          continue;
        }
        if (std::isinf(v)) {
          EXPECT_EQ(encode(*f, v, /*saturate=*/false), c);
          continue;
        }
        EXPECT_EQ(encode(*f, v), c) << "code " << c << " value " << v;
        EXPECT_EQ(encode(*f, v, false), c) << "code " << c << " value " << v;
      }
      EXPECT_EQ(nan_codes, !f->has_nan                                                  ? 0
                           : f->kind == FormatKind::PowerOfTwo || !f->has_negative_zero ? 1
                           : f->has_inf                                                 ? 6
                                                                                        : 2);
    }
  }
}

TEST(FormatTable, BoundariesBetweenAdjacentCodesTieToEven) {
  // For every pair of adjacent non-negative finite values: the midpoint goes to the one with
  // the even code, the float32 values just below and above it to the nearer one.
  for (const Format* f : small_formats(FormatKind::Float)) {
    SCOPED_TRACE(f->name);
    std::vector<std::pair<float, uint32_t>> values;  // non-negative finite values by code
    for (uint32_t c = 0; c < (1u << (f->bits - 1)); ++c) {
      const float v = decode(*f, c);
      if (std::isfinite(v)) values.emplace_back(v, c);
    }
    std::sort(values.begin(), values.end());
    int checked = 0;
    for (size_t i = 0; i + 1 < values.size(); ++i) {
      const auto [lo, lo_code] = values[i];
      const auto [hi, hi_code] = values[i + 1];
      const float mid = 0.5f * (lo + hi);  // exact: one bit more than the format's mantissa
      ASSERT_EQ(static_cast<double>(mid), 0.5 * (static_cast<double>(lo) + static_cast<double>(hi)));
      const uint32_t even = (lo_code % 2 == 0) ? lo_code : hi_code;
      EXPECT_EQ(encode(*f, mid), even) << lo << " | " << hi;
      EXPECT_EQ(encode(*f, std::nextafter(mid, 0.0f)), lo_code) << lo << " | " << hi;
      EXPECT_EQ(encode(*f, std::nextafter(mid, INFINITY)), hi_code) << lo << " | " << hi;
      // negative values mirror positive ones (fnuz: without a negative zero)
      if (lo > 0) EXPECT_EQ(decode(*f, encode(*f, -mid)), -decode(*f, even));
      ++checked;
    }
    EXPECT_EQ(checked, static_cast<int>(values.size()) - 1);
    // beyond the largest value: saturate, or the format's overflow rule
    const float max = static_cast<float>(f->max_finite);
    const float ulp_top = values.back().first - values[values.size() - 2].first;
    EXPECT_EQ(decode(*f, encode(*f, max + ulp_top)), max);
    EXPECT_EQ(decode(*f, encode(*f, INFINITY)), max);
    EXPECT_EQ(decode(*f, encode(*f, -INFINITY)), -max);
    const float over = decode(*f, encode(*f, max + ulp_top, /*saturate=*/false));
    switch (f->overflow) {
      case Overflow::Saturate: EXPECT_EQ(over, max); break;
      case Overflow::ToNaN: EXPECT_TRUE(std::isnan(over)); break;
      case Overflow::ToInf: EXPECT_EQ(over, INFINITY); break;
    }
  }
}

TEST(FormatTable, PyTorchObservedCasts) {
  // spec §3.1 / §8: eager e4m3fn casts on PyTorch 2.11 do not saturate
  const Format& e4m3 = format(FormatId::Float8E4M3FN);
  const std::vector<float> in = {448, 456, 464, 465, 500, INFINITY, NAN};
  const std::vector<float> eager = {448, 448, 448, NAN, NAN, NAN, NAN};
  for (size_t i = 0; i < in.size(); ++i)
    EXPECT_TRUE(same_value(decode(e4m3, encode(e4m3, in[i], false)), eager[i])) << in[i];
  EXPECT_EQ(encode(e4m3, 448.0f), 0x7Eu);
  EXPECT_EQ(encode(e4m3, -448.0f), 0xFEu);
  const Format& e5m2 = format(FormatId::Float8E5M2);
  EXPECT_EQ(decode(e5m2, encode(e5m2, 61440.0f, false)), INFINITY);
  EXPECT_EQ(encode(e5m2, 57344.0f), 0x7Bu);
  const Format& fnuz = format(FormatId::Float8E4M3FNUZ);
  EXPECT_EQ(encode(fnuz, -0.0f), 0u);  // no negative zero
  EXPECT_EQ(encode(fnuz, NAN), 0x80u);
  EXPECT_EQ(decode(fnuz, encode(fnuz, 240.0f)), 240.0f);
  // spec §4.1: fp4 / fp6 ties and saturation
  const Format& fp4 = format(FormatId::Float4E2M1FN);
  const std::vector<std::pair<float, float>> fp4_cases = {
      {0.25f, 0}, {0.75f, 1.0f}, {1.25f, 1.0f}, {1.75f, 2}, {2.5f, 2}, {3.5f, 4}, {5.0f, 4}, {5.5f, 6}, {INFINITY, 6}};
  for (auto [x, y] : fp4_cases) EXPECT_EQ(decode(fp4, encode(fp4, x)), y) << x;
  const float fp4_table[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (uint32_t c = 0; c < 16; ++c)
    EXPECT_TRUE(same_value(decode(fp4, c), c < 8 ? fp4_table[c] : -fp4_table[c - 8])) << c;
  const Format& e2m3 = format(FormatId::Float6E2M3FN);
  EXPECT_EQ(decode(e2m3, encode(e2m3, 0.0625f)), 0.0f);
  EXPECT_EQ(decode(e2m3, encode(e2m3, 0.1875f)), 0.25f);
  EXPECT_EQ(decode(e2m3, encode(e2m3, 1.0625f)), 1.0f);
  EXPECT_EQ(encode(e2m3, 7.5f), 0x1Fu);
  const Format& e3m2 = format(FormatId::Float6E3M2FN);
  EXPECT_EQ(decode(e3m2, encode(e3m2, 26.0f)), 24.0f);
  // spec §4.1: PyTorch's float -> float8_e8m0fnu cast
  const Format& e8m0 = format(FormatId::Float8E8M0FNU);
  EXPECT_EQ(encode(e8m0, 1.5f), 128u);
  EXPECT_EQ(encode(e8m0, 3.0f), 129u);
  EXPECT_EQ(encode(e8m0, 0.75f), 127u);
  EXPECT_EQ(encode(e8m0, 1.0f), 127u);
  EXPECT_EQ(encode(e8m0, 0.0f), 0u);
  EXPECT_EQ(encode(e8m0, std::ldexp(1.0f, -127)), 0u);
  EXPECT_EQ(encode(e8m0, INFINITY), 255u);
  EXPECT_EQ(encode(e8m0, NAN), 255u);
  EXPECT_EQ(encode(e8m0, 3e38f), 255u);  // rounds up to 2^128
  EXPECT_EQ(decode(e8m0, 254), std::ldexp(1.0f, 127));
  EXPECT_EQ(decode(e8m0, 0), std::ldexp(1.0f, -127));
  // bfloat16 and float32 rows use the engine's conversion
  const Format& bf16 = format(FormatId::BFloat16);
  EXPECT_EQ(encode(bf16, 1.00390625f), BFloat16::from_float(1.00390625f));
  EXPECT_EQ(decode(bf16, encode(bf16, 3.4e38f)), static_cast<float>(bf16.max_finite));  // saturating
  EXPECT_EQ(decode(bf16, encode(bf16, 3.4e38f, false)), INFINITY);
}

TEST(FormatTable, BulkCodecsAndPackingMatchTheReference) {
  std::mt19937 rng(7);
  std::vector<float> x(100003);
  for (auto& v : x) {
    const uint32_t r = rng();
    std::memcpy(&v, &r, 4);  // every kind of float32, NaN and inf included
    if (rng() % 2)
      v = std::ldexp(static_cast<float>(static_cast<int32_t>(rng() % 4001) - 2000),
                     -static_cast<int>(rng() % 12));  // and the formats' range
  }
  for (size_t i = 0; i < kNumFormats; ++i) {
    const Format& f = formats()[i];
    if (f.bits > 8) continue;
    SCOPED_TRACE(f.name);
    for (bool sat : {true, false}) {
      std::vector<uint8_t> codes(x.size());
      encode_n(f, x.data(), codes.data(), static_cast<int64_t>(x.size()), sat);
      for (size_t k = 0; k < x.size(); ++k) ASSERT_EQ(codes[k], encode(f, x[k], sat)) << k;
      std::vector<float> back(x.size());
      decode_n(f, codes.data(), back.data(), static_cast<int64_t>(codes.size()));
      for (size_t k = 0; k < x.size(); ++k) ASSERT_TRUE(same_value(back[k], decode(f, codes[k]))) << k;
      std::vector<uint8_t> packed(static_cast<size_t>(packed_bytes(f, static_cast<int64_t>(codes.size())))),
          unpacked(codes.size());
      pack(f, codes.data(), packed.data(), static_cast<int64_t>(codes.size()));
      unpack(f, packed.data(), unpacked.data(), static_cast<int64_t>(codes.size()));
      ASSERT_EQ(unpacked, codes);
      if (f.per_byte == 2) {
        EXPECT_EQ(packed.size(), (codes.size() + 1) / 2);
        EXPECT_EQ(packed[0], static_cast<uint8_t>(codes[0] | (codes[1] << 4)));  // element 0 in the low nibble
      }
    }
  }
}
