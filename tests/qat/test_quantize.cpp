// QATConfig prepare/convert and quantize_ against torchao's 8da4w cases in qat.h5, and the API.
#include <gtest/gtest.h>

#include <cmath>

#include "golden.h"
#include "test_util.h"

using namespace lowbit;
using namespace lowbit::qat;
using lowbit::testing::count_mismatches;
using lowbit::testing::rel_err;

namespace {
std::shared_ptr<nn::Sequential> one_linear(const Tensor& w) {
  auto lin = std::make_shared<nn::Linear>(w.size(1), w.size(0), false);
  NoGradGuard ng;
  lin->weight.copy_(w);
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{lin});
}
}  // namespace

TEST(QatGolden, EightDaFourW) {
  namespace t = lowbit::testing;
  LOWBIT_GOLDEN_FILE(path, "qat.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  struct Case {
    const char* name;
    bool legacy;
  };
  for (Case c : {Case{"qat_8da4w_qatconfig/Int8DynamicActivationIntxWeightConfig_int4_g32", false},
                 Case{"qat_8da4w_legacy_quantizer/g32", true}}) {
    SCOPED_TRACE(c.name);
    hid_t g = H5Gopen2(f, c.name, H5P_DEFAULT);
    ASSERT_GE(g, 0);
    const Tensor w = t::dataset(g, "weight", kFloat32), x = t::dataset(g, "input", kFloat32),
                 up = t::dataset(g, "upstream_grad", kFloat32);
    auto model = one_linear(w);
    std::shared_ptr<QuantConfigBase> base;
    QATConfig prepare;
    if (!c.legacy) {
      auto b = std::make_shared<Int8DynamicActivationIntxWeightConfig>();
      b->weight_dtype = "int4";
      b->weight_granularity = PerGroup{32};
      base = b;
      prepare = QATConfig(base, "prepare");
    } else {
      // Int8DynActInt4WeightQATQuantizer(groupsize=32): activation eps = float32 eps, float32 zero points
      IntxFakeQuantizeConfig act("int8", PerToken{}, std::nullopt, false);
      act.eps = 1.1920928955078125e-07;
      act.zero_point_precision = kFloat32;
      prepare = QATConfig(act, IntxFakeQuantizeConfig("int4", PerGroup{32}), "prepare");
    }
    auto prepared = quantize_(model, prepare);
    ASSERT_NE(dynamic_cast<FakeQuantizedLinear*>(prepared->get_submodule("0").get()), nullptr);
    auto w_param = prepared->parameters()[0];
    Tensor xin = x.clone().requires_grad_();
    Tensor y_prepared = prepared->forward(xin);
    y_prepared.backward(up);
    // GEMMs sum in another order than PyTorch's: a few ulps
    EXPECT_LT(rel_err(y_prepared.detach(), t::dataset(g, "output_prepared_fakequant", kFloat32)), 1e-6);
    EXPECT_LT(rel_err(xin.grad(), t::dataset(g, "grad_input_prepared", kFloat32)), 1e-6);
    EXPECT_LT(rel_err(w_param.grad(), t::dataset(g, "grad_weight_prepared", kFloat32)), 1e-6);

    std::shared_ptr<nn::Module> converted;
    if (!c.legacy) {
      converted = quantize_(prepared, QATConfig(base, "convert"));
    } else {
      // legacy convert = the same PTQ with the prepared configs
      auto* fql = dynamic_cast<FakeQuantizedLinear*>(prepared->get_submodule("0").get());
      auto act = dynamic_cast<const IntxFakeQuantizeConfig&>(fql->activation_fake_quantizer->config());
      auto wc = dynamic_cast<const IntxFakeQuantizeConfig&>(fql->weight_fake_quantizer->config());
      prepared->replace_module("0", QuantizedLinear::from_linear(*fql->to_linear(), act, wc));
      converted = prepared;
    }
    auto* ql = dynamic_cast<QuantizedLinear*>(converted->get_submodule("0").get());
    ASSERT_NE(ql, nullptr);
    std::string where;
    EXPECT_EQ(count_mismatches(ql->weight_codes(),
                               t::dataset(g, c.legacy ? "converted_weight" : "converted_weight_qdata", kInt8), &where),
              0)
        << where;
    EXPECT_EQ(count_mismatches(
                  ql->scale, t::dataset(g, c.legacy ? "converted_scales" : "converted_weight_scale", kFloat32), &where),
              0)
        << where;
    EXPECT_EQ(ql->qdata.nbytes(), 64u * 128u);  // int4 packed two per byte
    NoGradGuard ng;
    ql->kernel = QuantizedLinear::Kernel::Dequantize;
    const Tensor y_converted = converted->forward(x);
    // the property torchao asserts: converted == prepared, bit for bit (the exact path)
    EXPECT_EQ(count_mismatches(y_converted, y_prepared.detach(), &where), 0) << where;
    EXPECT_LT(rel_err(y_converted, t::dataset(g, "output_converted", kFloat32)), 1e-6);
    // the integer kernels (default): the same values up to float32 rounding
    ql->kernel = QuantizedLinear::Kernel::Integer;
    EXPECT_LT(rel_err(converted->forward(x), t::dataset(g, "output_converted", kFloat32)), 1e-5);
    H5Gclose(g);
  }
  H5Fclose(f);
}

TEST(Quantize, PerModuleConfigsAndFilters) {
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(64, 64), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(64, 64),
      std::make_shared<nn::Linear>(64, 10)});
  ModuleFqnToConfig cfg;
  auto w4 = std::make_shared<IntxWeightOnlyConfig>();
  w4->weight_dtype = "int4";
  auto dyn = std::make_shared<Int8DynamicActivationIntxWeightConfig>();
  cfg.entries = {{"3", std::make_shared<Int8WeightOnlyConfig>()}, {"re:[02]", w4}, {"_default", dyn}};
  auto q = quantize_(model, cfg);
  auto* l0 = dynamic_cast<QuantizedLinear*>(q->get_submodule("0").get());
  auto* l3 = dynamic_cast<QuantizedLinear*>(q->get_submodule("3").get());
  ASSERT_TRUE(l0 && l3);
  EXPECT_EQ(l0->weight_dtype, "int4");
  EXPECT_FALSE(l0->activation_config.has_value());
  EXPECT_EQ(l3->weight_dtype, "int8");
  EXPECT_EQ(l3->block_size, (Shape{1, 64}));
  // a filter that skips the last layer
  auto m2 = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(32, 32), std::make_shared<nn::Linear>(32, 4)});
  auto q2 = quantize_(m2, QATConfig(dyn, "prepare"), [](const nn::Module& m, const std::string& fqn) {
    return fqn != "1" && dynamic_cast<const nn::Linear*>(&m) != nullptr;
  });
  EXPECT_NE(dynamic_cast<FakeQuantizedLinear*>(q2->get_submodule("0").get()), nullptr);
  EXPECT_EQ(q2->get_submodule("1")->type_name(), "Linear");
  // PTQ of a float model equals QAT-convert without training, and the printed tree names it
  auto m3 =
      std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(32, 8)});
  Tensor x = randn({3, 32});
  auto ptq = quantize_(m3, *dyn);
  EXPECT_NE(ptq->to_string().find("QuantizedLinear(in_features=32, out_features=8, bias=True, weight_dtype=int8"),
            std::string::npos);
  EXPECT_EQ(ptq->forward(x).shape(), (Shape{3, 8}));
}

TEST(Quantize, ConfigErrors) {
  auto dyn = std::make_shared<Int8DynamicActivationIntxWeightConfig>();
  lowbit::testing::expect_error([&] { QATConfig(dyn, "calibrate"); },
                                {"step must be 'prepare' or 'convert'", "calibrate"});
  lowbit::testing::expect_error([] { QATConfig(std::nullopt, std::nullopt, "prepare"); }, {"prepare step needs"});
  lowbit::testing::expect_error(
      [] { QATConfig(std::nullopt, IntxFakeQuantizeConfig("int4", PerGroup{32}), "convert"); },
      {"convert step takes only a base config"});
  auto model =
      std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(31, 8)});
  struct Unknown : QuantConfigBase {
    std::string to_string() const override { return "Unknown()"; }
  };
  lowbit::testing::expect_error([&] { quantize_(model, Unknown()); }, {"Unknown()", "no fake-quantize configs"});
  ModuleFqnToConfig bad_regex;
  bad_regex.entries = {{"re:[", dyn}};
  lowbit::testing::expect_error([&] { quantize_(model, bad_regex); }, {"'re:['", "not a valid regular expression"});
}

// in_features 31 with groups of 32: one ragged group per row; int4 codes packed row by row
// (16 bytes per row, the last high nibble 0); the converted module equals the prepared one
TEST(Quantize, RaggedGroupsConvertExactly) {
  auto dyn = std::make_shared<Int8DynamicActivationIntxWeightConfig>();
  dyn->weight_dtype = "int4";
  Generator g(5);
  auto lin = std::make_shared<nn::Linear>(randn({8, 31}, &g), randn({8}, &g));
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{lin});
  auto prepared = quantize_(model, QATConfig(dyn, "prepare"));
  const Tensor x = randn({3, 31}, &g);
  const Tensor y_prepared = prepared->forward(x).detach();
  auto converted = quantize_(prepared, QATConfig(dyn, "convert"));
  auto* ql = dynamic_cast<QuantizedLinear*>(converted->get_submodule("0").get());
  ASSERT_NE(ql, nullptr);
  EXPECT_EQ(ql->qdata.shape(), (Shape{8, 16}));
  EXPECT_EQ(ql->scale.shape(), (Shape{8, 1}));
  for (int64_t r = 0; r < 8; ++r) EXPECT_EQ(ql->qdata.data_ptr<uint8_t>()[r * 16 + 15] >> 4, 0) << r;
  NoGradGuard ng;
  EXPECT_EQ(ql->kernel_for(3), "dequantize + float32 GEMM");
  std::string where;
  EXPECT_EQ(lowbit::testing::count_mismatches(converted->forward(x), y_prepared, &where), 0) << where;
}

TEST(Quantize, EveryRecipeOfTheTable) {
  // each row: builds its config, prepares a model for QAT, converts it, and the converted model
  // follows the prepared one; what a row says it takes is what recipe_config accepts
  ASSERT_GE(list_recipes().size(), 6u);
  Generator g(3);
  const Tensor x = randn({4, 64}, &g);
  for (const auto& r : list_recipes()) {
    SCOPED_TRACE(r.name);
    EXPECT_EQ(find_recipe(r.name), &r);
    const auto cfg = recipe_config(r.name, "int4", 32);
    auto model = std::make_shared<nn::Sequential>(
        std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(64, 16)});
    auto prepared = quantize_(model, QATConfig(cfg, "prepare"), compatible_linears(*cfg));
    Tensor y_prepared, y_converted;
    {
      NoGradGuard ng;
      y_prepared = prepared->forward(x);
    }
    auto converted = quantize_(prepared, QATConfig(cfg, "convert"));
    {
      NoGradGuard ng;
      y_converted = converted->forward(x);
    }
    EXPECT_LT(rel_err(y_converted, y_prepared), 1e-5);
    const char* want = r.name.rfind("float8", 0) == 0 ? "Float8QuantizedLinear"
                       : r.name.rfind("mx", 0) == 0   ? "MXQuantizedLinear"
                       : r.name == "nvfp4"            ? "NVFP4QuantizedLinear"
                                                      : "QuantizedLinear";
    EXPECT_EQ(converted->named_modules().back().second->type_name(), want);
    // group_size 0 (per-channel) only where the row allows it
    if (r.per_channel_ok)
      EXPECT_NO_THROW(recipe_config(r.name, "int4", 0));
    else
      EXPECT_THROW(recipe_config(r.name, "int4", 0), Error);
    // weight_dtype is checked against the format table only where it is used
    if (r.takes_weight_dtype)
      EXPECT_THROW(recipe_config(r.name, "int9", 32), Error);
    else
      EXPECT_NO_THROW(recipe_config(r.name, "int9", 32));
  }
  lowbit::testing::expect_error([] { recipe_config("8da5w", "int4", 32); },
                                {"unknown quantization recipe '8da5w'", recipe_names()});
}

TEST(Quantize, PrepareAndConvertDrawNoRandomNumbers) {
  // module swaps share the trained parameters: building the new modules must not advance the
  // global generator (it used to, once per swapped layer), so a run's later random numbers do
  // not depend on whether it was quantized
  manual_seed(5);
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(64, 32), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(32, 8)});
  const Tensor w0 = model->state_dict()[0].second;
  const uint64_t before = default_generator().offset();
  const auto cfg = recipe_config("8da4w", "int4", 32);
  auto prepared = quantize_(model, QATConfig(cfg, "prepare"), compatible_linears(*cfg));
  EXPECT_EQ(default_generator().offset(), before);
  EXPECT_EQ(prepared->state_dict()[0].second.impl(), w0.impl());  // the same parameter, not a copy
  auto converted = quantize_(prepared, QATConfig(cfg, "convert"));
  EXPECT_EQ(default_generator().offset(), before);
  auto emb = std::make_shared<nn::Embedding>(10, 4);
  const uint64_t before_emb = default_generator().offset();
  auto fq = FakeQuantizedEmbedding::from_embedding(*emb, IntxFakeQuantizeConfig("int4", PerGroup{4}));
  auto back = fq->to_embedding();
  EXPECT_EQ(default_generator().offset(), before_emb);
  EXPECT_EQ(back->weight.impl(), emb->weight.impl());
}

// The float8 inference recipes: a converted model stores float8 codes + float32 scales (a
// quarter of the float32 bytes), follows the QAT-prepared model (weight-only: bit for bit),
// exports, and load_model rebuilds it from the file to the same bits; its attributes are checked.
TEST(Quantize, Float8InferenceModelsConvertExportAndRebuild) {
  Generator g(5);
  const Tensor x = randn({6, 64}, &g);
  for (const char* name : {"float8-dyn", "float8-dyn-row", "float8-weight-only"}) {
    SCOPED_TRACE(name);
    manual_seed(7);
    auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(64, 32), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(32, 16)});
    const auto cfg = recipe_config(name, "int4", 32);
    auto prepared = quantize_(model, QATConfig(cfg, "prepare"), compatible_linears(*cfg));
    EXPECT_EQ(prepared->get_submodule("0")->type_name(), "FakeQuantizedLinear");
    Tensor y_prep;
    {
      NoGradGuard ng;
      y_prep = prepared->forward(x);
    }
    auto conv = quantize_(prepared, QATConfig(cfg, "convert"));
    auto* f8 = dynamic_cast<Float8QuantizedLinear*>(conv->get_submodule("0").get());
    ASSERT_NE(f8, nullptr);
    EXPECT_EQ(f8->weight.dtype(), kFloat8_e4m3fn);
    EXPECT_EQ(f8->weight.nbytes() * 4, static_cast<size_t>(64 * 32 * 4));
    NoGradGuard ng;
    const Tensor y = conv->forward(x);
    if (std::string(name) == "float8-weight-only")
      EXPECT_EQ(lowbit::testing::count_mismatches(y, y_prep), 0);
    else
      EXPECT_LT(rel_err(y, y_prep), 1e-5);
    const std::string path = (std::filesystem::temp_directory_path() / "lowbit_f8_infer.h5").string();
    io::export_model(path, *conv);
    auto back = io::load_model(path);
    EXPECT_EQ(back->to_string(), conv->to_string());
    EXPECT_EQ(lowbit::testing::count_mismatches(back->forward(x), y), 0);
    std::filesystem::remove(path);
  }
  nn::NamedTensors t = {{"weight", randn({4, 8}).to(kFloat8_e4m3fn)}, {"weight_scale", ones({4, 1})}};
  nn::Attributes a = {{"quant_scheme", std::string("float8")},
                      {"weight_dtype", std::string("float8_e4m3fn")},
                      {"weight_granularity", std::string("PerRow")},
                      {"shape", std::vector<int64_t>{4, 8}},
                      {"activation", std::string("none")}};
  EXPECT_NO_THROW(Float8QuantizedLinear::from_attributes(a, t));
  auto bad = a;
  bad["weight_granularity"] = std::string("PerGroup");
  lowbit::testing::expect_error([&] { Float8QuantizedLinear::from_attributes(bad, t); },
                                {"Float8QuantizedLinear", "'PerGroup'"});
  bad = a;
  bad["shape"] = std::vector<int64_t>{4, 9};
  lowbit::testing::expect_error([&] { Float8QuantizedLinear::from_attributes(bad, t); },
                                {"Float8QuantizedLinear", "does not match the stated shape"});
  t[1].second = ones({1, 1});
  lowbit::testing::expect_error([&] { Float8QuantizedLinear::from_attributes(a, t); },
                                {"weight_scale must be float32 of shape [4, 1]"});
}
