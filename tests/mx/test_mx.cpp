// MX formats against torchao's golden vectors (mx.h5, mx_ext.h5) and their formulas: to_mx scale
// bytes, element codes and dequantized values bit-exact for every element format, scale mode,
// block size (16, 32, 64) and input (random fp32/bf16, edge blocks, non-finite blocks).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "golden.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/core/blocks.h"
#include "lowbit/core/cast2d.h"
#include "lowbit/core/scale.h"
#include "lowbit/io/checkpoint.h"
#include "lowbit/nn/layers.h"
#include "lowbit/qat/mx_quantized.h"
#include "lowbit/qat/quantize.h"
#include "lowbit/qat/fake_quantizer.h"
#include "lowbit/qat/recipes.h"
#include "lowbit/mx/linear.h"
#include "lowbit/mx/mx.h"
#include "lowbit/mx/nvfp4.h"
#include "test_util.h"

using namespace lowbit;
using namespace lowbit::mx;
namespace t = lowbit::testing;

namespace {
bool has_dataset(hid_t g, const std::string& name) { return H5Lexists(g, name.c_str(), H5P_DEFAULT) > 0; }
// the case's input in its dtype: bfloat16 from the raw bits where the case stores them
Tensor input_of(hid_t g) {
  if (!has_dataset(g, "input_bf16_bits")) return t::dataset(g, "input", kFloat32);
  return t::dataset(g, "input", kFloat32).to(kBFloat16);  // the float32 upcast is exact
}
E8M0Rounding mode_of(const std::string& s) {
  return s.find("RCEIL") != std::string::npos  ? E8M0Rounding::RCeil
         : s.find("CEIL") != std::string::npos ? E8M0Rounding::Ceil
         : s.find("EVEN") != std::string::npos ? E8M0Rounding::Even
                                               : E8M0Rounding::Floor;
}
const uint8_t* bytes(const Tensor& x) { return static_cast<const uint8_t*>(x.raw_data()); }
// every MX element format and e8m0 scale mode
constexpr FormatId kElements[] = {FormatId::Float8E4M3FN, FormatId::Float8E5M2, FormatId::Float6E2M3FN,
                                  FormatId::Float6E3M2FN, FormatId::Float4E2M1FN};
constexpr E8M0Rounding kModes[] = {E8M0Rounding::Floor, E8M0Rounding::Ceil, E8M0Rounding::Even, E8M0Rounding::RCeil};
}  // namespace

TEST(MXGolden, EveryToMxCase) {
  int cases = 0;
  int64_t blocks = 0, nan_blocks = 0, codes = 0;
  for (const char* file : {"mx.h5", "mx_ext.h5"}) {
    LOWBIT_GOLDEN_FILE(path, file);
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0) << path;
    for (const auto& name : t::golden_cases(f)) {
      if (name.rfind("to_mx/", 0) != 0) continue;
      SCOPED_TRACE(std::string(file) + " " + name);
      hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
      const core::Format& e = mx_element(t::attr_string(g, "elem_format"));
      const int64_t bs = t::attr_ints(g, "block_size")[0];
      const Tensor x = input_of(g);
      const MXTensor m = to_mx(x, e.id, bs, mode_of(t::attr_string(g, "scaling_mode")));
      const Tensor sb = t::dataset(g, "scale_e8m0_bits", kUInt8), qb = t::dataset(g, "qdata_bits", kUInt8);
      ASSERT_EQ(m.scale.numel(), sb.numel());
      ASSERT_EQ(m.qdata.numel(), qb.numel());
      EXPECT_EQ(m.scale.dtype(), kFloat8_e8m0fnu);
      EXPECT_EQ(m.qdata.dtype(), e.per_byte == 2 ? kFloat4_e2m1fn_x2 : e.storage_dtype);
      // scale bytes everywhere; codes outside NaN blocks (torchao leaves fp6/fp4 codes of a NaN
      // block unspecified: its scale is NaN either way)
      const Tensor ours = m.codes();
      std::vector<uint8_t> theirs(static_cast<size_t>(ours.numel()));
      core::unpack(e, bytes(qb), theirs.data(), ours.numel());
      for (int64_t b = 0; b < sb.numel(); ++b) {
        ASSERT_EQ(bytes(m.scale)[b], bytes(sb)[b]) << "block " << b;
        ++blocks;
        if (bytes(sb)[b] == 255) {
          ++nan_blocks;
          continue;
        }
        for (int64_t i = b * bs; i < (b + 1) * bs; ++i) {
          ASSERT_EQ(bytes(ours)[i], theirs[static_cast<size_t>(i)]) << "element " << i;
          ++codes;
        }
      }
      // dequantized values (NaN equals NaN)
      EXPECT_EQ(t::count_mismatches(m.dequantize(kFloat32), t::dataset(g, "dequant_f32", kFloat32)), 0);
      if (has_dataset(g, "dequant_orig_dtype")) {
        const Tensor d = m.dequantize();
        EXPECT_EQ(d.dtype(), kBFloat16);
        EXPECT_EQ(t::count_mismatches(d.to(kFloat32), t::dataset(g, "dequant_orig_dtype", kFloat32)), 0);
      }
      H5Gclose(g);
      ++cases;
    }
    H5Fclose(f);
  }
  EXPECT_EQ(cases, 80 + 80);  // mx.h5: 5 elements x 4 modes x 4 inputs; mx_ext.h5: blocks 16/64 x 5 x 2 x 4
  std::printf("  %d to_mx cases: %lld scale bytes (%lld NaN blocks) and %lld element codes bit-exact\n", cases,
              static_cast<long long>(blocks), static_cast<long long>(nan_blocks), static_cast<long long>(codes));
}

// Shapes, dtypes and names are checked before any work.
TEST(MX, ToMxRefusesBadInputs) {
  const Tensor x = randn({4, 64});
  t::expect_error([&] { to_mx(x, FormatId::Int4); }, {"MX element format", "int4"});
  t::expect_error(
      [&] {
        to_mx(randn({4, 48}), FormatId::Float8E4M3FN, 32);
      },
      {"to_mx", "last dim (48)", "multiple of block_size 32"});
  t::expect_error([&] { to_mx(x, FormatId::Float8E4M3FN, 0); }, {"block_size must be in [1, 2^20], got 0"});
  t::expect_error([&] { to_mx(x.to(kFloat64), FormatId::Float8E4M3FN); }, {"to_mx", "float64"});
  t::expect_error([&] { to_mx(randn({2, 3}), FormatId::Float4E2M1FN, 3); }, {"two elements per byte", "got 3"});
  t::expect_error([] { mx_element("fp5_e2m2"); }, {"MX element format", "fp5_e2m2", "fp4_e2m1"});
  t::expect_error([] { parse_scale_mode("floor"); }, {"FLOOR, CEIL, EVEN or RCEIL", "'floor'"});
  EXPECT_EQ(parse_scale_mode("RCEIL"), E8M0Rounding::RCeil);
  // 3-D input, blocks along the last dim; the dequantized shape and dtype follow the input
  const MXTensor m = to_mx(randn({2, 3, 64}).to(kBFloat16), FormatId::Float4E2M1FN, 32, E8M0Rounding::RCeil);
  EXPECT_EQ(m.qdata.shape(), (Shape{2, 3, 32}));
  EXPECT_EQ(m.scale.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(m.dequantize().shape(), (Shape{2, 3, 64}));
  EXPECT_EQ(m.dequantize().dtype(), kBFloat16);
}

namespace {
// a golden tensor in the case's dtype (bf16 cases: the exact float32 upcast, cast back)
Tensor golden_in(hid_t g, const std::string& name, DType dt) {
  const Tensor f = t::dataset(g, name, kFloat32);
  return dt == kFloat32 ? f : f.to(dt);
}
FormatId elem_of(std::string s) {
  if (s.rfind("torch.", 0) == 0) s = s.substr(6);
  if (s == "float4_e2m1fn_x2") return FormatId::Float4E2M1FN;
  return mx_element(s).id;
}
using t::LinearRun;
using t::max_rel_to_max;
LinearRun run_mx_linear(const Tensor& x0, const Tensor& w0, const Tensor& b0, const Tensor& up,
                        const MXLinearConfig& c) {
  return t::run_converted_linear(x0, w0, b0, up, [&](const std::shared_ptr<nn::Linear>& lin) {
    auto m = convert_to_mx_training(lin, c);
    EXPECT_EQ(m->type_name(), "MXLinear");
    return m;
  });
}
}  // namespace

// MX training linear against torchao's mx_mm / MXFP8Linear (emulated, CPU): mx.h5 (fp8 and fp4 x
// RCEIL/FLOOR x wgrad_with_hp) and mx_ext.h5 (every element dtype x all four modes x fp32/bf16,
// mixed element dtypes, 3-D input, MXFP8Linear with bias). Emulate: float32 results within 2^-22
// of the largest magnitude (another summation order), bfloat16 within one bfloat16 rounding; the
// fast mode (bf16 gemm on the same exact values) within 2^-18 / one bfloat16 rounding of torchao.
TEST(MXGolden, MXLinearMatchesTorchaoEmulated) {
  int cases = 0;
  double worst[2][2] = {{0, 0}, {0, 0}};  // [bf16][fast]
  for (const char* file : {"mx.h5", "mx_ext.h5"}) {
    LOWBIT_GOLDEN_FILE(path, file);
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    for (const auto& name : t::golden_cases(f)) {
      const bool mm = name.rfind("linear_train_mx_mm/", 0) == 0, f8lin = name.rfind("linear_MXFP8Linear_bias/", 0) == 0;
      if (!mm && !f8lin) continue;
      SCOPED_TRACE(std::string(file) + " " + name);
      hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
      const DType dt = t::has_attr(g, "dtype") && t::attr_string(g, "dtype") == "torch.bfloat16" ? kBFloat16 : kFloat32;
      MXLinearConfig c;
      c.block_size = t::attr_ints(g, "block_size")[0];
      c.scale_calculation_mode = mode_of(t::attr_string(g, "scaling_mode"));
      c.wgrad_with_hp = t::attr_string(g, "wgrad_with_hp") == "True" || t::attr_ints(g, "wgrad_with_hp")[0] != 0;
      if (t::has_attr(g, "in_elem")) {
        c.elem_dtype = elem_of(t::attr_string(g, "in_elem"));
        const FormatId we = elem_of(t::attr_string(g, "w_elem")), ge = elem_of(t::attr_string(g, "grad_elem"));
        if (we != c.elem_dtype) c.elem_dtype_weight_override = we;
        if (ge != c.elem_dtype) c.elem_dtype_grad_output_override = ge;
      } else {
        c.elem_dtype = elem_of(t::attr_string(g, "elem_dtype"));
      }
      const Tensor x = golden_in(g, "input", dt), w = golden_in(g, "weight", dt),
                   up = golden_in(g, "upstream_grad", dt);
      const Tensor b = has_dataset(g, "bias") ? golden_in(g, "bias", dt) : Tensor();
      for (bool emulate : {true, false}) {
        c.emulate = emulate;
        const LinearRun r = run_mx_linear(x, w, b, up, c);
        EXPECT_EQ(r.output.dtype(), dt);
        const double tol = dt == kBFloat16 ? std::ldexp(1.0, -7)
                           : emulate       ? std::ldexp(1.0, -22)
                                           : std::ldexp(1.0, -18);
        for (const auto& [key, ours] : {std::pair{"output", r.output}, std::pair{"grad_input", r.grad_input},
                                        std::pair{"grad_weight", r.grad_weight}}) {
          const double e = max_rel_to_max(ours, golden_in(g, key, dt));
          EXPECT_LE(e, tol) << key << (emulate ? " emulate" : " fast");
          double& wst = worst[dt == kBFloat16][!emulate];
          wst = std::max(wst, e);
        }
        if (b.defined()) EXPECT_LE(max_rel_to_max(r.grad_bias, golden_in(g, "grad_bias", dt)), tol);
      }
      H5Gclose(g);
      ++cases;
    }
    H5Fclose(f);
  }
  EXPECT_EQ(cases, 8 + 63 + 9);
  std::printf(
      "  %d MX linear cases; largest error / max|torchao|: fp32 emulate %.3g fast %.3g, bf16 emulate %.3g fast %.3g\n",
      cases, worst[0][0], worst[0][1], worst[1][0], worst[1][1]);
}

// The fast mode against emulate for every recipe, with ragged blocks (dimensions that are not
// multiples of 32, beyond torchao), 3-D input, bias, float32 and bfloat16: the same exact operand
// values, float32 sums in another order (2^-18 of the largest magnitude; bf16 one rounding).
TEST(MX, FastModeWithinItsBoundOfEmulateForEveryRecipe) {
  Generator g(70);
  const int64_t B = 2, T = 25, K = 80, N = 40;
  for (const auto& r : mx_recipes())
    for (DType dt : {kFloat32, kBFloat16}) {
      SCOPED_TRACE(fmt::format("{} {}", r.name, dtype_name(dt)));
      const Tensor x = mul(randn({B, T, K}, &g), 3.0).to(dt), w = mul(randn({N, K}, &g), 0.05).to(dt);
      const Tensor b = randn({N}, &g).to(dt), up = randn({B, T, N}, &g).to(dt);
      MXLinearConfig ce = r.config(), cf = r.config();
      ce.emulate = true;
      cf.emulate = false;
      const LinearRun e = run_mx_linear(x, w, b, up, ce), f = run_mx_linear(x, w, b, up, cf);
      const double tol = dt == kBFloat16 ? std::ldexp(1.0, -7) : std::ldexp(1.0, -18);
      EXPECT_LE(max_rel_to_max(f.output, e.output), tol);
      EXPECT_LE(max_rel_to_max(f.grad_input, e.grad_input), tol);
      EXPECT_LE(max_rel_to_max(f.grad_weight, e.grad_weight), tol);
      EXPECT_EQ(t::count_mismatches(f.grad_bias.to(kFloat32), e.grad_bias.to(kFloat32)), 0);
      // and near the float32 linear (fp4's 1 mantissa bit is the loosest)
      NoGradGuard ng;
      const Tensor ref = linear(x.to(kFloat32), w.to(kFloat32), b.to(kFloat32));
      EXPECT_LE(max_rel_to_max(e.output, ref), r.config().elem_dtype == FormatId::Float4E2M1FN ? 0.35 : 0.15);
    }
}

// A block scale that would make some dequantized bfloat16 operand value denormal (flushed by the
// bf16 gemm) sends that gemm to the float32 path: bit-identical to emulate.
TEST(MX, TinyBlocksFallBackToTheFloat32Gemm) {
  Generator g(71);
  Tensor x = randn({8, 128}, &g);
  for (int j = 0; j < 128; ++j) x.data_ptr<float>()[j] = std::ldexp(x.data_ptr<float>()[j], -130);  // row 0
  const Tensor w = mul(randn({16, 128}, &g), 1e30);  // lifts row 0's outputs to about 1e-9
  MXLinearConfig ce = MXLinearConfig::from_recipe_name("mxfp8_rceil"), cf = ce;
  ce.emulate = true;
  const Tensor up = randn({8, 16}, &g);
  const LinearRun e = run_mx_linear(x, w, Tensor(), up, ce), f = run_mx_linear(x, w, Tensor(), up, cf);
  EXPECT_NE(e.output.data_ptr<float>()[0], 0.0f);
  EXPECT_EQ(t::count_mismatches(f.output, e.output), 0);
}

// Configs, recipes and conversion: errors name the problem; MXLinear saves and rebuilds itself.
TEST(MX, ConfigsConvertAndRebuild) {
  std::vector<std::string> names;
  for (const auto& r : mx_recipes()) names.push_back(r.name);
  EXPECT_EQ(names.front(), "mxfp8_emulated");
  t::expect_error([] { MXLinearConfig::from_recipe_name("mxfp9"); }, {"MX recipe_name 'mxfp9'", "mxfp8_rceil"});
  MXLinearConfig bad;
  bad.elem_dtype = FormatId::Int8;
  t::expect_error([&] { bad.validate(); }, {"MX element format", "int8"});
  bad = {};
  bad.block_size = 0;
  t::expect_error([&] { convert_to_mx_training(std::make_shared<nn::Linear>(8, 8), bad); },
                  {"block_size must be in [1, 2^20], got 0"});
  EXPECT_EQ(MXLinearConfig::from_recipe_name("mxfp8_hybrid").grad_output_elem(), FormatId::Float8E5M2);
  // convert: every plain Linear passing the filter; an exported model rebuilds with its config
  manual_seed(72);
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(64, 48), std::make_shared<nn::GELU>(), std::make_shared<nn::Linear>(48, 16)});
  const MXLinearConfig cfg = MXLinearConfig::from_recipe_name("mxfp8_hybrid");
  convert_to_mx_training(model, cfg, [](const nn::Linear&, const std::string& fqn) { return fqn != "2"; });
  EXPECT_EQ(model->get_submodule("0")->type_name(), "MXLinear");
  EXPECT_EQ(model->get_submodule("2")->type_name(), "Linear");
  EXPECT_NE(model->to_string().find("elem_dtype=float8_e4m3fn, w=float8_e4m3fn, go=float8_e5m2, block_size=32, "
                                    "scale_calculation_mode=RCEIL"),
            std::string::npos)
      << model->to_string();
  const std::string path = (std::filesystem::temp_directory_path() / "lowbit_mx_model.h5").string();
  io::export_model(path, *model);
  auto back = io::load_model(path);
  EXPECT_EQ(back->to_string(), model->to_string());
  auto* mxl = dynamic_cast<MXLinear*>(back->get_submodule("0").get());
  ASSERT_NE(mxl, nullptr);
  EXPECT_EQ(mxl->config(), cfg);
  const Tensor x = randn({5, 64});
  NoGradGuard ng;
  EXPECT_EQ(t::count_mismatches(back->forward(x), model->forward(x)), 0);
  t::expect_error([&] { model->forward(randn({2, 64}).to(kBFloat16)); }, {"MXLinear", "float32", "bfloat16"});
  std::filesystem::remove(path);
}

// MX QAT against torchao's MXFakeQuantizedLinear (mx.h5: fp8/fp4 x RCEIL/FLOOR; mx_ext.h5: every
// element dtype x 4 modes x fp32/bf16 x bias, 3-D input): FakeQuantizedLinear with
// MXFakeQuantizeConfig activation and weight quantizers, in torchao's bias parity mode (the bias
// gets no gradient there). Forward = the emulated addmm on the MX-dequantized operands; backward =
// the dequantized operands (straight through). float32 within 2^-22 of the largest magnitude,
// bfloat16 within one bfloat16 rounding.
TEST(MXGolden, MXFakeQuantizedLinearMatchesTorchao) {
  int cases = 0;
  double worst[2] = {0, 0};
  for (const char* file : {"mx.h5", "mx_ext.h5"}) {
    LOWBIT_GOLDEN_FILE(path, file);
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    for (const auto& name : t::golden_cases(f)) {
      if (name.rfind("linear_qat_MXFakeQuantizedLinear/", 0) != 0) continue;
      SCOPED_TRACE(std::string(file) + " " + name);
      hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
      const DType dt = t::has_attr(g, "dtype") && t::attr_string(g, "dtype") == "torch.bfloat16" ? kBFloat16 : kFloat32;
      qat::MXFakeQuantizeConfig cfg(elem_of(t::attr_string(g, "elem_dtype")), t::attr_ints(g, "block_size")[0],
                                    mode_of(t::attr_string(g, "scaling_mode")));
      cfg.torchao_bias_parity = true;
      const Tensor x0 = golden_in(g, "input", dt), w0 = golden_in(g, "weight", dt),
                   up = golden_in(g, "upstream_grad", dt);
      const Tensor b0 = has_dataset(g, "bias") ? golden_in(g, "bias", dt) : Tensor();
      auto lin = std::make_shared<qat::FakeQuantizedLinear>(
          w0.clone().requires_grad_(), b0.defined() ? b0.clone().requires_grad_() : Tensor(), &cfg, &cfg);
      Tensor x = x0.clone().requires_grad_();
      Tensor y = lin->forward(x);
      y.backward(up);
      const double tol = dt == kBFloat16 ? std::ldexp(1.0, -7) : std::ldexp(1.0, -22);
      for (const auto& [key, ours] :
           {std::pair{"output", y}, std::pair{"grad_input", x.grad()}, std::pair{"grad_weight", lin->weight.grad()}}) {
        const double e = max_rel_to_max(ours, golden_in(g, key, dt));
        EXPECT_LE(e, tol) << key;
        worst[dt == kBFloat16] = std::max(worst[dt == kBFloat16], e);
      }
      if (b0.defined()) EXPECT_FALSE(lin->bias.grad().defined());  // torchao: grad_bias is None
      H5Gclose(g);
      ++cases;
    }
    H5Fclose(f);
  }
  EXPECT_EQ(cases, 4 + 85);
  std::printf("  %d MXFakeQuantizedLinear cases; largest error / max|torchao|: fp32 %.3g, bf16 %.3g\n", cases, worst[0],
              worst[1]);
}

// QAT -> convert through quantize_ and QATConfig: the prepared model fake-quantizes with MX
// configs (bias with its gradient, lowbit's default), the converted model stores MX codes and
// e8m0 scales, computes what the prepared one does (bf16 gemm on the same exact values) and
// rebuilds itself from a file; the mxfp4 / mxfp6 / mxfp8 recipes of the table all work.
TEST(MX, QatPrepareConvertExportRebuild) {
  for (const char* recipe : {"mxfp8", "mxfp6", "mxfp4"}) {
    SCOPED_TRACE(recipe);
    manual_seed(73);
    auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(64, 48), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(48, 10)});
    const auto base = qat::recipe_config(recipe, "int4", 32);
    qat::quantize_(model, qat::QATConfig(base, "prepare"));
    ASSERT_EQ(model->get_submodule("0")->type_name(), "FakeQuantizedLinear");
    const Tensor x = randn({6, 64});
    Tensor xr = x.clone().requires_grad_();
    sum(model->forward(xr)).backward();
    auto* fql = dynamic_cast<qat::FakeQuantizedLinear*>(model->get_submodule("0").get());
    EXPECT_TRUE(fql->bias.grad().defined());  // lowbit: the bias trains
    Tensor y_prepared;
    {
      NoGradGuard ng;
      y_prepared = model->forward(x);
    }
    qat::quantize_(model, qat::QATConfig(base, "convert"));
    ASSERT_EQ(model->get_submodule("0")->type_name(), "MXQuantizedLinear");
    auto* mq = dynamic_cast<qat::MXQuantizedLinear*>(model->get_submodule("0").get());
    EXPECT_EQ(mq->weight_scale.dtype(), kFloat8_e8m0fnu);
    EXPECT_EQ(mq->weight_scale.shape(), (Shape{48, 2}));
    NoGradGuard ng;
    const Tensor y = model->forward(x);
    EXPECT_LE(max_rel_to_max(y, y_prepared), std::ldexp(1.0, -18));
    const std::string path = (std::filesystem::temp_directory_path() / "lowbit_mx_qat.h5").string();
    io::export_model(path, *model);
    auto back = io::load_model(path);
    EXPECT_EQ(back->to_string(), model->to_string());
    EXPECT_EQ(t::count_mismatches(back->forward(x), y), 0);
    // inspect (and lowbit eval, which reads it) counts the logical weights and names the format
    const io::FileInfo info = io::inspect(path);
    EXPECT_EQ(info.parameters, 64 * 48 + 48 + 48 * 10 + 10);
    int mx_tensors = 0;
    for (const auto& ti : info.tensors) mx_tensors += ti.scheme.rfind("mx ", 0) == 0;
    EXPECT_EQ(mx_tensors, 6);  // weight, weight_scale, bias of both layers
    std::filesystem::remove(path);
  }
  t::expect_error([] { qat::MXFakeQuantizeConfig(FormatId::Int4); }, {"MX element format", "int4"});
  qat::MXDynamicActivationMXWeightConfig mixed;
  mixed.weight_dtype = FormatId::Float4E2M1FN;
  t::expect_error([&] { mixed.validate(); }, {"activation_dtype (float8_e4m3fn) and weight_dtype (fp4_e2m1)"});
}

// A file's MXQuantizedLinear is checked before it is built: scheme, formats, shapes, scale dtype
// and shape, fp6 codes that do not fit 6 bits, odd in_features for fp4.
TEST(MX, HostileMXQuantizedLinearAttributesAreRefused) {
  const Tensor scale = full({4, 1}, 127.0).to(kFloat8_e8m0fnu);
  nn::NamedTensors t = {{"weight", zeros({4, 32}).to(kFloat4_e2m1fn_x2)}, {"weight_scale", scale}};  // 4 x 16 bytes
  nn::Attributes a = {{"quant_scheme", std::string("mx")}, {"weight_dtype", std::string("fp4_e2m1")},
                      {"block_size", int64_t{32}},         {"scaling_mode", std::string("RCEIL")},
                      {"in_features", int64_t{32}},        {"activation", std::string("none")}};
  EXPECT_NO_THROW(qat::MXQuantizedLinear::from_attributes(a, t));
  auto bad = a;
  bad["weight_dtype"] = std::string("int4");
  t::expect_error([&] { qat::MXQuantizedLinear::from_attributes(bad, t); }, {"MX element format", "int4"});
  bad = a;
  bad["in_features"] = int64_t{33};
  t::expect_error([&] { qat::MXQuantizedLinear::from_attributes(bad, t); }, {"MXQuantizedLinear", "got 33"});
  bad = a;
  bad["in_features"] = int64_t{64};
  t::expect_error([&] { qat::MXQuantizedLinear::from_attributes(bad, t); }, {"MXQuantizedLinear", "32 columns"});
  bad = a;
  bad["scaling_mode"] = std::string("round");
  t::expect_error([&] { qat::MXQuantizedLinear::from_attributes(bad, t); }, {"FLOOR, CEIL, EVEN or RCEIL", "'round'"});
  bad = a;
  bad["activation"] = std::string("static");
  t::expect_error([&] { qat::MXQuantizedLinear::from_attributes(bad, t); }, {"activation must be 'none' or 'dynamic'"});
  auto t2 = t;
  t2[1].second = ones({4, 1});
  t::expect_error([&] { qat::MXQuantizedLinear::from_attributes(a, t2); },
                  {"weight_scale must be float8_e8m0fnu of shape [4, 1]"});
  // fp6: codes above 6 bits
  nn::Attributes a6 = a;
  a6["weight_dtype"] = std::string("fp6_e2m3");
  nn::NamedTensors t6 = {{"weight", full({4, 32}, 64.0).to(kUInt8)}, {"weight_scale", scale}};
  t::expect_error([&] { qat::MXQuantizedLinear::from_attributes(a6, t6); }, {"128 weight codes do not fit 6 bits"});
}

// NVFP4Tensor against torchao (nvfp4.h5, 18 quantize cases: single level, two level with the
// per-tensor scale from the amax or given, random / edge / non-finite / 3-D / bf16 inputs): e4m3
// scale bytes, hp scales, fp4 codes (outside NaN blocks), float32 and bfloat16 dequantization.
TEST(MXGolden, EveryNvfp4QuantizeCase) {
  LOWBIT_GOLDEN_FILE(path, "nvfp4.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  int cases = 0;
  int64_t codes = 0;
  const core::Format& fp4 = core::format(FormatId::Float4E2M1FN);
  for (const auto& name : t::golden_cases(f)) {
    if (name.rfind("quantize/", 0) != 0) continue;
    SCOPED_TRACE(name);
    hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
    const Tensor x = input_of(g);
    std::optional<float> pts;
    if (has_dataset(g, "per_tensor_scale")) {
      pts = t::dataset(g, "per_tensor_scale", kFloat32).data_ptr<float>()[0];
      if (name.find("pts_from_amax") != std::string::npos) {
        const float ours = nvfp4_per_tensor_scale_of(x);
        EXPECT_TRUE(ours == *pts || (std::isnan(ours) && std::isnan(*pts))) << ours << " vs " << *pts;
      }
    }
    const NVFP4Tensor n = to_nvfp4(x, pts);
    const Tensor sb = t::dataset(g, "scale_e4m3_bits", kUInt8), qb = t::dataset(g, "qdata_packed", kUInt8);
    ASSERT_EQ(n.scale.numel(), sb.numel());
    ASSERT_EQ(n.qdata.numel(), qb.numel());
    EXPECT_EQ(std::memcmp(n.scale.raw_data(), sb.raw_data(), static_cast<size_t>(sb.numel())), 0);
    EXPECT_EQ(t::count_mismatches(n.hp_scales(), t::dataset(g, "hp_scales", kFloat32)), 0);
    const Tensor hp = n.hp_scales();
    std::vector<uint8_t> ours(static_cast<size_t>(x.numel())), theirs(ours.size());
    core::unpack(fp4, bytes(n.qdata), ours.data(), x.numel());
    core::unpack(fp4, bytes(qb), theirs.data(), x.numel());
    for (int64_t b = 0; b < sb.numel(); ++b) {
      if (std::isnan(hp.data_ptr<float>()[b])) continue;  // NaN blocks: codes unspecified
      for (int64_t i = b * 16; i < (b + 1) * 16; ++i, ++codes)
        ASSERT_EQ(ours[static_cast<size_t>(i)], theirs[static_cast<size_t>(i)]) << "element " << i;
    }
    EXPECT_EQ(t::count_mismatches(n.dequantize(kFloat32), t::dataset(g, "dequant_f32", kFloat32)), 0);
    if (has_dataset(g, "dequant_orig_dtype"))
      EXPECT_EQ(t::count_mismatches(n.dequantize().to(kFloat32), t::dataset(g, "dequant_orig_dtype", kFloat32)), 0);
    H5Gclose(g);
    ++cases;
  }
  H5Fclose(f);
  EXPECT_EQ(cases, 18);
  std::printf("  nvfp4.h5: %d quantize cases, %lld fp4 codes, scales and dequantized values bit-exact\n", cases,
              static_cast<long long>(codes));
  t::expect_error([] { to_nvfp4(randn({2, 24})); }, {"to_nvfp4", "multiple of the block size 16"});
  t::expect_error([] { to_nvfp4(randn({2, 32}), 0.0f); }, {"per_tensor_scale must be positive", "got 0"});
}

// NVFP4 QAT -> convert (torchao has no CPU path for NVFP4 fake quantization: nvfp4.h5's two linear
// cases are "raised"; tested against the formulas): the fake quantizer is to_nvfp4 + dequantize
// with the tensor's own per-tensor scale; the converted linear follows torchao's dispatch order
// (gemm on block-scaled values, rounded, times pts_x * pts_w, plus bias) and matches the prepared
// model to float32 rounding; files rebuild it; inspect counts its weights.
TEST(MX, Nvfp4QatConvertFollowsTheFormulas) {
  Generator g(74);
  const Tensor x = mul(randn({8, 64}, &g), 3.0);
  qat::NVFP4FakeQuantizeConfig c;
  qat::FakeQuantizer fq(c);
  const Tensor y = fq.forward(x);
  EXPECT_EQ(t::count_mismatches(y, to_nvfp4(x, nvfp4_per_tensor_scale_of(x)).dequantize()), 0);
  qat::NVFP4FakeQuantizeConfig single(false);
  qat::FakeQuantizer fq1(single);
  EXPECT_EQ(t::count_mismatches(fq1.forward(x), to_nvfp4(x).dequantize()), 0);
  Tensor xr = x.clone().requires_grad_();
  sum(fq.forward(xr)).backward();  // straight through
  EXPECT_EQ(t::count_mismatches(xr.grad(), ones({8, 64})), 0);

  manual_seed(75);
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(64, 32), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(32, 16)});
  const auto base = qat::recipe_config("nvfp4", "int4", 32);
  qat::quantize_(model, qat::QATConfig(base, "prepare"));
  Tensor y_prepared;
  {
    NoGradGuard ng;
    y_prepared = model->forward(x);
  }
  qat::quantize_(model, qat::QATConfig(base, "convert"));
  ASSERT_EQ(model->get_submodule("0")->type_name(), "NVFP4QuantizedLinear");
  NoGradGuard ng;
  const Tensor yc = model->forward(x);
  EXPECT_LE(max_rel_to_max(yc, y_prepared), 1e-5);
  // the dispatch order by hand for the first layer
  auto* q = dynamic_cast<qat::NVFP4QuantizedLinear*>(model->get_submodule("0").get());
  const NVFP4Tensor a = to_nvfp4(x, nvfp4_per_tensor_scale_of(x));
  NVFP4Tensor w;
  w.qdata = q->weight;
  w.scale = q->weight_scale;
  w.shape = {32, 64};
  NVFP4Tensor a_unscaled = a;
  a_unscaled.per_tensor_scale.reset();
  const float p = *a.per_tensor_scale * q->weight_per_tensor_scale.data_ptr<float>()[0];
  const Tensor by_hand =
      add(mul(matmul(a_unscaled.dequantize(), transpose(w.dequantize(), 0, 1)), full({}, p)), q->bias);
  EXPECT_LE(max_rel_to_max(q->forward(x), by_hand), std::ldexp(1.0, -20));
  const std::string path = (std::filesystem::temp_directory_path() / "lowbit_nvfp4.h5").string();
  io::export_model(path, *model);
  auto back = io::load_model(path);
  EXPECT_EQ(back->to_string(), model->to_string());
  EXPECT_EQ(t::count_mismatches(back->forward(x), yc), 0);
  EXPECT_EQ(io::inspect(path).parameters, 64 * 32 + 32 + 32 * 16 + 16);
  std::filesystem::remove(path);
  t::expect_error([&] { fq.forward(randn({2, 24})); }, {"to_nvfp4", "multiple of the block size 16"});
}

// to_mx_transposed is to_mx of the transposed copy, byte for byte: every element format and
// scale mode, block sizes 32 / 16 / 48 (a strip of 64, 64 and 96 rows), ragged column tiles and
// strips, bf16 input, columns scaled from 2^-140 (subnormal blocks) to 2^100, zero and NaN blocks
// and an infinity.
TEST(MX, TransposedCastEqualsToMxOfTheTranspose) {
  int cases = 0;
  for (const auto& [rows, cols, bs] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {64, 16, 32}, {96, 40, 32}, {32, 17, 32}, {256, 33, 32}, {160, 48, 16}, {144, 21, 48}, {2, 5, 2}}) {
    manual_seed(rows * 131 + cols);
    Tensor x = randn({rows, cols});
    float* xp = x.data_ptr<float>();
    for (int64_t c = 0; c < cols; ++c) {
      const float scale = std::ldexp(1.0f, static_cast<int>(c * 240 / std::max<int64_t>(cols, 1)) - 140);
      for (int64_t r = 0; r < rows; ++r) xp[r * cols + c] *= scale;
    }
    if (rows >= 2 * bs && cols >= 4) {
      for (int64_t r = 0; r < bs; ++r) xp[r * cols + 1] = 0.0f;  // a zero block
      xp[(bs + 3) * cols + 2] = NAN;                             // a NaN block
      xp[5 * cols + 3] = INFINITY;
    }
    for (const DType dt : {kFloat32, kBFloat16}) {
      const Tensor xd = x.to(dt);
      for (const FormatId e : kElements)
        for (const E8M0Rounding mode : kModes) {
          SCOPED_TRACE(fmt::format("{}x{} block {} {} {} {}", rows, cols, bs, dtype_name(dt), element_name(e),
                                   core::to_string(mode)));
          const MXTensor a = to_mx_transposed(xd, e, bs, mode);
          const MXTensor b = to_mx(xd.t(), e, bs, mode);
          ASSERT_EQ(a.shape, b.shape);
          ASSERT_EQ(a.qdata.shape(), b.qdata.shape());
          ASSERT_EQ(a.scale.shape(), b.scale.shape());
          EXPECT_EQ(a.orig_dtype, dt);
          EXPECT_EQ(std::memcmp(a.qdata.raw_data(), b.qdata.raw_data(), static_cast<size_t>(a.qdata.nbytes())), 0);
          EXPECT_EQ(std::memcmp(a.scale.raw_data(), b.scale.raw_data(), static_cast<size_t>(a.scale.nbytes())), 0);
          ++cases;
        }
    }
  }
  std::printf("  %d transposed casts identical to to_mx of the transpose\n", cases);
}

// The MX fake quantizer's one-pass path (blocks that tile the rows) equals the two-pass cast it
// replaced -- the row cast's codes (saturating) decoded and divided by the block multipliers --
// bit for bit: every element format and scale mode, block sizes 32 / 16 / 48, rows of blocks
// scaled from 2^-140 (subnormal results) to 2^100, zero, NaN and infinite blocks, bf16 input; a
// row length that is not a multiple of the block (the two-pass path itself) as a control.
TEST(MX, FakeQuantizeEqualsTheDequantizedRowCast) {
  int cases = 0;
  for (const auto& [rows, cols, bs] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{24, 64, 32}, {17, 96, 16}, {9, 144, 48}, {5, 40, 32}}) {
    manual_seed(rows * 7 + cols);
    Tensor x = randn({rows, cols});
    float* xp = x.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r) {
      const float scale = std::ldexp(1.0f, static_cast<int>(r * 240 / rows) - 140);
      for (int64_t c = 0; c < cols; ++c) xp[r * cols + c] *= scale;
    }
    for (int64_t c = 0; c < bs; ++c) xp[1 * cols + c] = 0.0f;  // a zero block
    xp[2 * cols + 3] = NAN;                                    // a NaN block
    xp[3 * cols + 1] = -INFINITY;
    xp[4 * cols + 2] = 3.0e38f;
    for (const DType dt : {kFloat32, kBFloat16}) {
      const Tensor xd = x.to(dt), x32 = xd.to(kFloat32);
      for (const FormatId e : kElements)
        for (const E8M0Rounding mode : kModes) {
          SCOPED_TRACE(fmt::format("{}x{} block {} {} {} {}", rows, cols, bs, dtype_name(dt), element_name(e),
                                   core::to_string(mode)));
          const qat::MXFakeQuantizeConfig cfg(e, bs, mode);
          qat::FakeQuantizer fq(cfg);
          const Tensor y = cfg.fake_quantize(xd, fq).to(kFloat32);
          const core::Format& f = core::format(e);
          const Tensor ref = core::dequantize_f32(core::cast_blocked_2d(
              x32.data_ptr<float>(), rows, cols, f, core::ScaleAxis::Row, bs,
              [&f, mode](float amax) { return core::e8m0_scale(amax, f, mode).multiplier; }, core::CastOutput::Codes));
          const Tensor r = dt == kFloat32 ? ref : ref.to(kBFloat16).to(kFloat32);
          const float* yp = y.data_ptr<float>();
          const float* rp = r.data_ptr<float>();
          int64_t bad = 0, nans = 0;
          for (int64_t i = 0; i < y.numel(); ++i) {
            nans += std::isnan(rp[i]);
            bad += std::memcmp(yp + i, rp + i, 4) != 0 && !(std::isnan(yp[i]) && std::isnan(rp[i]));
          }
          EXPECT_EQ(bad, 0);
          EXPECT_GT(nans, 0);  // the NaN block stays NaN
          ++cases;
        }
    }
  }
  std::printf("  %d fake quantizations identical to the dequantized row cast\n", cases);
}

// The per-tensor scale of a tensor larger than one thread's part (the amax is reduced over the
// parts) equals the scale of the whole run's amax: the largest magnitude first, in the middle or
// last, negative, an infinity, a NaN in the last part.
TEST(NVFP4, PerTensorScaleOfALargeTensorIsTheWholeAmaxs) {
  const int64_t n = 300000;
  for (const int64_t where : {int64_t{0}, n / 2, n - 1}) {
    for (const float big :
         {-1.0e4f, 7.5f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
      manual_seed(where + 1);
      Tensor x = randn({n});
      x.data_ptr<float>()[where] = big;
      const float want = core::nvfp4_per_tensor_scale(core::amax_of_run(x.data_ptr<float>(), n));
      const float got = nvfp4_per_tensor_scale_of(x);
      EXPECT_TRUE(got == want || (std::isnan(got) && std::isnan(want)))
          << where << " " << big << ": " << got << " vs " << want;
    }
  }
}

TEST(MX, TransposedCastRefusesBadInputs) {
  t::expect_error([] { to_mx_transposed(randn({64}), FormatId::Float8E4M3FN); }, {"to_mx_transposed", "2 dims"});
  t::expect_error(
      [] {
        to_mx_transposed(randn({2, 32, 4}), FormatId::Float8E4M3FN);
      },
      {"to_mx_transposed", "must be 2-D", "[2, 32, 4]"});
  t::expect_error(
      [] {
        to_mx_transposed(randn({48, 4}), FormatId::Float8E4M3FN, 32);
      },
      {"to_mx_transposed", "first dim (48)", "multiple of block_size 32"});
  t::expect_error(
      [] {
        to_mx_transposed(randn({3, 4}), FormatId::Float4E2M1FN, 3);
      },
      {"two elements per byte", "first dim must be even", "got 3"});
  t::expect_error(
      [] {
        to_mx_transposed(randn({4, 4}).to(kFloat64), FormatId::Float8E4M3FN, 4);
      },
      {"to_mx_transposed", "float64"});
}
