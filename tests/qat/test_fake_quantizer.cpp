// FakeQuantizer and FakeQuantizedLinear against torchao's qat.h5: every fq_* case (output,
// grad_input, scale, zero_point bit for bit; the config repr letter for letter), except the
// documented asymmetric per-group divergence, which is tested as our own behaviour.
#include <gtest/gtest.h>

#include <cmath>

#include "golden.h"
#include "test_util.h"

using namespace lowbit;
using namespace lowbit::qat;
using lowbit::testing::count_mismatches;
using lowbit::testing::rel_err;

namespace {
// Builds the config a torchao repr describes (the fields qat.h5 uses), then checks the round trip.
IntxFakeQuantizeConfig config_from_repr(const std::string& r) {
  auto field = [&](const std::string& key) {
    const auto at = r.find(key + "=");
    if (at == std::string::npos) throw Error("repr lacks " + key);
    const auto begin = at + key.size() + 1;
    int depth = 0;
    size_t end = begin;
    for (; end < r.size(); ++end) {
      if (r[end] == '(' || r[end] == '<') ++depth;
      if (r[end] == ')' || r[end] == '>') {
        if (depth == 0) break;
        --depth;
      }
      if (r[end] == ',' && depth == 0) break;
    }
    return r.substr(begin, end - begin);
  };
  IntxFakeQuantizeConfig c;
  c.dtype = field("dtype").substr(6);  // "torch.int4"
  const std::string g = field("granularity");
  if (g == "PerToken()")
    c.granularity = PerToken{};
  else if (g.rfind("PerAxis", 0) == 0)
    c.granularity = PerAxis{std::stoll(g.substr(g.find('=') + 1))};
  else if (g.rfind("PerGroup", 0) == 0)
    c.granularity = PerGroup{std::stoll(g.substr(g.find('=') + 1))};
  c.mapping_type =
      field("mapping_type").find("ASYMMETRIC") != std::string::npos ? MappingType::ASYMMETRIC : MappingType::SYMMETRIC;
  c.zero_point_precision = field("zero_point_precision") == "torch.float32" ? kFloat32 : kInt32;
  const std::string eps = field("eps");
  if (eps != "None") c.eps = std::stod(eps);
  c.validate();
  return c;
}
bool is_asym_per_group(const IntxFakeQuantizeConfig& c) {
  return c.mapping_type == MappingType::ASYMMETRIC && c.granularity &&
         (std::holds_alternative<PerGroup>(*c.granularity) || std::holds_alternative<PerAxis>(*c.granularity));
}
}  // namespace

TEST(QatGolden, FakeQuantizerCases) {
  namespace t = lowbit::testing;
  LOWBIT_GOLDEN_FILE(path, "qat.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  int exact = 0, divergent = 0;
  for (const auto& name : t::golden_cases(f)) {
    hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
    if (!t::has_attr(g, "config_repr")) {
      H5Gclose(g);
      continue;
    }
    SCOPED_TRACE(name);
    const std::string repr = t::attr_string(g, "config_repr");
    const IntxFakeQuantizeConfig cfg = config_from_repr(repr);
    EXPECT_EQ(cfg.to_string(), repr);
    FakeQuantizer fq(cfg);
    EXPECT_EQ(fq.to_string(), "FakeQuantizer(" + repr + ")");
    Tensor x = t::dataset(g, "input", kFloat32).requires_grad_();
    const Tensor up = t::dataset(g, "upstream_grad", kFloat32);
    Tensor y = fq.forward(x);
    y.backward(up);
    std::string where;
    if (!is_asym_per_group(cfg)) {
      EXPECT_EQ(count_mismatches(y, t::dataset(g, "output", kFloat32), &where), 0) << "output: " << where;
      EXPECT_EQ(count_mismatches(x.grad(), t::dataset(g, "grad_input", kFloat32), &where), 0)
          << "grad_input: " << where;
      EXPECT_EQ(count_mismatches(fq.scale.flatten(), t::dataset(g, "scale", kFloat32).flatten(), &where), 0)
          << "scale: " << where;
      const Tensor gz = t::dataset(g, "zero_point", cfg.zero_point_precision);
      EXPECT_EQ(count_mismatches(fq.zero_point.flatten(), gz.flatten(), &where), 0) << "zero_point: " << where;
      ++exact;
    } else {
      // Documented divergence (qat/fake_quantizer.h): ordinary asymmetric qparams on the
      // dtype's range. Ours equals the primitives' ASYMMETRIC fake quantization, every code is
      // in range, and on random weights the error is below the symmetric quantizer's and far
      // below torchao's (which clamps part of each group away).
      const auto [qmin, qmax] = cfg.range();
      const Shape block = block_size_for(*cfg.granularity, x.shape());
      auto [s, z] = choose_qparams_affine(x.detach(), MappingType::ASYMMETRIC, block, qmin, qmax);
      EXPECT_EQ(count_mismatches(y, fake_quantize_affine(x.detach(), block, s, z, qmin, qmax), &where), 0) << where;
      if (name.find("random") != std::string::npos) {
        const Tensor torchao_out = t::dataset(g, "output", kFloat32);
        IntxFakeQuantizeConfig sym = cfg;
        sym.dtype = cfg.dtype[0] == 'u' ? cfg.dtype.substr(1) : cfg.dtype;
        sym.mapping_type = MappingType::SYMMETRIC;
        FakeQuantizer sym_fq(sym);
        const double ours = rel_err(y.detach(), x.detach()), theirs = rel_err(torchao_out, x.detach());
        const double symmetric = rel_err(sym_fq.forward(x.detach()), x.detach());
        EXPECT_LT(ours, symmetric) << "ours " << ours << " symmetric " << symmetric;
        EXPECT_LT(ours, theirs) << "ours " << ours << " torchao " << theirs;
      }
      ++divergent;
    }
    H5Gclose(g);
  }
  H5Fclose(f);
  EXPECT_GE(exact, 1);
  std::printf(
      "qat.h5: %d fake-quantizer cases bit-exact, %d asymmetric per-group cases checked as documented divergence\n",
      exact, divergent);
}

TEST(QatGolden, FakeQuantizedLinear) {
  namespace t = lowbit::testing;
  LOWBIT_GOLDEN_FILE(path, "qat.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  for (const char* name : {"fake_quantized_linear_int8pt_asym_int4g32_sym/bias_False",
                           "fake_quantized_linear_int8pt_asym_int4g32_sym/bias_True"}) {
    SCOPED_TRACE(name);
    hid_t g = H5Gopen2(f, name, H5P_DEFAULT);
    if (g < 0) continue;
    const auto act = config_from_repr(t::attr_string(g, "activation_config_repr"));
    const auto wcfg = config_from_repr(t::attr_string(g, "weight_config_repr"));
    const bool has_bias = H5Lexists(g, "bias", H5P_DEFAULT) > 0;
    FakeQuantizedLinear lin(256, 64, has_bias, &act, &wcfg);
    {
      NoGradGuard ng;
      lin.weight.copy_(t::dataset(g, "weight", kFloat32));
      if (has_bias) lin.bias.copy_(t::dataset(g, "bias", kFloat32));
    }
    Tensor x = t::dataset(g, "input", kFloat32).requires_grad_();
    Tensor y = lin.forward(x);
    y.backward(t::dataset(g, "upstream_grad", kFloat32));
    std::string where;
    EXPECT_EQ(
        count_mismatches(lin.activation_fake_quantizer->scale.flatten(), t::dataset(g, "act_scale", kFloat32), &where),
        0)
        << where;
    EXPECT_EQ(count_mismatches(lin.activation_fake_quantizer->zero_point.flatten(),
                               t::dataset(g, "act_zero_point", kInt32), &where),
              0)
        << where;
    EXPECT_EQ(count_mismatches(lin.weight_fake_quantizer->scale, t::dataset(g, "weight_scale", kFloat32), &where), 0)
        << where;
    // GEMM results: same products, different summation order -> a few ulps
    EXPECT_LT(rel_err(y.detach(), t::dataset(g, "output", kFloat32)), 1e-6);
    EXPECT_LT(rel_err(x.grad(), t::dataset(g, "grad_input", kFloat32)), 1e-6);
    EXPECT_LT(rel_err(lin.weight.grad(), t::dataset(g, "grad_weight", kFloat32)), 1e-6);
    if (has_bias) EXPECT_LT(rel_err(lin.bias.grad(), t::dataset(g, "grad_bias", kFloat32)), 1e-6);
    H5Gclose(g);
  }
  H5Fclose(f);
}

TEST(FakeQuantizer, ConfigConstructionAndErrors) {
  auto c = IntxFakeQuantizeConfig::from_string_granularity("int4", "per_group", 32);
  EXPECT_EQ(to_string(*c.granularity), "PerGroup(group_size=32)");
  EXPECT_EQ(IntxFakeQuantizeConfig("int4", std::nullopt, 64, false).mapping_type, MappingType::ASYMMETRIC);
  EXPECT_EQ(to_string(*IntxFakeQuantizeConfig::from_string_granularity("int8", "per_channel").granularity),
            "PerAxis(axis=0)");
  lowbit::testing::expect_error([] { IntxFakeQuantizeConfig("int4", PerToken{}, 32); },
                                {"either granularity or group_size"});
  lowbit::testing::expect_error(
      [] { IntxFakeQuantizeConfig("int4", PerToken{}, std::nullopt, true, MappingType::SYMMETRIC); },
      {"either mapping_type or is_symmetric"});
  lowbit::testing::expect_error([] { IntxFakeQuantizeConfig("int9", PerToken{}); }, {"int9"});
  lowbit::testing::expect_error([] { IntxFakeQuantizeConfig::from_string_granularity("int4", "per_block"); },
                                {"unknown granularity 'per_block'"});
  lowbit::testing::expect_error([] { IntxFakeQuantizeConfig::from_string_granularity("int4", "per_group"); },
                                {"needs group_size"});
  auto w = IntxFakeQuantizeConfig("int4", PerGroup{32});
  {  // in_features 48, groups of 32: each row ends in a ragged group of 16
    FakeQuantizedLinear ragged(48, 8, true, nullptr, &w);
    EXPECT_EQ(ragged.forward(ones({2, 48})).shape(), (Shape{2, 8}));
    EXPECT_EQ(ragged.weight_fake_quantizer->scale.shape(), (Shape{8, 2}));
  }
  FakeQuantizer q(w);
  lowbit::testing::expect_error([&] { q.forward(ones({2, 3, 64})); }, {"PerGroup(group_size=32)", "2-D", "[2, 3, 64]"});
}

TEST(FakeQuantizer, ModulesSwapAndPrint) {
  nn::Linear base(64, 8);
  auto act = IntxFakeQuantizeConfig::from_string_granularity("int8", "per_token", std::nullopt, false);
  auto w = IntxFakeQuantizeConfig("int4", PerGroup{32});
  auto fql = FakeQuantizedLinear::from_linear(base, &act, &w);
  EXPECT_TRUE(fql->weight.is_alias_of(base.weight));  // parameters shared, not copied
  const std::string s = fql->to_string();
  EXPECT_NE(s.find("FakeQuantizedLinear(\n  in_features=64, out_features=8, bias=True\n  (activation_fake_quantizer): "
                   "FakeQuantizer(IntxFakeQuantizeConfig(dtype=torch.int8, granularity=PerToken()"),
            std::string::npos)
      << s;
  EXPECT_NE(s.find("(weight_fake_quantizer): FakeQuantizer(IntxFakeQuantizeConfig(dtype=torch.int4, "
                   "granularity=PerGroup(group_size=32)"),
            std::string::npos);
  Tensor x = randn({5, 64});
  fql->enable_fake_quant(false);
  EXPECT_EQ(std::memcmp(fql->forward(x).raw_data(), base.forward(x).raw_data(), 5 * 8 * 4), 0);
  fql->enable_fake_quant(true);
  EXPECT_NE(std::memcmp(fql->forward(x).raw_data(), base.forward(x).raw_data(), 5 * 8 * 4), 0);
  EXPECT_TRUE(fql->to_linear()->weight.is_alias_of(base.weight));
  nn::Embedding e(10, 32);
  auto fqe = FakeQuantizedEmbedding::from_embedding(e, w);
  Tensor out = fqe->forward(from_vector<int64_t>({1, 2}));
  EXPECT_EQ(out.shape(), (Shape{2, 32}));
}

// Range learning: the fused learnable fake quantizer against the same function composed from
// differentiable engine ops (reciprocal, straight-through round, clamp), gradients to x, scale
// and zero point included.
TEST(FakeQuantizer, LearnableFakeQuantizeMatchesComposedOps) {
  manual_seed(4);
  const int64_t rows = 5, k = 24;
  Tensor xv = mul(randn({rows, k}), 2.0);
  Tensor sv = from_vector<float>({0.11f, 0.23f, 0.05f, 0.4f, 0.17f}, {rows, 1});
  Tensor zv = from_vector<float>({0.0f, -3.0f, 2.5f, 7.0f, -0.4f}, {rows, 1});
  const Tensor g = randn({rows, k});
  // fused
  Tensor x1 = xv.clone().requires_grad_(), s1 = sv.clone().requires_grad_(), z1 = zv.clone().requires_grad_();
  Tensor y1 = fake_quantize_affine_learnable(x1, {1, k}, s1, z1, -8, 7);
  y1.backward(g);
  // composed: inv = 1/s; u = x*inv; r = u + (round(u) - u).detach(); c = clamp(r + z); y = (c - z) * s
  Tensor x2 = xv.clone().requires_grad_(), s2 = sv.clone().requires_grad_(), z2 = zv.clone().requires_grad_();
  Tensor u = mul(x2, div(ones({rows, 1}), s2));
  Tensor r = add(u, sub(round(u), u).detach());
  Tensor y2 = mul(sub(clamp(add(r, z2), -8.0, 7.0), z2), s2);
  y2.backward(g);
  EXPECT_LT(lowbit::testing::rel_err(y1.detach(), y2.detach()), 1e-6);
  EXPECT_LT(lowbit::testing::rel_err(x1.grad(), x2.grad()), 1e-6);
  EXPECT_LT(lowbit::testing::rel_err(s1.grad(), s2.grad()), 1e-5);
  EXPECT_LT(lowbit::testing::rel_err(z1.grad(), z2.grad()), 1e-5);
  // the clamp is active somewhere, so the zero-point gradient is not trivially zero
  EXPECT_GT(max(abs(z1.grad())).item<float>(), 0.0f);
  lowbit::testing::expect_error(
      [&] {
        fake_quantize_affine_learnable(xv, {1, k}, sv, zeros({rows, 1}, kInt32), -8, 7);
      },
      {"fake_quantize_affine_learnable", "zero_point must be float32"});
}

TEST(FakeQuantizer, RangeLearningInitializeThenTrain) {
  IntxFakeQuantizeConfig wcfg("int4", PerGroup{16});
  wcfg.is_dynamic = false;
  wcfg.range_learning = true;
  EXPECT_NE(wcfg.to_string().find("is_dynamic=False, range_learning=True"), std::string::npos);
  IntxFakeQuantizeConfig acfg("int8", PerToken{}, std::nullopt, false);
  acfg.is_dynamic = false;
  acfg.range_learning = true;
  IntxFakeQuantizeConfig bad = wcfg;
  bad.is_dynamic = true;
  lowbit::testing::expect_error([&] { bad.validate(); }, {"range_learning requires is_dynamic=False"});

  manual_seed(0);
  auto model =
      std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(32, 8)});
  model = std::dynamic_pointer_cast<nn::Sequential>(quantize_(model, QATConfig(acfg, wcfg, "prepare")));
  const Tensor x = randn({64, 32}), target = randn({64, 8});
  lowbit::testing::expect_error([&] { model->forward(x); }, {"range_learning=True needs initialize_fake_quantizers"});
  initialize_fake_quantizers(*model, x);
  auto* fql = dynamic_cast<FakeQuantizedLinear*>(model->get_submodule("0").get());
  ASSERT_NE(fql, nullptr);
  EXPECT_TRUE(fql->weight_fake_quantizer->range_initialized());
  std::vector<std::string> names;
  for (auto& [n, p] : model->named_parameters()) names.push_back(n);
  const std::vector<std::string> expect = {"0.weight", "0.bias", "0.activation_fake_quantizer.zero_point",
                                           "0.activation_fake_quantizer.scale", "0.weight_fake_quantizer.scale"};
  for (const auto& e : expect) EXPECT_NE(std::find(names.begin(), names.end(), e), names.end()) << e;
  EXPECT_EQ(fql->weight_fake_quantizer->scale.shape(), (Shape{8, 2}));
  EXPECT_EQ(fql->activation_fake_quantizer->scale.shape(), (Shape{64, 1}));
  const Tensor s0 = fql->weight_fake_quantizer->scale.detach().clone();
  optim::AdamOptions ao;
  ao.lr = 1e-2;
  optim::Adam opt(model->parameters(), ao);
  float first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    opt.zero_grad();
    Tensor loss = mse_loss(model->forward(x), target);
    loss.backward();
    ASSERT_TRUE(fql->weight_fake_quantizer->scale.grad().defined());
    ASSERT_TRUE(fql->activation_fake_quantizer->zero_point.grad().defined());
    opt.step();
    (step == 0 ? first : last) = loss.item<float>();
  }
  EXPECT_LT(last, first);
  EXPECT_GT(lowbit::testing::rel_err(fql->weight_fake_quantizer->scale.detach(), s0), 1e-4);  // the scales learned
}
