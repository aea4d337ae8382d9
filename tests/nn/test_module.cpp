#include <gtest/gtest.h>

#include <cmath>

#include <lowbit/lowbit.h>

using namespace lowbit;
using namespace lowbit::nn;

namespace {
std::vector<std::string> names(const NamedTensors& nt) {
  std::vector<std::string> out;
  for (auto& [n, _] : nt) out.push_back(n);
  return out;
}
std::shared_ptr<Sequential> mlp() {
  return std::make_shared<Sequential>(std::vector<std::shared_ptr<Module>>{
      std::make_shared<Linear>(4, 3), std::make_shared<ReLU>(), std::make_shared<Linear>(3, 2, false)});
}
bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }
}  // namespace

TEST(Module, DottedNamesLikePyTorch) {
  auto m = mlp();
  EXPECT_EQ(names(m->named_parameters()), (std::vector<std::string>{"0.weight", "0.bias", "2.weight"}));
  GPTConfig c;
  c.vocab_size = 11;
  c.context = 8;
  c.d_model = 16;
  c.n_heads = 2;
  c.n_layers = 2;
  auto gpt = std::make_shared<GPT>(c);
  const auto sd = names(gpt->state_dict());
  EXPECT_NE(std::find(sd.begin(), sd.end(), "blocks.0.attn.qkv.weight"), sd.end());
  EXPECT_NE(std::find(sd.begin(), sd.end(), "blocks.1.mlp.2.bias"), sd.end());
  EXPECT_NE(std::find(sd.begin(), sd.end(), "lm_head.weight"), sd.end());  // tied: listed in state_dict
  const auto params = names(gpt->named_parameters());
  EXPECT_EQ(std::find(params.begin(), params.end(), "lm_head.weight"), params.end());  // but a parameter only once
  auto mods = gpt->named_modules();
  EXPECT_EQ(mods[0].first, "");
  bool found = false;
  for (auto& [n, mod] : mods) found |= n == "blocks.1.attn" && mod->type_name() == "CausalSelfAttention";
  EXPECT_TRUE(found);
}

TEST(Module, PrintsLikePyTorch) {
  auto m = mlp();
  EXPECT_EQ(m->to_string(),
            "Sequential(\n"
            "  (0): Linear(in_features=4, out_features=3, bias=True)\n"
            "  (1): ReLU()\n"
            "  (2): Linear(in_features=3, out_features=2, bias=False)\n"
            ")");
  auto outer = std::make_shared<Sequential>(
      std::vector<std::shared_ptr<Module>>{m, std::make_shared<LayerNorm>(2), std::make_shared<Dropout>(0.1)});
  EXPECT_EQ(outer->to_string(),
            "Sequential(\n"
            "  (0): Sequential(\n"
            "    (0): Linear(in_features=4, out_features=3, bias=True)\n"
            "    (1): ReLU()\n"
            "    (2): Linear(in_features=3, out_features=2, bias=False)\n"
            "  )\n"
            "  (1): LayerNorm((2,), eps=1e-05, elementwise_affine=True)\n"
            "  (2): Dropout(p=0.1, inplace=False)\n"
            ")");
  EXPECT_EQ(Embedding(10, 3).to_string(), "Embedding(10, 3)");
  EXPECT_EQ(GELU("tanh").to_string(), "GELU(approximate='tanh')");
}

TEST(Module, StateDictRoundTripAndStrictErrors) {
  auto a = mlp(), b = mlp();
  b->load_state_dict(a->state_dict());
  EXPECT_EQ(std::memcmp(a->state_dict()[0].second.raw_data(), b->state_dict()[0].second.raw_data(), 4 * 12), 0);
  auto sd = a->state_dict();
  sd.erase(sd.begin() + 1);                // drop 0.bias
  sd.emplace_back("3.weight", ones({1}));  // unexpected
  sd[0].second = ones({5, 4});             // shape mismatch for 0.weight
  try {
    b->load_state_dict(sd);
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(contains(msg, "Missing key(s) in state_dict: \"0.bias\"")) << msg;
    EXPECT_TRUE(contains(msg, "Unexpected key(s) in state_dict: \"3.weight\"")) << msg;
    EXPECT_TRUE(contains(msg, "size mismatch for 0.weight: copying a param with shape [5, 4]")) << msg;
    EXPECT_TRUE(contains(msg, "the shape in current model is [3, 4]")) << msg;
  }
  // strict failure copies nothing; non-strict loads what matches and reports the rest
  auto before = b->state_dict()[2].second.clone();
  auto r = b->load_state_dict(sd, /*strict=*/false);
  EXPECT_EQ(r.missing_keys, std::vector<std::string>{"0.bias"});
  EXPECT_EQ(r.unexpected_keys, std::vector<std::string>{"3.weight"});
  EXPECT_EQ(r.shape_mismatches.size(), 1u);
  EXPECT_EQ(b->state_dict()[2].second.data_ptr<float>()[0], a->state_dict()[2].second.data_ptr<float>()[0]);
  (void)before;
}

TEST(Module, ReplaceModuleByDottedName) {
  auto outer = std::make_shared<Sequential>(std::vector<std::shared_ptr<Module>>{mlp(), std::make_shared<ReLU>()});
  outer->replace_module("0.2", std::make_shared<Linear>(3, 7));
  EXPECT_EQ(outer->get_submodule("0.2")->to_string(), "Linear(in_features=3, out_features=7, bias=True)");
  EXPECT_EQ(outer->forward(ones({1, 4})).shape(), (Shape{1, 7}));
  try {
    outer->get_submodule("0.9");
    FAIL();
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "no submodule '9'")) << e.what();
  }
  EXPECT_THROW(outer->replace_module("5", std::make_shared<ReLU>()), Error);
}

TEST(Module, TrainEvalZeroGradToApply) {
  auto m = std::make_shared<Sequential>(
      std::vector<std::shared_ptr<Module>>{std::make_shared<Linear>(4, 4), std::make_shared<Dropout>(0.5)});
  m->eval();
  for (auto& c : m->children()) EXPECT_FALSE(c->is_training());
  Tensor x = ones({2, 4});
  EXPECT_EQ(std::memcmp(m->forward(x).raw_data(), m->forward(x).raw_data(), 32), 0);  // dropout off
  m->train();
  sum(m->forward(x)).backward();
  EXPECT_TRUE(m->parameters()[0].grad().defined());
  m->zero_grad();
  EXPECT_FALSE(m->parameters()[0].grad().defined());
  Tensor w = m->parameters()[0];
  m->to(kBFloat16);
  EXPECT_EQ(w.dtype(), kBFloat16);  // handles stay valid
  int count = 0;
  m->apply([&](Module&) { ++count; });
  EXPECT_EQ(count, 3);
}

TEST(Module, DefaultInitializationsMatchPyTorch) {
  Generator g(1);
  Linear l(100, 50, true, &g);
  const double bound = 1.0 / std::sqrt(100.0);
  EXPECT_LE(amax(abs(l.weight)).item<float>(), bound);
  EXPECT_GT(amax(abs(l.weight)).item<float>(), 0.9 * bound);
  EXPECT_LE(amax(abs(l.bias)).item<float>(), bound);
  Embedding e(1000, 64, &g);
  EXPECT_NEAR(var(e.weight).item<float>(), 1.0, 0.05);
  LayerNorm ln(8);
  EXPECT_EQ(sum(ln.weight).item<float>(), 8.0f);
  EXPECT_EQ(sum(ln.bias).item<float>(), 0.0f);
}

TEST(Module, TransformerShapesAndGeneration) {
  GPTConfig c;
  c.vocab_size = 13;
  c.context = 6;
  c.d_model = 16;
  c.n_heads = 4;
  c.n_layers = 1;
  GPT gpt(c);
  Tensor idx = randint(0, 13, {2, 5});
  EXPECT_EQ(gpt.forward(idx).shape(), (Shape{2, 5, 13}));
  Generator g(4);
  Tensor out = gpt.generate(idx, 4, 1.0, 3, &g);
  EXPECT_EQ(out.shape(), (Shape{2, 9}));
  for (int64_t i = 0; i < out.numel(); ++i) EXPECT_LT(out.data_ptr<int64_t>()[i], 13);
  Generator g2(4);
  EXPECT_EQ(std::memcmp(gpt.generate(idx, 4, 1.0, 3, &g2).raw_data(), out.raw_data(), out.nbytes()), 0);
  try {
    gpt.forward(randint(0, 13, {1, 7}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "sequence length 7 exceeds the context size 6"));
  }
  // causality: changing a later token leaves earlier logits unchanged
  Tensor a = from_vector<int64_t>({1, 2, 3, 4}, {1, 4}), b = from_vector<int64_t>({1, 2, 3, 9}, {1, 4});
  Tensor la = gpt.forward(a), lb = gpt.forward(b);
  EXPECT_EQ(std::memcmp(la.raw_data(), lb.raw_data(), 3 * 13 * 4), 0);
}

TEST(Module, ContainerErrors) {
  ModuleList l;
  EXPECT_THROW(l[0], Error);
  ModuleDict d;
  d.insert("enc", std::make_shared<ReLU>());
  EXPECT_TRUE(d.contains("enc"));
  EXPECT_THROW(d["dec"], Error);
  EXPECT_THROW(d.insert("enc", std::make_shared<ReLU>()), Error);
  EXPECT_THROW(Linear(0, 3), Error);
  try {
    Linear(4, 3).forward(ones({2, 5}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "input [2, 5] and weight [3, 4]"));
  }
}
