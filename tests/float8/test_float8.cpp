// Float8 training against torchao's golden vectors (float8.h5, float8_ext.h5; spec §3, §9 items
// 3-5): every cast case bit-exact (codes, scales, dequantized values and their dtypes), the given-
// scale casts, the power-of-2 edge values, Float8Linear in emulate mode against torchao's emulated
// module (outputs and gradients to a summation-order bound), extra_repr, the auto filter; and the
// fast mode's bound against emulate, the config rules, convert_to_float8_training, save / load.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "golden.h"
#include "lowbit/autograd/minifloat.h"
#include "lowbit/core/scale.h"
#include "test_util.h"

using namespace lowbit;
using namespace lowbit::float8;
namespace t = lowbit::testing;

namespace {
bool has_dataset(hid_t g, const std::string& name) { return H5Lexists(g, name.c_str(), H5P_DEFAULT) > 0; }
// NAME as stored: bfloat16 from NAME_bf16_bits when present, else float32
Tensor input_of(hid_t g, const std::string& name) {
  const std::string bits = name + "_bf16_bits";
  if (!has_dataset(g, bits)) return t::dataset(g, name, kFloat32);
  hid_t d = H5Dopen2(g, bits.c_str(), H5P_DEFAULT);
  hid_t s = H5Dget_space(d);
  const int rank = H5Sget_simple_extent_ndims(s);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank) H5Sget_simple_extent_dims(s, dims.data(), nullptr);
  Tensor out = empty(Shape(dims.begin(), dims.end()), kBFloat16);
  if (out.numel()) H5Dread(d, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.raw_data());
  H5Sclose(s);
  H5Dclose(d);
  return out;
}
// the dtype a case path names in its second component ("cast/e5m2/..."; inputs such as
// "ties_e5m2_f32" name other dtypes), or a bare dtype name
DType fp8_of(const std::string& name) {
  const auto a = name.find('/');
  const std::string part = a == std::string::npos ? name : name.substr(a + 1, name.find('/', a + 1) - a - 1);
  return part == "e5m2" ? kFloat8_e5m2 : kFloat8_e4m3fn;
}
const uint8_t* codes(const Tensor& t) { return static_cast<const uint8_t*>(t.raw_data()); }
// codes equal, or both NaN codes
int64_t code_mismatches(const Tensor& ours, const Tensor& golden, DType fp8, std::string* where) {
  const MinifloatSpec& spec = *minifloat_spec(fp8);
  int64_t bad = 0;
  for (int64_t i = 0; i < golden.numel(); ++i) {
    const uint8_t a = codes(ours)[i], b = golden.data_ptr<uint8_t>()[i];
    if (a == b || (std::isnan(minifloat_decode(spec, a)) && std::isnan(minifloat_decode(spec, b)))) continue;
    if (bad++ == 0 && where) *where = fmt::format("index {}: ours {} vs torchao {}", i, a, b);
  }
  return bad;
}
// bits of a bfloat16 tensor against a golden NAME_bf16_bits dataset
int64_t bf16_mismatches(const Tensor& ours, hid_t g, const std::string& name, std::string* where) {
  const Tensor want = input_of(g, name);
  if (ours.dtype() != kBFloat16 || want.dtype() != kBFloat16 || ours.numel() != want.numel()) return -1;
  int64_t bad = 0;
  for (int64_t i = 0; i < ours.numel(); ++i) {
    const float a = static_cast<float>(ours.data_ptr<BFloat16>()[i]),
                b = static_cast<float>(want.data_ptr<BFloat16>()[i]);
    if (std::memcmp(&ours.data_ptr<BFloat16>()[i], &want.data_ptr<BFloat16>()[i], 2) == 0 || (a != a && b != b))
      continue;
    if (bad++ == 0 && where) *where = fmt::format("index {}: ours {} vs torchao {}", i, a, b);
  }
  return bad;
}
}  // namespace

// hp_tensor_to_float8_dynamic for e4m3fn/e5m2 x tensorwise/axiswise(-1)/axiswise(0) x pow2 x the
// six inputs: scales, codes, dequant (with §9 item 4's dtype) and dequant_f32, bit for bit.
TEST(Float8Golden, EveryCastCaseOfFloat8H5) {
  LOWBIT_GOLDEN_FILE(path, "float8.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  int cases = 0;
  for (const auto& name : t::golden_cases(f)) {
    if (name.rfind("cast/", 0) != 0) continue;
    SCOPED_TRACE(name);
    hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
    const DType fp8 = fp8_of(name);
    const bool pow2 = name.find("/pow2_True/") != std::string::npos;
    const bool axis_last = name.find("axiswise_dim_neg1") != std::string::npos;
    const bool axis0 = name.find("axiswise_dim_0") != std::string::npos;
    const Tensor x = input_of(g, "input");
    const Float8Tensor q =
        to_float8_dynamic(x, fp8, axis_last || axis0 ? ScalingGranularity::Axiswise : ScalingGranularity::Tensorwise,
                          axis0 ? 0 : -1, pow2);
    std::string where;
    EXPECT_EQ(q.data.dtype(), fp8);
    EXPECT_EQ(q.data.shape(), x.shape());
    const Tensor gs = t::dataset(g, "scale", kFloat32);
    EXPECT_EQ(q.scale.shape(), gs.shape());
    EXPECT_EQ(t::count_mismatches(q.scale, gs, &where), 0) << "scale " << where;
    EXPECT_EQ(code_mismatches(q.data, t::dataset(g, "data_bits", kUInt8), fp8, &where), 0) << "codes " << where;
    const Tensor dq = q.dequantize();
    if (has_dataset(g, "dequant_bf16_bits")) {
      EXPECT_EQ(bf16_mismatches(dq, g, "dequant", &where), 0) << "dequant (bfloat16) " << where;
    } else {
      ASSERT_EQ(dq.dtype(), kFloat32);  // float32 input, or an axiswise scale promoting bfloat16
      EXPECT_EQ(t::count_mismatches(dq, t::dataset(g, "dequant", kFloat32), &where), 0) << "dequant " << where;
    }
    if (has_dataset(g, "dequant_f32")) {
      NoGradGuard ng;
      const Tensor d32 = div(q.data.to(kFloat32), q.scale);
      EXPECT_EQ(t::count_mismatches(d32, t::dataset(g, "dequant_f32", kFloat32), &where), 0) << "dequant_f32 " << where;
    }
    H5Gclose(g);
    ++cases;
  }
  H5Fclose(f);
  EXPECT_EQ(cases, 72);  // 2 dtypes x 3 granularities x 2 pow2 x 6 inputs
}

// hp_tensor_and_scale_to_float8: saturation region, subnormal and normal ties, inf, NaN.
TEST(Float8Golden, EveryGivenScaleCaseOfFloat8H5) {
  LOWBIT_GOLDEN_FILE(path, "float8.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  int cases = 0;
  for (const auto& name : t::golden_cases(f)) {
    if (name.rfind("static_scale/", 0) != 0) continue;
    SCOPED_TRACE(name);
    hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
    const DType fp8 = fp8_of(name);
    const Float8Tensor q = to_float8_with_scale(input_of(g, "input"), t::dataset(g, "scale", kFloat32), fp8);
    std::string where;
    EXPECT_EQ(code_mismatches(q.data, t::dataset(g, "data_bits", kUInt8), fp8, &where), 0) << where;
    EXPECT_EQ(t::count_mismatches(q.dequantize(), t::dataset(g, "dequant", kFloat32), &where), 0) << where;
    H5Gclose(g);
    ++cases;
  }
  H5Fclose(f);
  EXPECT_EQ(cases, 6);
}

// round_scales_to_power_of_2 near 2^k (§9 item 3): fp32 log2 + floor rounds up to 2^k for the
// values just below it where log2f rounds up; amax_to_scale; the casts whose amax lands there.
TEST(Float8Golden, PowerOfTwoScaleEdges) {
  LOWBIT_GOLDEN_FILE(path, "float8_ext.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  std::string where;
  {
    hid_t g = H5Gopen2(f, "pow2_scale/round_direct", H5P_DEFAULT);
    const Tensor in = t::dataset(g, "scale_in", kFloat32), want = t::dataset(g, "scale_out_batched", kFloat32);
    Tensor ours = empty(in.shape(), kFloat32);
    int64_t up = 0;
    for (int64_t i = 0; i < in.numel(); ++i) {
      ours.data_ptr<float>()[i] = core::round_scale_to_power_of_2(in.data_ptr<float>()[i]);
      up += ours.data_ptr<float>()[i] > in.data_ptr<float>()[i];
    }
    EXPECT_EQ(t::count_mismatches(ours, want, &where), 0) << where;
    EXPECT_EQ(up, 7360);  // the README's count of targets that round up
    H5Gclose(g);
  }
  for (const char* d : {"e4m3fn", "e5m2"}) {
    SCOPED_TRACE(d);
    const DType fp8 = fp8_of(d);
    const core::Format& fmt8 = core::format_by_name(fp8 == kFloat8_e5m2 ? "float8_e5m2" : "float8_e4m3fn");
    hid_t g = H5Gopen2(f, (std::string("pow2_scale/amax_to_scale/") + d).c_str(), H5P_DEFAULT);
    const Tensor amax = t::dataset(g, "amax", kFloat32);
    Tensor plain = empty(amax.shape(), kFloat32), p2 = empty(amax.shape(), kFloat32);
    for (int64_t i = 0; i < amax.numel(); ++i) {
      plain.data_ptr<float>()[i] = core::float8_amax_to_scale(amax.data_ptr<float>()[i], fmt8);
      p2.data_ptr<float>()[i] = core::round_scale_to_power_of_2(plain.data_ptr<float>()[i]);
    }
    EXPECT_EQ(t::count_mismatches(plain, t::dataset(g, "scale_no_rounding", kFloat32), &where), 0) << where;
    EXPECT_EQ(t::count_mismatches(p2, t::dataset(g, "scale_pow2_batched", kFloat32), &where), 0) << where;
    H5Gclose(g);
    g = H5Gopen2(f, (std::string("pow2_scale/cast/") + d).c_str(), H5P_DEFAULT);
    const Tensor x = t::dataset(g, "input", kFloat32);
    const Float8Tensor rw = to_float8_dynamic(x, fp8, ScalingGranularity::Axiswise, -1, true);
    EXPECT_EQ(t::count_mismatches(rw.scale, t::dataset(g, "rowwise_scale", kFloat32), &where), 0) << where;
    EXPECT_EQ(code_mismatches(rw.data, t::dataset(g, "rowwise_data_bits", kUInt8), fp8, &where), 0) << where;
    const Tensor tw_scale = t::dataset(g, "tensorwise_scale", kFloat32),
                 tw_bits = t::dataset(g, "tensorwise_data_bits", kUInt8);
    for (int64_t r = 0; r < x.size(0); ++r) {  // tensorwise on each row alone
      const Float8Tensor tw = to_float8_dynamic(x.select(0, r), fp8, ScalingGranularity::Tensorwise, -1, true);
      ASSERT_EQ(std::bit_cast<uint32_t>(tw.scale.item<float>()), std::bit_cast<uint32_t>(tw_scale.data_ptr<float>()[r]))
          << "row " << r;
      for (int64_t c = 0; c < x.size(1); ++c)
        ASSERT_EQ(codes(tw.data)[c], tw_bits.data_ptr<uint8_t>()[r * x.size(1) + c]) << r << ", " << c;
    }
    H5Gclose(g);
  }
  H5Fclose(f);
}

namespace {
// max |a - b| / bound where bound = tol * (max |b| over the tensor): <= 1 passes
using t::LinearRun;
using t::max_rel_to_max;
LinearRun run_float8_linear(const Tensor& x0, const Tensor& w0, const Tensor& b0, const Tensor& g,
                            const Float8LinearConfig& cfg) {
  return t::run_converted_linear(x0, w0, b0, g, [&](const std::shared_ptr<nn::Linear>& lin) {
    auto m = convert_to_float8_training(lin, cfg);
    EXPECT_EQ(m->type_name(), "Float8Linear");
    return m;
  });
}
}  // namespace

// Float8Linear in emulate mode against torchao's emulated module: float8.h5 (no bias, 2-D) and
// float8_ext.h5 (bias, 3-D input), 3 recipes x float32/bfloat16. The casts are bit-exact (above);
// the gemms may differ from torch.mm in summation order: float32 results within 2^-22 of the
// tensor's largest magnitude (measured: identical), bfloat16 ones within one bfloat16 rounding
// (2^-8 relative). The fast mode (bfloat16 gemm on the codes, scales applied after) within 2^-20.
TEST(Float8Golden, Float8LinearMatchesTorchaoEmulated) {
  int cases = 0;
  double worst[2][2] = {{0, 0}, {0, 0}};  // [bf16][emulate]: largest error / max |torchao|
  for (const char* file : {"float8.h5", "float8_ext.h5"}) {
    LOWBIT_GOLDEN_FILE(path, file);
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    for (const auto& name : t::golden_cases(f)) {
      const bool plain = name.rfind("linear/", 0) == 0, biased = name.rfind("linear_bias_3d/", 0) == 0;
      if (!(plain || biased) || name.find("emulate_cpu_") == std::string::npos) continue;
      SCOPED_TRACE(std::string(file) + " " + name);
      hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
      const std::string recipe = t::attr_string(g, "recipe");
      const Tensor x = input_of(g, "input"), w = input_of(g, "weight"), up = input_of(g, "upstream_grad");
      const Tensor b = biased ? input_of(g, "bias") : Tensor();
      const bool bf = x.dtype() == kBFloat16;
      // emulate: a few float32 ulps of the largest magnitude (measured: bit-exact here); fast: the
      // summation-order bound 2^-20; bfloat16 results: one bfloat16 rounding
      const double tol_emulate = bf ? std::ldexp(1.0, -8) : std::ldexp(1.0, -22);
      const double tol_fast = bf ? std::ldexp(1.0, -8) : std::ldexp(1.0, -20);
      for (bool emulate : {true, false}) {
        SCOPED_TRACE(emulate ? "emulate" : "fast");
        const double tol = emulate ? tol_emulate : tol_fast;
        Float8LinearConfig cfg = Float8LinearConfig::from_recipe_name(recipe);
        cfg.emulate = emulate;
        const LinearRun r = run_float8_linear(x, w, b, up, cfg);
        double& worst_case = worst[bf][emulate];
        for (const auto& [ours, key] : {std::pair{r.output, "output"}, std::pair{r.grad_input, "grad_input"},
                                        std::pair{r.grad_weight, "grad_weight"}})
          worst_case = std::max(worst_case, max_rel_to_max(ours, input_of(g, key)));
        EXPECT_EQ(r.output.dtype(), x.dtype());
        EXPECT_EQ(r.output.shape(), input_of(g, "output").shape());
        EXPECT_LE(max_rel_to_max(r.output, input_of(g, "output")), tol);
        EXPECT_LE(max_rel_to_max(r.grad_input, input_of(g, "grad_input")), tol);
        EXPECT_LE(max_rel_to_max(r.grad_weight, input_of(g, "grad_weight")), tol);
        if (biased) EXPECT_LE(max_rel_to_max(r.grad_bias, input_of(g, "grad_bias")), bf ? tol : 1e-6);
      }
      H5Gclose(g);
      ++cases;
    }
    H5Fclose(f);
  }
  EXPECT_EQ(cases, 12);  // (3 recipes x fp32/bf16) x 2 files
  std::printf(
      "  Float8Linear vs torchao emulated, largest |diff| / max|torchao|: float32 emulate %.3g, fast %.3g; "
      "bfloat16 emulate %.3g, fast %.3g\n",
      worst[0][1], worst[0][0], worst[1][1], worst[1][0]);
}

// extra_repr / repr of each recipe, with and without bias, as torchao prints them (stray quote).
TEST(Float8Golden, ExtraReprOfEveryRecipe) {
  LOWBIT_GOLDEN_FILE(path, "float8_ext.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  int cases = 0;
  for (const auto& name : t::golden_cases(f)) {
    if (name.rfind("extra_repr/", 0) != 0) continue;
    SCOPED_TRACE(name);
    hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
    const std::string recipe = name.substr(11, name.find("/bias_") - 11);
    const bool bias = name.find("bias_True") != std::string::npos;
    auto m = convert_to_float8_training(std::make_shared<nn::Linear>(64, 96, bias),
                                        Float8LinearConfig::from_recipe_name(recipe));
    EXPECT_EQ(m->extra_repr(), t::attr_string(g, "extra_repr"));
    EXPECT_EQ(m->to_string(), t::attr_string(g, "module_repr"));
    H5Gclose(g);
    ++cases;
  }
  H5Fclose(f);
  EXPECT_EQ(cases, 6);
}

// _auto_filter_for_recipe on torchao's grid of shapes and names; rowwise_with_gw_hp is refused.
TEST(Float8Golden, AutoFilterDecisions) {
  LOWBIT_GOLDEN_FILE(path, "float8_ext.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  int cases = 0;
  for (const auto& name : t::golden_cases(f)) {
    if (name.rfind("auto_filter/", 0) != 0) continue;
    SCOPED_TRACE(name);
    hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
    const std::string recipe = name.substr(12);
    ++cases;
    if (t::attr_string(g, "status") == "raised") {
      t::expect_error(
          [&] {
            auto_filter_for_recipe(recipe, {"output", "router"});
          },
          {"auto_filter_for_recipe", "unsupported recipe", recipe});
      H5Gclose(g);
      continue;
    }
    const ModuleFilter filt = auto_filter_for_recipe(recipe, {"output", "router"});
    const auto fqns = nlohmann::json::parse(t::attr_string(g, "fqns"));
    const Tensor N = t::dataset(g, "N", kInt32), K = t::dataset(g, "K", kInt32),
                 want = t::dataset(g, "convert", kUInt8);
    ASSERT_EQ(static_cast<int64_t>(fqns.size()), want.numel());
    for (int64_t i = 0; i < want.numel(); ++i) {
      const nn::Linear lin(empty({N.data_ptr<int32_t>()[i], K.data_ptr<int32_t>()[i]}), Tensor());
      EXPECT_EQ(filt(lin, fqns[static_cast<size_t>(i)].get<std::string>()), want.data_ptr<uint8_t>()[i] != 0)
          << fqns[static_cast<size_t>(i)] << " N=" << N.data_ptr<int32_t>()[i] << " K=" << K.data_ptr<int32_t>()[i];
    }
    H5Gclose(g);
  }
  H5Fclose(f);
  EXPECT_EQ(cases, 3);
}

// The fast mode against emulate on larger random operands for every recipe, float32 and
// bfloat16, with bias: both compute sum_k (q_a/s_a)(q_b/s_b); fast forms sum_k q_a q_b exactly
// per product in float32 and scales once, emulate rounds each dequantized operand first. Bound:
// 2^-18 of the largest magnitude (float32), one bfloat16 rounding (bfloat16).
TEST(Float8, FastModeWithinItsBoundOfEmulate) {
  Generator g(40);
  const int64_t B = 3, T = 43, K = 256, N = 80;
  for (const auto& r : float8_recipes())
    for (DType dt : {kFloat32, kBFloat16}) {
      SCOPED_TRACE(fmt::format("{} {}", r.name, dtype_name(dt)));
      const Tensor x = mul(randn({B, T, K}, &g), 3.0).to(dt), w = mul(randn({N, K}, &g), 0.05).to(dt);
      const Tensor b = randn({N}, &g).to(dt), up = randn({B, T, N}, &g).to(dt);
      Float8LinearConfig ce = r.config(), cf = r.config();
      ce.emulate = true;
      const LinearRun e = run_float8_linear(x, w, b, up, ce), f = run_float8_linear(x, w, b, up, cf);
      const double tol = dt == kBFloat16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -18);
      EXPECT_LE(max_rel_to_max(f.output, e.output), tol);
      EXPECT_LE(max_rel_to_max(f.grad_input, e.grad_input), tol);
      EXPECT_LE(max_rel_to_max(f.grad_weight, e.grad_weight), tol);
      EXPECT_EQ(t::count_mismatches(f.grad_bias.to(kFloat32), e.grad_bias.to(kFloat32)), 0);  // plain autograd sum
      // and both close to the float32 linear (float8 rounding: e4m3 has 3 mantissa bits)
      Tensor xr = x.to(kFloat32).requires_grad_();
      const Tensor ref = linear(xr, w.to(kFloat32), b.to(kFloat32));
      EXPECT_LE(max_rel_to_max(e.output, ref), 0.1);
    }
}

// Every float8 value is a normal bfloat16, so the fast mode's bfloat16 gemm (whose dot products
// flush bfloat16 denormals) sees none: the smallest subnormal codes of both formats multiply
// exactly (2^-9 · 2^-9 = 2^-18 for e4m3fn; 2^-16 · 2^-16 = 2^-32 for e5m2).
TEST(Float8, SubnormalCodesAreExactInTheBf16Gemm) {
  for (DType fp8 : {kFloat8_e4m3fn, kFloat8_e5m2}) {
    const MinifloatSpec& spec = *minifloat_spec(fp8);
    const float tiny = minifloat_decode(spec, 1);  // the smallest subnormal
    EXPECT_EQ(tiny, fp8 == kFloat8_e4m3fn ? std::ldexp(1.0f, -9) : std::ldexp(1.0f, -16));
    const Tensor a = full({4, 64}, tiny).to(kBFloat16), b = full({8, 64}, tiny).to(kBFloat16);
    EXPECT_EQ(static_cast<float>(a.to(kBFloat16).data_ptr<BFloat16>()[0]), tiny);  // a normal bfloat16
    const Tensor c = gemm_bf16(a, false, b, true);
    for (int64_t i = 0; i < c.numel(); ++i) ASSERT_EQ(c.data_ptr<float>()[i], 64.0f * tiny * tiny);
  }
}

namespace {
// The blockwise cast composed of engine ops: zero-pad to whole blocks (zeros change no amax),
// view as (R/br, br, C/bc, bc), amax per block, the scale rule per block (core::te_amax_to_scale,
// pow2), clamp(x * s, +-448), cast to e4m3 and back, divide by s, cut the padding off.
Tensor blockwise_dequant_composed(const Tensor& x, int64_t br, int64_t bc) {
  NoGradGuard ng;
  const int64_t R = x.size(0), C = x.size(1), Rp = (R + br - 1) / br * br, Cp = (C + bc - 1) / bc * bc;
  Tensor xp = x;
  if (Cp > C) xp = cat({xp, zeros({R, Cp - C})}, 1);
  if (Rp > R) xp = cat({xp, zeros({Rp - R, Cp})}, 0);
  const Tensor blocks = reshape(xp, {Rp / br, br, Cp / bc, bc});
  Tensor s = amax(abs(blocks), {1, 3}, true);  // (R/br, 1, C/bc, 1)
  const core::Format& e4m3 = core::format(core::FormatId::Float8E4M3FN);
  for (int64_t i = 0; i < s.numel(); ++i)
    s.data_ptr<float>()[i] = core::te_amax_to_scale(s.data_ptr<float>()[i], e4m3, true);
  const Tensor q = clamp(mul(blocks, s), -448.0, 448.0).to(kFloat8_e4m3fn).to(kFloat32);
  return narrow(narrow(reshape(div(q, s), {Rp, Cp}), 0, 0, R), 1, 0, C);
}
// ... with blocks running down the columns (br x 1): the composition of the transpose
Tensor column_blockwise_dequant_composed(const Tensor& x, int64_t b) {
  return transpose(blockwise_dequant_composed(transpose(x, 0, 1), 1, b), 0, 1);
}
// x whose magnitudes vary by powers of two across rows and columns, so that every blocking gives
// other scales (and other codes)
Tensor varied(const Shape& shape, Generator& g) {
  Tensor x = randn(shape, &g);
  const int64_t C = shape.back(), R = x.numel() / C;
  float* p = x.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c)
      p[r * C + c] = std::ldexp(p[r * C + c], static_cast<int>((r * 7 + c * 3) / 37 % 21) - 10);
  return x;
}
// Elements of c = a · b (float32 products summed in some order) outside the worst-case bound of
// recursive float32 summation against the float64-accurate ref: |c - ref| <= k 2^-24 (|a| · |b|).
int64_t outside_sum_bound(const Tensor& c, const Tensor& ref, const Tensor& a, const Tensor& b) {
  NoGradGuard ng;
  const Tensor mag = matmul(abs(a), abs(b));
  const double k = static_cast<double>(a.size(1)) * std::ldexp(1.0, -24);
  int64_t bad = 0;
  const Tensor cf = c.to(kFloat32).reshape({-1}), rf = ref.reshape({-1}), mf = mag.reshape({-1});
  for (int64_t i = 0; i < cf.numel(); ++i)
    bad += std::fabs(static_cast<double>(cf.data_ptr<float>()[i]) - rf.data_ptr<float>()[i]) >
           2.0 * k * mf.data_ptr<float>()[i] + 1e-38;
  return bad;
}
}  // namespace

// to_float8_blockwise against the composition: 1 x B runs and B x B tiles, ragged blocks,
// codes and dequantized values; bfloat16 input promotes to float32 (a block scale is not 0-dim).
TEST(Float8, BlockwiseCastMatchesItsComposition) {
  Generator g(61);
  for (auto [R, C, br, bc] : {std::array<int64_t, 4>{4, 256, 1, 128},
                              {5, 200, 1, 128},
                              {3, 77, 1, 16},
                              {256, 384, 128, 128},
                              {150, 200, 128, 128},
                              {33, 17, 8, 8}}) {
    SCOPED_TRACE(fmt::format("{}x{} blocks {}x{}", R, C, br, bc));
    const Tensor x = varied({R, C}, g);
    const Float8Tensor t = to_float8_blockwise(x, kFloat8_e4m3fn, br, bc);
    EXPECT_EQ(t.scale.shape(), (Shape{(R + br - 1) / br, (C + bc - 1) / bc}));
    const Tensor ref = blockwise_dequant_composed(x, br, bc);
    EXPECT_EQ(t::count_mismatches(t.dequantize(), ref), 0);
    const Float8Tensor tb = to_float8_blockwise(x.to(kBFloat16), kFloat8_e4m3fn, br, bc);
    EXPECT_EQ(tb.dequantize().dtype(), kFloat32);
    EXPECT_EQ(t::count_mismatches(tb.dequantize(), blockwise_dequant_composed(x.to(kBFloat16).to(kFloat32), br, bc)),
              0);
  }
  // 3-D input: rows = the leading dims' product
  const Tensor x3 = varied({2, 3, 130}, g);
  const Float8Tensor t3 = to_float8_blockwise(x3, kFloat8_e4m3fn);
  EXPECT_EQ(t3.data.shape(), x3.shape());
  EXPECT_EQ(t::count_mismatches(t3.dequantize(),
                                blockwise_dequant_composed(x3.reshape({6, 130}), 1, 128).reshape({2, 3, 130})),
            0);
  // special blocks: all zero (scale 1, codes 0), an inf (scale 1, saturates), a NaN (scale 1, NaN code)
  Tensor sp = ones({3, 16});
  sp.data_ptr<float>()[0] = 0.0f;
  for (int j = 0; j < 16; ++j) sp.data_ptr<float>()[j] = 0.0f;
  sp.data_ptr<float>()[16] = INFINITY;
  sp.data_ptr<float>()[33] = NAN;
  const Float8Tensor ts = to_float8_blockwise(sp, kFloat8_e4m3fn, 1, 16);
  for (int r = 0; r < 3; ++r) EXPECT_EQ(ts.scale.data_ptr<float>()[r], 1.0f);
  const Tensor d = ts.dequantize();
  EXPECT_EQ(d.data_ptr<float>()[0], 0.0f);
  EXPECT_EQ(d.data_ptr<float>()[16], 448.0f);
  EXPECT_EQ(d.data_ptr<float>()[17], 1.0f);
  EXPECT_TRUE(std::isnan(d.data_ptr<float>()[33]));
  EXPECT_EQ(d.data_ptr<float>()[34], 1.0f);
  t::expect_error([&] { to_float8_blockwise(x3, kFloat8_e4m3fn, 2, 128); }, {"to_float8_blockwise", "2 x 128"});
  t::expect_error([&] { to_float8_blockwise(x3, kFloat8_e4m3fn, 1, 0); }, {"to_float8_blockwise", "1 x 0"});
  t::expect_error([&] { to_float8_blockwise(x3.to(kFloat64), kFloat8_e4m3fn); }, {"to_float8_blockwise", "float64"});
}

// The blockwise recipe's three gemms against their composition (spec: TransformerEngine's
// Float8BlockScaling): output = deq(X; 1x128 runs of rows) · deq(W; 128x128)ᵀ, grad_input =
// deq(G; 1x128 of rows) · deq(W; 128x128), grad_weight = deq(G; 128x1 of columns)ᵀ ·
// deq(X; 128x1 of columns). Emulate: the same float32 values through the same gemm (a few
// ulps); fast: exact products, float32 sums in another order (2^-18 of the largest magnitude).
// Ragged shapes, 3-D input, bias.
TEST(Float8, BlockwiseRecipeMatchesItsComposition) {
  Generator g(62);
  for (auto [B, T, K, N] : {std::array<int64_t, 4>{2, 150, 256, 136}, {1, 64, 200, 260}}) {
    const Tensor x = varied({B, T, K}, g), w = mul(varied({N, K}, g), 0.05), b = randn({N}, &g);
    const Tensor up = varied({B, T, N}, g);
    const Tensor x2 = x.reshape({B * T, K}), g2 = up.reshape({B * T, N});
    // the dequantized operands; the grad_weight ones blocked down the columns (and, to show the
    // data tells the blockings apart, along the rows)
    Tensor xq, wq, gq, xq_col, gq_col, xq_row_wrong;
    {
      NoGradGuard ng;
      xq = blockwise_dequant_composed(x2, 1, 128);
      wq = blockwise_dequant_composed(w, 128, 128);
      gq = blockwise_dequant_composed(g2, 1, 128);
      xq_col = column_blockwise_dequant_composed(x2, 128);
      gq_col = column_blockwise_dequant_composed(g2, 128);
    }
    EXPECT_GT(t::count_mismatches(xq_col, xq), 0);
    EXPECT_GT(t::count_mismatches(gq_col, gq), 0);
    struct Gemm {
      Tensor a, b;
    };
    const Gemm fwd{xq, transpose(wq, 0, 1)}, dgrad{gq, wq}, wgrad{transpose(gq_col, 0, 1), xq_col};
    Tensor y_ref, dx_ref, dw_ref;
    {
      NoGradGuard ng;  // float64 sums of the exact float32 products
      auto mm64 = [](const Gemm& gm) { return matmul(gm.a.to(kFloat64), gm.b.to(kFloat64)).to(kFloat32); };
      y_ref = mm64(fwd);
      dx_ref = mm64(dgrad);
      dw_ref = mm64(wgrad);
    }
    for (bool emulate : {true, false}) {
      SCOPED_TRACE(fmt::format("B={} T={} K={} N={} emulate={}", B, T, K, N, emulate));
      Float8LinearConfig c = Float8LinearConfig::from_recipe_name("blockwise");
      c.emulate = emulate;
      const LinearRun r = run_float8_linear(x, w, Tensor(), up, c);
      EXPECT_EQ(outside_sum_bound(r.output.reshape({B * T, N}), y_ref, fwd.a, fwd.b), 0);
      EXPECT_EQ(outside_sum_bound(r.grad_input.reshape({B * T, K}), dx_ref, dgrad.a, dgrad.b), 0);
      EXPECT_EQ(outside_sum_bound(r.grad_weight, dw_ref, wgrad.a, wgrad.b), 0);
      // a grad_weight blocked along the rows is told apart
      NoGradGuard ng;
      EXPECT_GT(outside_sum_bound(matmul(transpose(gq, 0, 1), xq), dw_ref, wgrad.a, wgrad.b), 0);
    }
    // with a bias and a bfloat16 input: the bias outside the gemm, one bfloat16 rounding
    const LinearRun rb = run_float8_linear(x.to(kBFloat16), w.to(kBFloat16), b.to(kBFloat16), up.to(kBFloat16),
                                           Float8LinearConfig::from_recipe_name("blockwise"));
    EXPECT_EQ(rb.output.dtype(), kBFloat16);
    EXPECT_EQ(rb.grad_weight.dtype(), kBFloat16);
    {
      NoGradGuard ng;
      const Tensor xb = x2.to(kBFloat16).to(kFloat32), wb = w.to(kBFloat16).to(kFloat32);
      const Tensor yb =
          add(matmul(blockwise_dequant_composed(xb, 1, 128), transpose(blockwise_dequant_composed(wb, 128, 128), 0, 1)),
              b.to(kBFloat16).to(kFloat32));
      EXPECT_LE(max_rel_to_max(rb.output.reshape({B * T, N}).to(kFloat32), yb), std::ldexp(1.0, -7));
    }
  }
}

// A block scale above about 2^117 would make some dequantized bfloat16 operand values denormal,
// which the bf16 gemm flushes: the fast mode then runs that gemm as emulate does (bit-identical),
// and the tiny rows keep their products.
TEST(Float8, TinyBlocksFallBackToTheFloat32Gemm) {
  Generator g(63);
  {
    const char* recipe = "blockwise";
    Tensor x = randn({8, 128}, &g);
    for (int j = 0; j < 128; ++j) x.data_ptr<float>()[j] = std::ldexp(x.data_ptr<float>()[j], -130);  // row 0
    const Tensor w = mul(randn({16, 128}, &g), 1e30);  // lifts row 0's outputs to about 1e-9
    Float8LinearConfig ce = Float8LinearConfig::from_recipe_name(recipe), cf = ce;
    ce.emulate = true;
    const Tensor up = randn({8, 16}, &g);
    const LinearRun e = run_float8_linear(x, w, Tensor(), up, ce), f = run_float8_linear(x, w, Tensor(), up, cf);
    EXPECT_NE(e.output.data_ptr<float>()[0], 0.0f);
    EXPECT_EQ(t::count_mismatches(f.output, e.output), 0);
  }
}

// torchao's __post_init__ rules and the recipe table.
TEST(Float8, ConfigRulesAndRecipes) {
  const Float8LinearConfig d = Float8LinearConfig{}.resolved();
  EXPECT_EQ(d.cast_configs_str(), "i:dyn_ten_e4m3,w:dyn_ten_e4m3,go:dyn_ten_e5m2");
  EXPECT_EQ(*d.cast_config_input_for_grad_weight, d.cast_config_input);
  EXPECT_TRUE(d.gemm_config_output.use_fast_accum);
  EXPECT_FALSE(d.gemm_config_grad_input.use_fast_accum);
  EXPECT_EQ(Float8LinearConfig::from_recipe_name("rowwise_with_gw_hp").cast_configs_str(),
            "i:dyn_axs_e4m3,w:dyn_axs_e4m3,go:dyn_axs_e4m3,i_gw:dis_ten_e4m3,w_gi:dyn_ten_e4m3,go_gw:dis_ten_e4m3");
  EXPECT_TRUE(Float8LinearConfig::from_recipe_name("rowwise").round_scales_to_power_of_2);
  std::vector<std::string> names;
  for (const auto& r : float8_recipes()) names.push_back(r.name);
  EXPECT_EQ(names, (std::vector<std::string>{"tensorwise", "rowwise", "rowwise_with_gw_hp", "blockwise"}));
  t::expect_error(
      [] { Float8LinearConfig::from_recipe_name("fastest"); },
      {"float8 recipe_name 'fastest' is not one of 'tensorwise', 'rowwise', 'rowwise_with_gw_hp', 'blockwise'"});
  const Float8LinearConfig bw = Float8LinearConfig::from_recipe_name("blockwise").resolved();
  EXPECT_EQ(bw.cast_configs_str(), "i:dyn_b1x128_e4m3,w:dyn_b128x128_e4m3,go:dyn_b1x128_e4m3");
  EXPECT_TRUE(bw.round_scales_to_power_of_2);
  {  // the blockwise auto filter decides as rowwise's (torchao has none for blockwise)
    const ModuleFilter fb = auto_filter_for_recipe("blockwise", {"head"}),
                       fr = auto_filter_for_recipe("rowwise", {"head"});
    for (auto [k, n] : {std::pair<int64_t, int64_t>{2064, 2064}, {1024, 4096}, {2048, 4096}, {2064, 2056}})
      for (const char* fqn : {"layers.0.w", "head"}) {
        const nn::Linear lin(k, n, false);
        EXPECT_EQ(fb(lin, fqn), fr(lin, fqn)) << k << "x" << n << " " << fqn;
      }
    EXPECT_TRUE(fb(nn::Linear(2064, 2064, false), "layers.0.w"));
    EXPECT_FALSE(fb(nn::Linear(2064, 2064, false), "head"));
  }
  Float8LinearConfig c;
  c.cast_config_input.scaling_type = ScalingType::Disabled;  // the output gemm's operands disagree
  t::expect_error([&] { c.resolved(); }, {"incompatible operand precision for output"});
  c = {};
  c.cast_config_grad_output_for_grad_weight = CastConfig{ScalingType::Disabled, ScalingGranularity::Tensorwise, {}};
  t::expect_error([&] { c.resolved(); }, {"incompatible operand precision for grad_weight"});
  c = {};
  c.cast_config_weight_for_grad_input = CastConfig{ScalingType::Dynamic, ScalingGranularity::Tensorwise, kFloat8_e5m2};
  t::expect_error([&] { c.resolved(); }, {"weight must be cast to the same dtype in both matmuls"});
  c = {};
  c.cast_config_input = CastConfig{ScalingType::Disabled, ScalingGranularity::Axiswise, {}};
  t::expect_error([&] { c.resolved(); }, {"only dynamic scaling type is supported for axiswise"});
  c = {};
  c.cast_config_weight.target_dtype = kBFloat16;
  t::expect_error([&] { c.resolved(); }, {"must be a float8 dtype", "bfloat16"});
  c = Float8LinearConfig::from_recipe_name("rowwise");
  c.enable_fsdp_float8_all_gather = true;
  t::expect_error([&] { c.resolved(); }, {"enable_fsdp_float8_all_gather only supports tensorwise"});
  for (const char* s : {"dyn_ten_e4m3", "dis_axs_e5m2", "dyn_b1x128_e4m3", "dyn_b64x64_e5m2", "dyn_b1x7_e4m3"})
    EXPECT_EQ(CastConfig::parse(s).short_str(), s);
  EXPECT_EQ(CastConfig::parse("dyn_b32x32_e4m3").block_dims, 2);
  EXPECT_EQ(CastConfig::parse("dyn_b1x32_e4m3").block_size, 32);
  for (const char* bad : {"dyn_row_e4m3", "dyn_b2x128_e4m3", "dyn_b0x0_e4m3", "dyn_b1x_e4m3", "dyn_bx128_e4m3",
                          "dyn_b1x-5_e4m3", "dyn_b1x1234567_e4m3", "dyn_ten_e4m3_x", "dyn_b1x128", ""})
    t::expect_error([&] { CastConfig::parse(bad); }, {fmt::format("cast config '{}'", bad)});
  // blockwise: dynamic only, block_dims 1 or 2, a sane block size, power-of-2 scales unless emulated
  c = Float8LinearConfig::from_recipe_name("blockwise");
  c.round_scales_to_power_of_2 = false;
  t::expect_error([&] { c.resolved(); }, {"blockwise scaling needs round_scales_to_power_of_2", "emulate = true"});
  c.emulate = true;
  EXPECT_NO_THROW(c.resolved());
  c = Float8LinearConfig::from_recipe_name("blockwise");
  c.cast_config_weight.block_dims = 3;
  t::expect_error([&] { c.resolved(); }, {"block_dims must be 1", "got 3"});
  c = Float8LinearConfig::from_recipe_name("blockwise");
  c.cast_config_grad_output.block_size = 0;
  t::expect_error([&] { c.resolved(); }, {"block_size must be in [1, 65536], got 0"});
  c = Float8LinearConfig::from_recipe_name("blockwise");
  c.cast_config_input = CastConfig{ScalingType::Disabled, ScalingGranularity::Blockwise, {}};
  c.cast_config_weight.scaling_type = ScalingType::Disabled;
  t::expect_error([&] { c.resolved(); }, {"only dynamic scaling type is supported for blockwise"});
  // a bad config fails before any module is swapped
  auto model =
      std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(16, 16)});
  c = {};
  c.cast_config_input.scaling_type = ScalingType::Disabled;
  t::expect_error([&] { convert_to_float8_training(model, c); }, {"incompatible operand precision"});
  EXPECT_EQ(model->get_submodule("0")->type_name(), "Linear");
}

// convert_to_float8_training: post-order swap of every plain Linear passing the filter (fqn ""
// for a root Linear, returned as a new module), parameters shared, other Linear subclasses kept.
TEST(Float8, ConvertSwapsLinearsSharingParameters) {
  manual_seed(3);
  auto inner = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(32, 32), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(32, 16)});
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(16, 32), inner, std::make_shared<nn::Linear>(16, 8)});
  const Tensor w0 = std::dynamic_pointer_cast<nn::Linear>(model->get_submodule("1.0"))->weight;
  const Tensor x = randn({4, 16});
  NoGradGuard ng;
  const Tensor y_fp32 = model->forward(x);
  auto conv = convert_to_float8_training(
      model, Float8LinearConfig::from_recipe_name("rowwise"),
      [](const nn::Linear&, const std::string& fqn) { return fqn != "2"; });  // keep the head
  EXPECT_EQ(conv, model);
  EXPECT_EQ(conv->get_submodule("0")->type_name(), "Float8Linear");
  EXPECT_EQ(conv->get_submodule("1.0")->type_name(), "Float8Linear");
  EXPECT_EQ(conv->get_submodule("1.2")->type_name(), "Float8Linear");
  EXPECT_EQ(conv->get_submodule("2")->type_name(), "Linear");
  EXPECT_EQ(std::dynamic_pointer_cast<Float8Linear>(conv->get_submodule("1.0"))->weight.impl(), w0.impl());
  EXPECT_LE(max_rel_to_max(conv->forward(x), y_fp32), 0.1);
  // converting again changes nothing (Float8Linear is not a plain Linear)
  convert_to_float8_training(conv);
  EXPECT_EQ(conv->get_submodule("0")->type_name(), "Float8Linear");
  // a root Linear becomes a new module
  auto root = std::make_shared<nn::Linear>(16, 16);
  auto root8 = convert_to_float8_training(root);
  EXPECT_NE(root8, root);
  EXPECT_EQ(root8->type_name(), "Float8Linear");
  // fake-quantized linears are not float8-converted
  auto qat_model = qat::quantize_(
      std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(32, 32)}),
      qat::QATConfig(qat::recipe_config("8da4w", "int4", 32), "prepare"));
  convert_to_float8_training(qat_model);
  EXPECT_EQ(qat_model->get_submodule("0")->type_name(), "FakeQuantizedLinear");
  // inputs of another dtype than the weight are refused by name
  auto f8 = convert_to_float8_training(std::make_shared<nn::Linear>(16, 16));
  t::expect_error([&] { f8->forward(randn({2, 16}).to(kBFloat16)); }, {"Float8Linear", "float32", "bfloat16"});
  t::expect_error([&] { f8->forward(randn({2, 15})); }, {"Float8Linear", "in_features=16"});
}

// A float8 model saves and loads like any other: load_model rebuilds Float8Linear with its
// config from the file alone, and the rebuilt model computes the same bits.
TEST(Float8, SavedModelsRebuildThemselves) {
  manual_seed(4);
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(32, 48), std::make_shared<nn::GELU>(), std::make_shared<nn::Linear>(48, 16)});
  Float8LinearConfig cfg = Float8LinearConfig::from_recipe_name("rowwise_with_gw_hp");
  convert_to_float8_training(model, cfg);
  const std::string path = (std::filesystem::temp_directory_path() / "lowbit_float8_model.h5").string();
  io::export_model(path, *model);
  auto back = io::load_model(path);
  EXPECT_EQ(back->to_string(), model->to_string());
  auto* f8 = dynamic_cast<Float8Linear*>(back->get_submodule("0").get());
  ASSERT_NE(f8, nullptr);
  EXPECT_EQ(f8->config(), cfg.resolved());
  const Tensor x = randn({5, 32});
  NoGradGuard ng;
  model->eval();
  EXPECT_EQ(t::count_mismatches(back->forward(x), model->forward(x)), 0);
  std::filesystem::remove(path);
}

// Float8FakeQuantizeConfig (QAT) against torchao's Float8FakeQuantizer on every case of
// float8_ext.h5: output and scale bit for bit; the gradient in torchao-parity mode bit for bit
// except at each block's amax element(s), whose scale term is a difference of two sums in an
// order torchao does not fix (within 2^-20 of the sums' magnitudes there -- 2^-7 for bfloat16 --
// or both NaN).
TEST(Float8Golden, FakeQuantizerMatchesTorchao) {
  LOWBIT_GOLDEN_FILE(path, "float8_ext.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  int cases = 0;
  int64_t exact = 0, amax_elems = 0;
  for (const auto& name : t::golden_cases(f)) {
    if (name.rfind("fake_quant/", 0) != 0) continue;
    SCOPED_TRACE(name);
    hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
    const std::string cfg_name = name.substr(11, name.find('/', 11) - 11);
    qat::Float8FakeQuantizeConfig cfg(cfg_name.rfind("e5m2", 0) == 0 ? kFloat8_e5m2 : kFloat8_e4m3fn,
                                      cfg_name.find("per_tensor") != std::string::npos
                                          ? qat::Granularity{qat::PerTensor{}}
                                          : qat::Granularity{qat::PerRow{}});
    if (cfg_name.find("lb_1e-12") != std::string::npos) cfg.hp_value_lb = 1e-12;
    if (cfg_name.find("lb_1.0") != std::string::npos) cfg.hp_value_lb = 1.0;
    if (cfg_name.find("ub_64") != std::string::npos) cfg.hp_value_ub = 64.0;
    EXPECT_EQ(cfg.to_string(), t::attr_string(g, "config_repr"));  // lowbit's default backward prints as torchao
    EXPECT_EQ(qat::FakeQuantizer(cfg).to_string(), t::attr_string(g, "fake_quantizer_repr"));
    cfg.backward = qat::Float8FakeQuantizeConfig::Backward::TorchaoParity;  // torchao's measured gradient
    qat::FakeQuantizer fq(cfg);
    const Tensor x0 = input_of(g, "input"), up = input_of(g, "upstream_grad");
    Tensor x = x0.clone().requires_grad_();
    const Tensor y = fq.forward(x);
    y.backward(up);
    std::string where;
    const bool bf = x0.dtype() == kBFloat16;
    EXPECT_EQ(t::count_mismatches(fq.scale, t::dataset(g, "scale", kFloat32), &where), 0) << "scale " << where;
    if (bf)
      EXPECT_EQ(bf16_mismatches(y, g, "output", &where), 0) << "output " << where;
    else
      EXPECT_EQ(t::count_mismatches(y, t::dataset(g, "output", kFloat32), &where), 0) << "output " << where;
    // the gradient: exact off the amax elements
    const Tensor ours = x.grad().to(kFloat32), want = t::dataset(g, "grad_input", kFloat32);
    const Tensor xf = x0.to(kFloat32);
    const int64_t len = cfg_name.find("per_tensor") != std::string::npos ? xf.numel() : xf.size(-1);
    for (int64_t b = 0; b < xf.numel() / len; ++b) {
      float amax = 0;
      bool nan = false;
      for (int64_t i = b * len; i < (b + 1) * len; ++i) {
        nan |= std::isnan(xf.data_ptr<float>()[i]);
        amax = std::max(amax, std::fabs(xf.data_ptr<float>()[i]));
      }
      for (int64_t i = b * len; i < (b + 1) * len; ++i) {
        const float a = ours.data_ptr<float>()[i], w = want.data_ptr<float>()[i];
        if (std::isnan(a) && std::isnan(w)) {
          ++exact;
          continue;
        }
        if (!nan && std::fabs(xf.data_ptr<float>()[i]) == amax) {
          ++amax_elems;
          // the scale term is a difference of two sums that nearly cancel: bound the summation-order
          // error by the sums' magnitudes (sum |g q| + sum |gq (x/s)/s| ~ 2 sum |g q|) / fp8max / ties
          double mag = 0;
          const float s = fq.scale.reshape({-1}).data_ptr<float>()[fq.scale.numel() == 1 ? 0 : b];
          int64_t ties = 0;
          for (int64_t j = b * len; j < (b + 1) * len; ++j) {
            const float xj = xf.data_ptr<float>()[j], gj = up.to(kFloat32).data_ptr<float>()[j];
            mag += 2.0 * std::fabs(gj * static_cast<double>(xj));  // |g q s| ~ |g x|
            ties += std::fabs(xj) == amax;
          }
          const double fmax = cfg.dtype == kFloat8_e5m2 ? 57344.0 : 448.0;
          const double bound = std::ldexp(mag / s / fmax / static_cast<double>(ties), bf ? -7 : -20) +
                               std::ldexp(std::fabs(w), bf ? -7 : -20);
          EXPECT_LE(std::fabs(a - w), bound) << "amax element " << i << ": ours " << a << " vs torchao " << w;
        } else {
          ASSERT_EQ(std::bit_cast<uint32_t>(a), std::bit_cast<uint32_t>(w))
              << "element " << i << ": ours " << a << " vs torchao " << w;
          ++exact;
        }
      }
    }
    H5Gclose(g);
    ++cases;
  }
  H5Fclose(f);
  EXPECT_EQ(cases, 33);
  std::printf("  float8_ext.h5: %d fake-quant cases; %lld gradients bit-exact, %lld amax elements within bound\n",
              cases, static_cast<long long>(exact), static_cast<long long>(amax_elems));
}

// The straight-through mode (lowbit's default) and the zero-block guard: the gradient is the
// upstream gradient where the clamp passed it, and an all-zero row gives zeros, not NaN.
// Tensors larger than one thread's part (the amax reduced over threads; a per-tensor block
// split over them; rows over them): the forward against the formula -- s = RN(amax / 448),
// y = fp32(fp8(clamp(x / s))) * s, true division -- for the largest magnitude at the start, the
// middle or the end; a NaN anywhere makes its block NaN.
TEST(Float8, FakeQuantizerOfLargeTensorsFollowsTheFormula) {
  const MinifloatSpec& e4m3 = *minifloat_spec(kFloat8_e4m3fn);
  for (const bool per_tensor : {true, false})
    for (const int64_t where : {int64_t{0}, int64_t{150000}, int64_t{299999}}) {
      SCOPED_TRACE(::testing::Message() << (per_tensor ? "per tensor" : "per row") << ", extreme at " << where);
      const int64_t rows = 3, cols = 100000;
      manual_seed(where + 5);
      Tensor x = randn({rows, cols});
      float* xp = x.data_ptr<float>();
      xp[where] = -37.0f;
      const qat::Float8FakeQuantizeConfig cfg(kFloat8_e4m3fn,
                                              per_tensor ? qat::Granularity{qat::PerTensor{}} : qat::PerRow{});
      qat::FakeQuantizer fq(cfg);
      NoGradGuard ng;
      const Tensor y = fq.forward(x);
      const int64_t len = per_tensor ? rows * cols : cols;
      int64_t bad = 0;
      for (int64_t b = 0; b < rows * cols / len; ++b) {
        float amax = 0.0f;
        for (int64_t i = b * len; i < (b + 1) * len; ++i) amax = std::max(amax, std::fabs(xp[i]));
        const float sc = amax / 448.0f;
        for (int64_t i = b * len; i < (b + 1) * len; ++i) {
          const float v = std::min(std::max(xp[i] / sc, -448.0f), 448.0f);
          const float want = minifloat_decode(e4m3, minifloat_encode(e4m3, v, true)) * sc;
          bad += y.data_ptr<float>()[i] != want;
        }
      }
      EXPECT_EQ(bad, 0);
      xp[rows * cols - 1] = NAN;  // the last block becomes NaN
      const Tensor yn = fq.forward(x);
      EXPECT_TRUE(std::isnan(yn.data_ptr<float>()[per_tensor ? 0 : (rows - 1) * cols]));
      EXPECT_EQ(std::isnan(yn.data_ptr<float>()[0]), per_tensor);
    }
}

TEST(Float8, FakeQuantizerStraightThroughAndZeroGuard) {
  qat::Float8FakeQuantizeConfig cfg(kFloat8_e4m3fn, qat::PerRow{});
  cfg.backward = qat::Float8FakeQuantizeConfig::Backward::TorchaoParity;
  Generator gen(11);
  Tensor x0 = randn({4, 32}, &gen);
  for (int64_t i = 0; i < 32; ++i) x0.data_ptr<float>()[32 + i] = 0.0f;  // row 1 all zero
  const Tensor up = randn({4, 32}, &gen);
  {  // parity: the zero row is NaN, as torchao (pytorch/ao#3356)
    qat::FakeQuantizer fq(cfg);
    Tensor x = x0.clone().requires_grad_();
    const Tensor y = fq.forward(x);
    EXPECT_TRUE(std::isnan(y.data_ptr<float>()[32]));
  }
  cfg.backward = qat::Float8FakeQuantizeConfig::Backward::StraightThrough;
  cfg.guard_zero_blocks = true;
  EXPECT_NE(cfg.to_string().find("hp_value_ub=None, guard_zero_blocks=True)"), std::string::npos);
  qat::FakeQuantizer fq(cfg);
  Tensor x = x0.clone().requires_grad_();
  const Tensor y = fq.forward(x);
  y.backward(up);
  for (int64_t i = 0; i < 32; ++i) {
    EXPECT_EQ(y.data_ptr<float>()[32 + i], 0.0f);
    EXPECT_EQ(x.grad().data_ptr<float>()[32 + i], up.data_ptr<float>()[32 + i]);
  }
  int64_t clamped = 0;
  for (int64_t i = 0; i < 4 * 32; ++i) {  // the clamp's mask: amax / RN(amax / 448) may exceed 448 (§9 item 1)
    const float sc = fq.scale.data_ptr<float>()[i / 32];
    const bool in = i / 32 == 1 || std::fabs(x0.data_ptr<float>()[i] / sc) <= 448.0f;
    clamped += !in;
    EXPECT_EQ(x.grad().data_ptr<float>()[i], in ? up.data_ptr<float>()[i] : 0.0f) << i;
  }
  EXPECT_LE(clamped, 3);  // at most the amax element of each non-zero row
  t::expect_error([] { qat::Float8FakeQuantizeConfig(kFloat8_e4m3fn, qat::PerGroup{32}); },
                  {"Float8FakeQuantizeConfig", "PerRow(dim=-1) or PerTensor()", "PerGroup(group_size=32)"});
  t::expect_error([] { qat::Float8FakeQuantizeConfig(kBFloat16, qat::PerRow{}); },
                  {"Float8FakeQuantizeConfig", "float8_e4m3fn or float8_e5m2", "bfloat16"});
  t::expect_error([] { qat::Float8FakeQuantizeConfig(kFloat8_e4m3fn, qat::PerRow{}, 2.0, 1.0); },
                  {"hp_value_lb (2) must not exceed hp_value_ub (1)"});
}
