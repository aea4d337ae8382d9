// Scale rules against the spec's worked examples and torchao's golden vectors: every to_mx case
// of mx.h5 (5 element formats x FLOOR/RCEIL/CEIL/EVEN x 4 inputs) gives the same e8m0 scale bytes
// and, with the format table's codecs, the same element codes.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "golden.h"
#include "lowbit/core/blocks.h"
#include "lowbit/core/scale.h"

using namespace lowbit;
using namespace lowbit::core;

namespace {
const Format& elem(const std::string& name) { return format_by_name(name); }
// largest magnitude of n values, NaN if any is NaN (torch's amax)
float amax_of(const float* x, int64_t n, int64_t stride = 1) {
  float amax = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i * stride])) return NAN;
    amax = std::max(amax, std::fabs(x[i * stride]));
  }
  return amax;
}
}  // namespace

TEST(ScaleRules, SpecExamples) {
  const Format& fp4 = elem("fp4_e2m1");
  const Format& e4m3 = elem("float8_e4m3fn");
  EXPECT_EQ(max_pow2(fp4), 2);
  EXPECT_EQ(max_pow2(e4m3), 8);
  EXPECT_EQ(max_pow2(elem("float8_e5m2")), 15);
  EXPECT_EQ(max_pow2(elem("fp6_e2m3")), 2);
  EXPECT_EQ(max_pow2(elem("fp6_e3m2")), 4);
  // spec §4.2: fp4 amax 6 -> FLOOR/RCEIL 127; amax 7 -> FLOOR 127, RCEIL/CEIL/EVEN 128
  EXPECT_EQ(e8m0_scale(6.0f, fp4, E8M0Rounding::Floor).byte, 127);
  EXPECT_EQ(e8m0_scale(6.0f, fp4, E8M0Rounding::RCeil).byte, 127);
  for (auto m : {E8M0Rounding::RCeil, E8M0Rounding::Ceil, E8M0Rounding::Even})
    EXPECT_EQ(e8m0_scale(7.0f, fp4, m).byte, 128) << to_string(m);
  EXPECT_EQ(e8m0_scale(7.0f, fp4, E8M0Rounding::Floor).byte, 127);
  // e4m3: amax 448 -> FLOOR 127; 500 -> FLOOR 127, RCEIL 128
  EXPECT_EQ(e8m0_scale(448.0f, e4m3, E8M0Rounding::Floor).byte, 127);
  EXPECT_EQ(e8m0_scale(500.0f, e4m3, E8M0Rounding::Floor).byte, 127);
  EXPECT_EQ(e8m0_scale(500.0f, e4m3, E8M0Rounding::RCeil).byte, 128);
  // multipliers: r = 2^(127 - b); non-finite amax -> 255 / NaN; §9 item 6: EVEN overflows at FLT_MAX
  EXPECT_EQ(e8m0_scale(6.0f, fp4, E8M0Rounding::Floor).multiplier, 1.0f);
  EXPECT_EQ(e8m0_scale(24.0f, fp4, E8M0Rounding::Floor).multiplier, 0.25f);
  EXPECT_EQ(e8m0_scale(NAN, fp4, E8M0Rounding::Floor).byte, 255);
  EXPECT_TRUE(std::isnan(e8m0_scale(INFINITY, e4m3, E8M0Rounding::RCeil).multiplier));
  EXPECT_EQ(e8m0_scale(FLT_MAX, e4m3, E8M0Rounding::Even).byte, 255);
  EXPECT_NE(e8m0_scale(FLT_MAX, e4m3, E8M0Rounding::Floor).byte, 255);
  EXPECT_EQ(e8m0_scale(0.0f, e4m3, E8M0Rounding::Floor).byte, 0);  // clamp at -127
  // float8 amax scaling (§3.3): a multiplier computed in float64
  EXPECT_EQ(float8_amax_to_scale(2.0, e4m3), 224.0f);
  EXPECT_EQ(float8_amax_to_scale(0.0, e4m3), static_cast<float>(448.0 / 1e-12));
  EXPECT_EQ(float8_amax_to_scale(INFINITY, e4m3), 0.0f);
  EXPECT_TRUE(std::isnan(float8_amax_to_scale(NAN, e4m3)));
  // power of 2, in fp32 as torchao: rounded down except where log2f rounds up to k (§9 item 3)
  EXPECT_EQ(round_scale_to_power_of_2(224.0f), 128.0f);
  EXPECT_EQ(round_scale_to_power_of_2(256.0f), 256.0f);
  int rounded_up = 0;
  for (int j = 1; j <= 64; ++j) {
    const float s = std::ldexp(1.0f - static_cast<float>(j) * std::ldexp(1.0f, -24), 3);  // 2^3 (1 - j 2^-24)
    const float p = round_scale_to_power_of_2(s);
    EXPECT_TRUE(p == 4.0f || p == 8.0f) << s;
    EXPECT_EQ(p, std::exp2(std::floor(std::log2(s))));
    rounded_up += p == 8.0f;
  }
  std::printf("  values 2^3(1 - j 2^-24), j = 1..64, whose fp32 log2 rounds up to 3: %d (spec §9 item 3: 1)\n",
              rounded_up);
}

// The batch rule to_mx runs (branch-free, vectorized) equals the scalar rule on every exponent,
// mantissas at the rounding edges, subnormals, 0, inf and NaN payloads, for every element format
// and mode; amax_bits_of_run's bits order magnitudes and flag a NaN anywhere in the run.
TEST(ScaleRules, BatchE8M0ScalesEqualTheScalarRule) {
  std::vector<uint32_t> bits;
  for (uint32_t e = 0; e <= 255; ++e)
    for (uint32_t m : {0u, 1u, 0x3FFFFFu, 0x400000u, 0x400001u, 0x7FFFFFu, 0x0FFFFFu, 0x100000u, 0x7BFFFFu, 0x7C0000u})
      bits.push_back(e << 23 | m);
  for (uint32_t u = 0; u < 200000; ++u) bits.push_back(u * 10733u & 0x7FFFFFFFu);  // spread over all patterns
  const int64_t n = static_cast<int64_t>(bits.size());
  std::vector<uint8_t> bytes(bits.size());
  std::vector<float> mult(bits.size());
  int64_t checked = 0;
  for (const char* name : {"float8_e4m3fn", "float8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1"})
    for (auto mode : {E8M0Rounding::Floor, E8M0Rounding::Ceil, E8M0Rounding::Even, E8M0Rounding::RCeil}) {
      e8m0_scales(bits.data(), n, elem(name), mode, bytes.data(), mult.data());
      for (int64_t i = 0; i < n; ++i) {
        const E8M0Scale want = e8m0_scale(std::bit_cast<float>(bits[i]), elem(name), mode);
        ASSERT_EQ(bytes[i], want.byte) << name << " " << to_string(mode) << " amax bits 0x" << std::hex << bits[i];
        ASSERT_EQ(std::bit_cast<uint32_t>(mult[i]) == std::bit_cast<uint32_t>(want.multiplier) ||
                      (std::isnan(mult[i]) && std::isnan(want.multiplier)),
                  true)
            << name << " " << to_string(mode) << " amax bits 0x" << std::hex << bits[i];
        ++checked;
      }
    }
  EXPECT_EQ(checked, 20 * n);
  const float run[5] = {1.0f, -7.5f, 3.0f, -0.0f, 2.0f};
  EXPECT_EQ(std::bit_cast<float>(amax_bits_of_run(run, 5)), 7.5f);
  float with_nan[5] = {1.0f, -INFINITY, 3.0f, -NAN, 2.0f};
  EXPECT_TRUE(std::isnan(std::bit_cast<float>(amax_bits_of_run(with_nan, 5))));
  with_nan[3] = 0.0f;
  EXPECT_EQ(std::bit_cast<float>(amax_bits_of_run(with_nan, 5)), INFINITY);
}

// TransformerEngine's current-scaling rule (Float8BlockScaling): float32 division, special amax
// values give 1, an overflowing quotient FLT_MAX, pow2 clears the mantissa exactly (no log2f edge).
TEST(ScaleRules, TransformerEngineAmaxToScale) {
  const Format& e4m3 = elem("float8_e4m3fn");
  const Format& e5m2 = elem("float8_e5m2");
  EXPECT_EQ(te_amax_to_scale(2.0f, e4m3, false), 224.0f);
  EXPECT_EQ(te_amax_to_scale(2.0f, e4m3, true), 128.0f);
  EXPECT_EQ(te_amax_to_scale(3.0f, e5m2, false), 57344.0f / 3.0f);  // one float32 division
  EXPECT_EQ(te_amax_to_scale(448.0f, e4m3, true), 1.0f);
  EXPECT_EQ(te_amax_to_scale(449.0f, e4m3, true), 0.5f);
  for (float special : {0.0f, INFINITY, -INFINITY, NAN}) {
    EXPECT_EQ(te_amax_to_scale(special, e4m3, false), 1.0f) << special;
    EXPECT_EQ(te_amax_to_scale(special, e4m3, true), 1.0f) << special;
  }
  EXPECT_EQ(te_amax_to_scale(1e-45f, e4m3, false), FLT_MAX);  // 448 / 2^-149 overflows
  EXPECT_EQ(te_amax_to_scale(1e-45f, e4m3, true), std::ldexp(1.0f, 127));
  EXPECT_EQ(te_amax_to_scale(0.0f, e4m3, false, 1.0f), 448.0f);  // the epsilon floor comes first
  // just below 2^k the mantissa is cleared: 2^(k-1), never the log2f round-up of §9 item 3
  for (int j = 1; j <= 64; ++j) {
    const float amax = 448.0f / std::ldexp(1.0f - static_cast<float>(j) * std::ldexp(1.0f, -24), 3);
    const float s = te_amax_to_scale(amax, e4m3, true), q = 448.0f / amax;
    EXPECT_EQ(s, std::ldexp(1.0f, std::ilogb(q))) << amax;
    EXPECT_LE(s, q);
  }
}

TEST(ScaleRules, EveryToMxCaseOfMxH5) {
  namespace t = lowbit::testing;
  LOWBIT_GOLDEN_FILE(path, "mx.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  int cases = 0;
  int64_t blocks = 0, codes_checked = 0;
  for (const auto& name : t::golden_cases(f)) {
    if (name.rfind("to_mx/", 0) != 0) continue;
    SCOPED_TRACE(name);
    hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
    const Format& e = elem(t::attr_string(g, "elem_format"));
    const std::string mode_s = t::attr_string(g, "scaling_mode");
    const E8M0Rounding mode = mode_s.find("RCEIL") != std::string::npos  ? E8M0Rounding::RCeil
                              : mode_s.find("CEIL") != std::string::npos ? E8M0Rounding::Ceil
                              : mode_s.find("EVEN") != std::string::npos ? E8M0Rounding::Even
                                                                         : E8M0Rounding::Floor;
    const int64_t bs = t::attr_ints(g, "block_size")[0];
    const Tensor x = t::dataset(g, "input", kFloat32);
    const Tensor sb = t::dataset(g, "scale_e8m0_bits", kUInt8);
    const Tensor qb = t::dataset(g, "qdata_bits", kUInt8);
    const int64_t K = x.size(-1), rows = x.numel() / K;
    ASSERT_EQ(sb.numel(), rows * (K / bs));
    const float* xp = x.data_ptr<float>();
    std::vector<uint8_t> q(static_cast<size_t>(x.numel()));
    unpack(e, qb.data_ptr<uint8_t>(), q.data(), x.numel());
    for (int64_t b = 0; b < rows * (K / bs); ++b) {
      const float* blk = xp + b * bs;
      const float amax = amax_of(blk, bs);
      const E8M0Scale s = e8m0_scale(amax, e, mode);
      ASSERT_EQ(s.byte, sb.data_ptr<uint8_t>()[b]) << "block " << b << " amax " << amax;
      ++blocks;
      if (s.byte == 255) continue;  // NaN blocks: the codes are unspecified for fp6/fp4
      // element codes: x * r, then the cast: fp8 clamped (FLOOR/CEIL/EVEN) or not (RCEIL)
      // as torchao does, fp6/fp4 always saturating
      const bool saturate = mode != E8M0Rounding::RCeil || e.bits < 8;
      for (int64_t i = 0; i < bs; ++i) {
        const uint32_t c = encode(e, blk[i] * s.multiplier, saturate);
        const uint8_t want = q[static_cast<size_t>(b * bs + i)];
        const bool both_nan = std::isnan(decode(e, c)) && std::isnan(decode(e, want));
        ASSERT_TRUE(c == want || both_nan)
            << "block " << b << " element " << i << ": x " << blk[i] << " -> " << c << ", torchao " << int(want);
        ++codes_checked;
      }
    }
    H5Gclose(g);
    ++cases;
  }
  H5Fclose(f);
  EXPECT_EQ(cases, 80);  // 5 element formats x 4 modes x 4 inputs
  std::printf("  mx.h5: %d to_mx cases, %lld scale bytes and %lld element codes bit-exact\n", cases,
              static_cast<long long>(blocks), static_cast<long long>(codes_checked));
}

TEST(ScaleRules, EveryFloat8CastCaseOfFloat8H5) {
  // hp_tensor_to_float8_dynamic: amax per tensor / row / column, scale = float8_amax_to_scale
  // (optionally a power of 2), codes = saturating RNE cast of fp32(x) * scale
  namespace t = lowbit::testing;
  LOWBIT_GOLDEN_FILE(path, "float8.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  int cases = 0;
  int64_t codes = 0;
  for (const auto& name : t::golden_cases(f)) {
    if (name.rfind("cast/", 0) != 0) continue;
    SCOPED_TRACE(name);
    hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
    const Format& fp8 = elem(name.find("/e5m2/") != std::string::npos ? "float8_e5m2" : "float8_e4m3fn");
    const bool pow2 = name.find("/pow2_True/") != std::string::npos;
    const int axis = name.find("axiswise_dim_neg1") != std::string::npos ? 1
                     : name.find("axiswise_dim_0") != std::string::npos  ? 0
                                                                         : -1;
    const Tensor x = t::dataset(g, "input", kFloat32);  // bf16 inputs: their exact float32 values
    const Tensor gs = t::dataset(g, "scale", kFloat32);
    const Tensor gd = t::dataset(g, "data_bits", kUInt8);
    ASSERT_EQ(x.dim(), 2);
    const int64_t M = x.size(0), K = x.size(1);
    const float* xp = x.data_ptr<float>();
    auto scale_of = [&](int64_t r, int64_t c) -> float {  // the scale element covering x[r, c]
      const float amax = axis == 1 ? amax_of(xp + r * K, K) : axis == 0 ? amax_of(xp + c, M, K) : amax_of(xp, M * K);
      const float s = float8_amax_to_scale(static_cast<double>(amax), fp8);
      return pow2 ? round_scale_to_power_of_2(s) : s;
    };
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < K; ++c) {
        const float s = scale_of(r, c);
        const int64_t si = axis == 1 ? r : axis == 0 ? c : 0;
        const float want_s = gs.data_ptr<float>()[si];
        if ((r == 0 || c == 0) && !(std::isnan(s) && std::isnan(want_s)))  // NaN payloads differ (torch: 0xFFFFFFFF)
          ASSERT_EQ(std::bit_cast<uint32_t>(s), std::bit_cast<uint32_t>(want_s)) << "scale " << si;
        const uint32_t code = encode(fp8, xp[r * K + c] * s, /*saturate=*/true);
        const uint8_t want = gd.data_ptr<uint8_t>()[r * K + c];
        ASSERT_TRUE(code == want || (std::isnan(decode(fp8, code)) && std::isnan(decode(fp8, want))))
            << "[" << r << ", " << c << "] x " << xp[r * K + c] << " scale " << s << ": " << code << " vs torchao "
            << int(want);
        ++codes;
      }
    H5Gclose(g);
    ++cases;
  }
  H5Fclose(f);
  EXPECT_GT(cases, 0);
  std::printf("  float8.h5: %d cast cases, %lld fp8 codes and their scales bit-exact\n", cases,
              static_cast<long long>(codes));
}

TEST(ScaleRules, EveryNvfp4QuantizeCaseOfNvfp4H5) {
  // NVFP4Tensor.to_nvfp4: 16-blocks, e4m3 block scales (2^-6 floor, 448 cap), optional per-tensor
  // scale, elements x * multiplier clamped to +-6 and cast to fp4 (RNE)
  namespace t = lowbit::testing;
  LOWBIT_GOLDEN_FILE(path, "nvfp4.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  const Format& fp4 = format(FormatId::Float4E2M1FN);
  int cases = 0;
  int64_t blocks = 0, codes = 0;
  for (const auto& name : t::golden_cases(f)) {
    if (name.rfind("quantize/", 0) != 0) continue;
    SCOPED_TRACE(name);
    hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
    const Tensor x = t::dataset(g, "input", kFloat32);
    const Tensor sb = t::dataset(g, "scale_e4m3_bits", kUInt8);
    const Tensor hp = t::dataset(g, "hp_scales", kFloat32);
    const Tensor qp = t::dataset(g, "qdata_packed", kUInt8);
    float pts = 0.0f;
    if (H5Lexists(g, "per_tensor_scale", H5P_DEFAULT) > 0) {
      pts = t::dataset(g, "per_tensor_scale", kFloat32).data_ptr<float>()[0];
      if (name.find("pts_from_amax") != std::string::npos) {
        const float ours = nvfp4_per_tensor_scale(amax_of(x.data_ptr<float>(), x.numel()));
        EXPECT_TRUE(ours == pts || (std::isnan(ours) && std::isnan(pts))) << ours << " vs " << pts;
      }
    }
    std::vector<uint8_t> q(static_cast<size_t>(x.numel()));
    unpack(fp4, qp.data_ptr<uint8_t>(), q.data(), x.numel());
    const float* xp = x.data_ptr<float>();
    for (int64_t b = 0; b < x.numel() / 16; ++b) {
      const float amax = amax_of(xp + b * 16, 16);
      const NVFP4BlockScale s = nvfp4_block_scale(amax, pts);
      ASSERT_EQ(s.e4m3_byte, sb.data_ptr<uint8_t>()[b]) << "block " << b << " amax " << amax;
      const float want_hp = hp.data_ptr<float>()[b];
      ASSERT_TRUE(s.dequant_scale == want_hp || (std::isnan(s.dequant_scale) && std::isnan(want_hp))) << "block " << b;
      ++blocks;
      if (std::isnan(s.multiplier) || std::isnan(s.dequant_scale)) continue;  // NaN results: the codes are unspecified
      for (int64_t i = 0; i < 16; ++i) {
        float v = xp[b * 16 + i] * s.multiplier;
        if (!std::isnan(v)) v = std::min(std::max(v, -6.0f), 6.0f);
        const uint32_t c = encode(fp4, v);
        ASSERT_EQ(c, q[static_cast<size_t>(b * 16 + i)])
            << "block " << b << " element " << i << " x " << xp[b * 16 + i];
        ++codes;
      }
    }
    H5Gclose(g);
    ++cases;
  }
  H5Fclose(f);
  EXPECT_EQ(cases, 18);
  std::printf("  nvfp4.h5: %d quantize cases, %lld e4m3 block scales and %lld fp4 codes bit-exact\n", cases,
              static_cast<long long>(blocks), static_cast<long long>(codes));
}

// The batch form equals the scalar rule on every block amax bit pattern's neighbourhood: all
// exponents (subnormal to inf), NaN, zero, and single- and two-level scaling (per-tensor scales
// from tiny to huge, NaN and inf).
TEST(NVFP4, BlockScalesBatchEqualsTheScalarRule) {
  std::vector<float> amax;
  for (int e = -149; e <= 128; ++e)
    for (const float m : {1.0f, 1.1f, 1.5f, 1.75f, 1.999f})
      amax.push_back(e == 128 ? std::numeric_limits<float>::infinity() : std::ldexp(m, e));
  amax.push_back(0.0f);
  amax.push_back(std::numeric_limits<float>::quiet_NaN());
  amax.push_back(std::numeric_limits<float>::max());
  int64_t checked = 0;
  for (const float pts : {0.0f, 1.0f, 3.0e-5f, 0.37f, 2.5e4f, 1.0e-30f, std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity()}) {
    std::vector<uint8_t> bytes(amax.size());
    std::vector<float> mult(amax.size());
    nvfp4_block_scales(amax.data(), static_cast<int64_t>(amax.size()), pts, bytes.data(), mult.data());
    for (size_t i = 0; i < amax.size(); ++i) {
      const NVFP4BlockScale s = nvfp4_block_scale(amax[i], pts);
      ASSERT_EQ(bytes[i], s.e4m3_byte) << "amax " << amax[i] << " pts " << pts;
      ASSERT_TRUE(std::memcmp(&mult[i], &s.multiplier, 4) == 0 || (std::isnan(mult[i]) && std::isnan(s.multiplier)))
          << "amax " << amax[i] << " pts " << pts << ": " << mult[i] << " vs " << s.multiplier;
      ++checked;
    }
  }
  EXPECT_GT(checked, 10000);
}
