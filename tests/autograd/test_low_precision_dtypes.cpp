// The engine's low-precision storage dtypes (float8_e4m3fn, float8_e5m2, the fnuz variants,
// float8_e8m0fnu, float4_e2m1fn_x2): every code round-trips through to(), every float32 boundary
// between adjacent codes rounds to nearest with ties to even, saturation, the vectorized codec
// against the scalar reference, packing, printing, views, errors, checkpoints.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <vector>

#include <lowbit/lowbit.h>

using namespace lowbit;

namespace {
const DType kFloat8Types[] = {kFloat8_e4m3fn, kFloat8_e5m2, kFloat8_e4m3fnuz, kFloat8_e5m2fnuz};

Tensor codes_tensor(const std::vector<uint8_t>& codes, DType d) {
  Tensor t = empty({static_cast<int64_t>(codes.size())}, d);
  std::memcpy(t.raw_data(), codes.data(), codes.size());
  return t;
}
std::vector<uint8_t> codes_of(const Tensor& t) {
  const auto* p = static_cast<const uint8_t*>(t.raw_data());
  return {p, p + t.numel()};
}
std::vector<uint8_t> all_codes() {
  std::vector<uint8_t> c(256);
  for (int i = 0; i < 256; ++i) c[i] = static_cast<uint8_t>(i);
  return c;
}
bool same_value(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || (a == b && std::signbit(a) == std::signbit(b));
}
// The value of a code by the format's definition, independently of the codec.
double reference_value(const MinifloatSpec& s, uint32_t code) {
  const int E = s.exp_bits, M = s.mant_bits;
  const bool neg = (code >> (E + M)) & 1;
  const int e = static_cast<int>((code >> M) & ((1u << E) - 1));
  const int m = static_cast<int>(code & ((1u << M) - 1));
  const double v = e == 0 ? std::ldexp(m, 1 - s.bias - M) : std::ldexp((1 << M) + m, e - s.bias - M);
  return neg ? -v : v;
}
bool is_nan_code(const MinifloatSpec& s, uint32_t code) {
  const int E = s.exp_bits, M = s.mant_bits;
  const uint32_t mag = code & ((1u << (E + M)) - 1);
  if (!s.has_negative_zero) return code == s.nan_code;                           // fnuz: 0x80 only
  if (s.has_inf) return (mag >> M) == (1u << E) - 1 && (mag & ((1u << M) - 1));  // e5m2
  return mag == s.nan_code;                                                      // e4m3fn: S.1111.111
}
}  // namespace

TEST(LowPrecisionDTypes, TableNamesAndSizes) {
  for (DType d :
       {kFloat8_e4m3fn, kFloat8_e5m2, kFloat8_e4m3fnuz, kFloat8_e5m2fnuz, kFloat8_e8m0fnu, kFloat4_e2m1fn_x2}) {
    SCOPED_TRACE(dtype_name(d));
    EXPECT_EQ(element_size(d), 1u);
    EXPECT_TRUE(is_low_precision(d));
    EXPECT_FALSE(is_floating(d));
    EXPECT_EQ(dtype_from_name(dtype_name(d)), d);
  }
  EXPECT_FALSE(is_low_precision(kBFloat16));
  try {
    dtype_from_name("float8");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("float8_e4m3fn"), std::string::npos) << e.what();
  }
}

TEST(LowPrecisionDTypes, EveryCodeRoundTrips) {
  for (DType d : kFloat8Types) {
    SCOPED_TRACE(dtype_name(d));
    const MinifloatSpec& s = *minifloat_spec(d);
    const Tensor codes = codes_tensor(all_codes(), d);
    const Tensor values = codes.to(kFloat32);
    const Tensor back = values.to(d);
    const float* v = values.data_ptr<float>();
    for (uint32_t c = 0; c < 256; ++c) {
      SCOPED_TRACE(c);
      if (is_nan_code(s, c)) {
        EXPECT_TRUE(std::isnan(v[c]));
        EXPECT_TRUE(is_nan_code(s, codes_of(back)[c]));
        continue;
      }
      if (s.has_inf && ((c >> s.mant_bits) & ((1u << s.exp_bits) - 1)) == (1u << s.exp_bits) - 1) {
        EXPECT_TRUE(std::isinf(v[c]));  // e5m2's infinities stay infinities
      } else if (!s.has_negative_zero && c == 0x80) {
        continue;  // (the fnuz NaN is handled above)
      } else {
        EXPECT_EQ(static_cast<double>(v[c]), reference_value(s, c));
      }
      EXPECT_EQ(codes_of(back)[c], c);
    }
  }
  // e8m0: 2^(c - 127), 255 = NaN
  const Tensor e = codes_tensor(all_codes(), kFloat8_e8m0fnu);
  const Tensor ev = e.to(kFloat32);
  const Tensor eb = ev.to(kFloat8_e8m0fnu);
  for (uint32_t c = 0; c < 256; ++c) {
    if (c == 255) {
      EXPECT_TRUE(std::isnan(ev.data_ptr<float>()[c]));
    } else {
      EXPECT_EQ(ev.data_ptr<float>()[c], std::ldexp(1.0f, static_cast<int>(c) - 127));
    }
    EXPECT_EQ(codes_of(eb)[c], c);
  }
}

// Between two adjacent positive codes lo < hi: the midpoint rounds to the one with an even
// mantissa, anything below it to lo and above it to hi; and the same mirrored for negatives.
TEST(LowPrecisionDTypes, EveryBoundaryRoundsToNearestEven) {
  for (DType d : kFloat8Types) {
    SCOPED_TRACE(dtype_name(d));
    const MinifloatSpec& s = *minifloat_spec(d);
    std::vector<float> x;
    std::vector<uint8_t> want;
    const uint32_t sign = 1u << (s.exp_bits + s.mant_bits);
    for (uint32_t lo = 0; lo + 1 < sign; ++lo) {
      const uint32_t hi = lo + 1;
      const bool hi_is_inf = s.has_inf && (hi >> s.mant_bits) == (1u << s.exp_bits) - 1;
      if (is_nan_code(s, hi) || hi_is_inf) break;
      const double a = reference_value(s, lo), b = reference_value(s, hi);
      const float mid = static_cast<float>((a + b) / 2);  // exact in float32
      ASSERT_EQ(static_cast<double>(mid), (a + b) / 2);
      const uint32_t even = (lo & 1) ? hi : lo;
      for (float sg : {1.0f, -1.0f}) {
        const uint32_t sbit = sg < 0 ? sign : 0;
        const auto code = [&](uint32_t c) -> uint8_t {
          if (c == 0 && sbit && !s.has_negative_zero) return 0;  // fnuz has no -0
          return static_cast<uint8_t>(c | sbit);
        };
        x.push_back(sg * mid), want.push_back(code(even));
        x.push_back(sg * std::nextafter(mid, 0.0f)), want.push_back(code(lo));
        x.push_back(sg * std::nextafter(mid, INFINITY)), want.push_back(code(hi));
        x.push_back(sg * static_cast<float>(b)), want.push_back(code(hi));
      }
    }
    // beyond the largest finite value: saturation (finite) and NaN
    const float max = static_cast<float>(s.max_finite);
    const uint8_t max_code = minifloat_encode(s, max, true);
    for (float big : {max * 1.0625f, max * 2.0f, 3.0e38f}) {
      x.push_back(big), want.push_back(max_code);
      x.push_back(-big), want.push_back(static_cast<uint8_t>(max_code | sign));
    }
    const Tensor got = from_vector(x).to(d);
    ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
    const std::vector<uint8_t> g = codes_of(got);
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_EQ(static_cast<int>(g[i]), static_cast<int>(want[i])) << "x = " << x[i];
    EXPECT_TRUE(is_nan_code(s, codes_of(from_vector(std::vector<float>{NAN}).to(d))[0]));
  }
}

namespace {
const MinifloatSpec* const kSpecs[] = {&kFloat8E4M3FN, &kFloat8E5M2,   &kFloat8E4M3FNUZ, &kFloat8E5M2FNUZ,
                                       &kFloat6E2M3FN, &kFloat6E3M2FN, &kFloat4E2M1FN};
// codec inputs: random bit patterns (every exponent), values near each format's range, specials
std::vector<float> codec_inputs(std::mt19937& rng, int n_bits) {
  std::vector<float> x;
  for (int i = 0; i < n_bits; ++i) x.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng())));
  std::uniform_real_distribution<float> u(-70000.0f, 70000.0f);
  for (int i = 0; i < 100000; ++i) x.push_back(u(rng) * std::ldexp(1.0f, -static_cast<int>(rng() % 40)));
  for (float v : {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, std::numeric_limits<float>::denorm_min(), FLT_MIN,
                  FLT_MAX, -FLT_MAX})
    x.push_back(v);
  return x;
}
}  // namespace

TEST(LowPrecisionDTypes, VectorizedCodecMatchesScalar) {
  const auto& specs = kSpecs;
  std::mt19937 rng(7);
  const std::vector<float> x = codec_inputs(rng, 200000);
  std::vector<uint8_t> bulk(x.size());
  for (const MinifloatSpec* s : specs) {
    for (bool sat : {true, false}) {
      minifloat_encode_n(*s, x.data(), bulk.data(), static_cast<int64_t>(x.size()), sat);
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_EQ(static_cast<uint32_t>(bulk[i]), minifloat_encode(*s, x[i], sat))
            << "x bits " << std::bit_cast<uint32_t>(x[i]) << " E" << s->exp_bits << "M" << s->mant_bits;
      // the scaled encoder (compiled per MX element format, generic for the others): x * 0.5 with
      // one scale and with per-element scales
      const std::vector<float> half(x.size(), 0.5f);
      for (const float* each : {static_cast<const float*>(nullptr), half.data()}) {
        minifloat_encode_scaled(*s, x.data(), 0.5f, each, bulk.data(), static_cast<int64_t>(x.size()), sat);
        for (size_t i = 0; i < x.size(); ++i)
          ASSERT_EQ(static_cast<uint32_t>(bulk[i]), minifloat_encode(*s, x[i] * 0.5f, sat))
              << "scaled, x bits " << std::bit_cast<uint32_t>(x[i]) << " E" << s->exp_bits << "M" << s->mant_bits;
      }
    }
  }
}

// The fused round-to-bfloat16 path (float8 casts writing bf16 operands) against encode, decode,
// multiply, keep the top half: one scale or one per element, multipliers 1 or powers of two.
TEST(LowPrecisionDTypes, RoundScaledBf16MatchesEncodeDecode) {
  const auto& specs = kSpecs;
  std::mt19937 rng(8);
  const std::vector<float> x = codec_inputs(rng, 100000);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> scales(x.size()), mults(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    scales[i] = std::ldexp(1.0f + static_cast<float>(rng() % 1000) / 1000.0f, static_cast<int>(rng() % 40) - 20);
    mults[i] = std::ldexp(1.0f, static_cast<int>(rng() % 60) - 30);
  }
  std::vector<uint16_t> out(x.size());
  auto want = [](const MinifloatSpec& s, float v, float mult) {
    const float d = minifloat_decode(s, minifloat_encode(s, v, true)) * mult;
    return static_cast<uint16_t>(std::bit_cast<uint32_t>(d) >> 16);
  };
  for (const MinifloatSpec* s : specs) {
    SCOPED_TRACE(fmt::format("E{}M{} bias {}", s->exp_bits, s->mant_bits, s->bias));
    // the ties: every midpoint of two neighbouring values (and its neighbours), both signs
    std::vector<float> ties, values;
    for (uint32_t c = 0; c < (1u << (s->bits() - 1)); ++c) {
      const float v = minifloat_decode(*s, c);
      if (std::isfinite(v)) values.push_back(v);
    }
    std::sort(values.begin(), values.end());
    for (size_t i = 0; i + 1 < values.size(); ++i) {
      const float mid = values[i] + (values[i + 1] - values[i]) / 2.0f;
      for (float t : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY)})
        ties.push_back(t), ties.push_back(-t);
    }
    minifloat_round_scaled_bf16(*s, ties.data(), 1.0f, nullptr, 1.0f, nullptr, out.data(),
                                static_cast<int64_t>(ties.size()));
    for (size_t i = 0; i < ties.size(); ++i) ASSERT_EQ(out[i], want(*s, ties[i], 1.0f)) << "tie " << ties[i];
    for (float scale : {1.0f, 3.7f, 1.0f / 448.0f}) {
      for (float mult : {1.0f, 0.125f, std::ldexp(1.0f, 20)}) {
        minifloat_round_scaled_bf16(*s, x.data(), scale, nullptr, mult, nullptr, out.data(), n);
        for (size_t i = 0; i < x.size(); ++i)
          ASSERT_EQ(out[i], want(*s, x[i] * scale, mult)) << "x bits " << std::bit_cast<uint32_t>(x[i]);
      }
    }
    minifloat_round_scaled_bf16(*s, x.data(), 0.0f, scales.data(), 0.0f, mults.data(), out.data(), n);
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_EQ(out[i], want(*s, x[i] * scales[i], mults[i])) << "x bits " << std::bit_cast<uint32_t>(x[i]);
  }
}

TEST(LowPrecisionDTypes, InfinitiesAndFills) {
  const Tensor inf = from_vector(std::vector<float>{INFINITY, -INFINITY});
  EXPECT_EQ(codes_of(inf.to(kFloat8_e5m2)), (std::vector<uint8_t>{0x7C, 0xFC}));     // kept
  EXPECT_EQ(codes_of(inf.to(kFloat8_e4m3fn)), (std::vector<uint8_t>{0x7E, 0xFE}));   // saturated to +-448
  EXPECT_EQ(codes_of(inf.to(kFloat8_e8m0fnu)), (std::vector<uint8_t>{0xFF, 0xFF}));  // NaN
  EXPECT_EQ(codes_of(full({3}, 1000.0, kFloat8_e4m3fn)), (std::vector<uint8_t>{0x7E, 0x7E, 0x7E}));
  EXPECT_EQ(codes_of(full({2}, 1.0, kFloat8_e8m0fnu)), (std::vector<uint8_t>{127, 127}));
  EXPECT_EQ(codes_of(full({1}, -1.5, kFloat4_e2m1fn_x2)), (std::vector<uint8_t>{0xBB}));
  EXPECT_EQ(full({}, 0.4375, kFloat8_e4m3fn).item<float>(), 0.4375f);
  // conversions between low-precision dtypes and from float64 / bfloat16 pass through float32
  const Tensor a = from_vector(std::vector<double>{0.3, -17.0, 1e6});
  EXPECT_EQ(codes_of(a.to(kFloat8_e5m2).to(kFloat8_e4m3fn)),
            codes_of(a.to(kFloat32).to(kFloat8_e5m2).to(kFloat32).to(kFloat8_e4m3fn)));
  EXPECT_EQ(codes_of(a.to(kBFloat16).to(kFloat8_e4m3fn)), codes_of(a.to(kBFloat16).to(kFloat32).to(kFloat8_e4m3fn)));
}

TEST(LowPrecisionDTypes, Float4PairsAlongTheLastDimension) {
  const Tensor x = from_vector(std::vector<float>{0.5f, -6.0f, 1.0f, 7.0f, 0.0f, -0.25f}, {2, 3, 1}).reshape({3, 2});
  const Tensor p = x.to(kFloat4_e2m1fn_x2);
  EXPECT_EQ(p.shape(), (Shape{3, 1}));
  // element 2i in the low nibble: 0.5 = 0x1, -6 = 0xF; 1 = 0x2, 7 -> 6 = 0x7; 0 = 0x0, -0.25 -> -0 = 0x8
  EXPECT_EQ(codes_of(p), (std::vector<uint8_t>{0xF1, 0x72, 0x80}));
  const Tensor back = p.to(kFloat32);
  EXPECT_EQ(back.shape(), (Shape{3, 2}));
  const std::vector<float> want = {0.5f, -6.0f, 1.0f, 6.0f, 0.0f, -0.0f};
  for (int i = 0; i < 6; ++i) EXPECT_TRUE(same_value(back.data_ptr<float>()[i], want[i])) << i;
  // every pair of nibbles
  std::vector<uint8_t> all = all_codes();
  const Tensor every = codes_tensor(all, kFloat4_e2m1fn_x2);
  EXPECT_EQ(codes_of(every.to(kFloat32).to(kFloat4_e2m1fn_x2)), all);
  EXPECT_THROW(from_vector(std::vector<float>{1, 2, 3}).to(kFloat4_e2m1fn_x2), Error);
  try {
    p.clone().copy_(zeros({3, 1}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("two values per element"), std::string::npos) << e.what();
  }
}

TEST(LowPrecisionDTypes, ViewsCopiesAndPrinting) {
  const Tensor x = from_vector(std::vector<float>{1, -2, 0.5f, 448, -0.125f, 3}, {2, 3}).to(kFloat8_e4m3fn);
  EXPECT_EQ(x.dtype(), kFloat8_e4m3fn);
  EXPECT_EQ(codes_of(x.reshape({3, 2})), codes_of(x));
  EXPECT_EQ(x.select(0, 1).to(kFloat32).data_ptr<float>()[1], -0.125f);
  EXPECT_EQ(x.t().to(kFloat32).data_ptr<float>()[1], 448.0f);  // permute moves codes
  EXPECT_EQ(codes_of(x.clone()), codes_of(x));
  Tensor y = empty({2, 3}, kFloat8_e4m3fn);
  y.copy_(from_vector(std::vector<float>{1, -2, 0.5f, 448, -0.125f, 3}, {2, 3}));
  EXPECT_EQ(codes_of(y), codes_of(x));
  const Tensor idx = from_vector(std::vector<int64_t>{2, 0});
  EXPECT_EQ(index_select(x, 1, idx).to(kFloat32).data_ptr<float>()[0], 0.5f);
  EXPECT_EQ(x.to_string(),
            "tensor([[ 1.0000e+00, -2.0000e+00,  5.0000e-01],\n        [ 4.4800e+02, -1.2500e-01,  3.0000e+00]], "
            "dtype=float8_e4m3fn)");  // max / min > 1000: scientific, as PyTorch prints it
  EXPECT_NE(from_vector(std::vector<float>{1, 2, 3, 4})
                .to(kFloat4_e2m1fn_x2)
                .to_string()
                .find("[1., 2., 3., 4.], dtype=float4_e2m1fn_x2"),
            std::string::npos);
}

TEST(LowPrecisionDTypes, OpsNameTheDType) {
  const Tensor x = ones({4}).to(kFloat8_e5m2);
  for (auto fn : std::vector<std::function<void()>>{
           [&] { (void)add(x, x); }, [&] { (void)sum(x); }, [&] { (void)eq(x, x); },
           [&] { Tensor(x).requires_grad_(); }, [&] { (void)randint(0, 3, {2}, nullptr, kFloat8_e5m2); },
           [&] { (void)arange(3.0, kFloat8_e4m3fn); }, [&] { (void)x.data_ptr<uint8_t>(); }}) {
    try {
      fn();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("float8_e"), std::string::npos) << e.what();
    }
  }
}

TEST(LowPrecisionDTypes, CheckpointsKeepTheDType) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "lowbit_lp_dtypes";
  fs::create_directories(dir);
  // low-precision tensors are module buffers, as a quantized module's codes and scales are
  struct Holder : nn::Module {
    std::string type_name() const override { return "Holder"; }
  };
  auto holder = std::make_shared<Holder>();
  Holder& h = *holder;
  const Tensor codes = from_vector(std::vector<float>{1, -2, 0.5f, 448}).to(kFloat8_e4m3fn);
  const Tensor scales = from_vector(std::vector<float>{0.25f, 8}).to(kFloat8_e8m0fnu);
  const Tensor fp4 = from_vector(std::vector<float>{1, -6, 0.5f, 2}).to(kFloat4_e2m1fn_x2);
  h.register_buffer("codes", codes);
  h.register_buffer("scales", scales);
  h.register_buffer("fp4", fp4);
  const std::string p2 = (dir / "h.h5").string();
  io::export_model(p2, h);
  const nn::NamedTensors back = io::read_model_tensors(p2);
  ASSERT_EQ(back.size(), 3u);
  for (const auto& [name, t] : back) {
    const Tensor& want = name == "codes" ? codes : name == "scales" ? scales : fp4;
    EXPECT_EQ(t.dtype(), want.dtype()) << name;
    EXPECT_EQ(codes_of(t), codes_of(want)) << name;
  }
  for (const auto& ti : io::inspect(p2).tensors)
    EXPECT_TRUE(ti.dtype == "float8_e4m3fn" || ti.dtype == "float8_e8m0fnu" || ti.dtype == "float4_e2m1fn_x2")
        << ti.dtype;
  fs::remove_all(dir);
}
