#include <gtest/gtest.h>
#include <hdf5.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "lowbit/cli/config.h"
#include "lowbit/cli/train.h"
#include "lowbit/io/checkpoint.h"
#include "lowbit/qat/recipes.h"
#include <lowbit/lowbit.h>

#include "test_util.h"

using namespace lowbit;
using lowbit::testing::expect_error;
using namespace lowbit::cli;

namespace {
std::string tmpdir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("lowbit_cli_" + name);
  std::filesystem::remove_all(p);
  return p.string();
}
// A directory holding corpus.txt: `line` repeated n times (the character GPT's tiny corpus).
std::string corpus_in(const std::string& name, const std::string& line, int n) {
  const std::string dir = tmpdir(name);
  std::filesystem::create_directories(dir);
  std::ofstream f(dir + "/corpus.txt");
  for (int i = 0; i < n; ++i) f << line << "\n";
  return dir;
}
}  // namespace

TEST(RunConfig, ParsesOverridesAndRoundTrips) {
  auto cfg = RunConfig::from_string("[optimizer]\nlr = 0.01\n[model]\nhidden = [8, 4]\n[data]\nshuffle = false\n");
  EXPECT_EQ(cfg.get_float("optimizer.lr"), 0.01);
  EXPECT_EQ(cfg.get_int_list("model.hidden"), (std::vector<int64_t>{8, 4}));
  EXPECT_FALSE(cfg.get_bool("data.shuffle"));
  EXPECT_EQ(cfg.get_int("data.batch_size"), 256);  // default
  cfg.apply_overrides({"--optimizer.lr", "3e-4", "--training.epochs=2", "--model.hidden", "[16,16,16]"});
  EXPECT_EQ(cfg.get_float("optimizer.lr"), 3e-4);
  EXPECT_EQ(cfg.get_int("training.epochs"), 2);
  EXPECT_EQ(cfg.get_int_list("model.hidden").size(), 3u);
  auto again = RunConfig::from_string(cfg.to_toml());
  EXPECT_EQ(again.to_toml(), cfg.to_toml());
  EXPECT_EQ(again.get_float("optimizer.lr"), 3e-4);
}

TEST(RunConfig, ErrorsNameTheKey) {
  expect_error([] { RunConfig::from_string("[optimizer]\nlearning_rate = 1\n", "x.toml"); },
               {"x.toml", "unknown key 'optimizer.learning_rate'", "optimizer.lr"});
  expect_error([] { RunConfig::from_string("[optimiser]\nlr = 1\n", "x.toml"); }, {"unknown section [optimiser]"});
  expect_error([] { RunConfig::from_string("[optimizer]\nlr = \"fast\"\n", "x.toml"); },
               {"'optimizer.lr' must be a float"});
  expect_error([] { RunConfig::from_string("[optimizer\nlr = 1\n", "x.toml"); }, {"x.toml:1", "TOML syntax error"});
  RunConfig cfg;
  expect_error([&] { cfg.apply_overrides({"--training.epochs", "five"}); }, {"--training.epochs 'five'", "integer"});
  expect_error([&] { cfg.apply_overrides({"--nope.key", "1"}); }, {"unknown config key 'nope.key'"});
  expect_error([&] { cfg.apply_overrides({"--optimizer.lr"}); }, {"--optimizer.lr: missing value"});
  expect_error([] { RunConfig::from_file("/nonexistent.toml"); }, {"cannot open config file '/nonexistent.toml'"});
  cfg.set("model.type", "resnet");
  expect_error([&] { build_model(cfg); }, {"model.type", "'resnet'"});
}

TEST(Train, ShippedConfigsParse) {
  // every shipped config, loaded the way `lowbit train` loads it: parsed, validated, its model
  // built and its quantize recipe resolved and applied
  int seen = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::string(LOWBIT_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".toml") continue;
    SCOPED_TRACE(e.path().string());
    ++seen;
    auto cfg = RunConfig::from_file(e.path().string());
    EXPECT_NO_THROW(validate_config(cfg));
    auto model = build_model(cfg);
    ASSERT_GT(model->num_parameters(), 0);
    EXPECT_GE(model->num_parameters(), min_parameters(cfg));
    if (cfg.get_string("quantize.recipe") != "none") {
      const auto q = qat::recipe_config(cfg.get_string("quantize.recipe"), cfg.get_string("quantize.weight_dtype"),
                                        cfg.get_int("quantize.group_size"));
      auto prepared = qat::quantize_(model, qat::QATConfig(q, "prepare"), qat::compatible_linears(*q));
      int fake = 0;
      for (const auto& [name, m] : prepared->named_modules()) fake += m->type_name() == "FakeQuantizedLinear";
      EXPECT_GT(fake, 0) << "the recipe quantizes no layer of the shipped model";
    }
  }
  EXPECT_GE(seen, 3);
}

TEST(Train, FashionMnistShortRunWritesConfigAndMetrics) {
  if (!std::filesystem::exists(data::FashionMNIST::default_dir() + "/t10k-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto cfg = RunConfig::from_file(std::string(LOWBIT_SOURCE_DIR) + "/configs/fmnist_mlp.toml");
  const std::string dir = tmpdir("fmnist");
  cfg.apply_overrides(
      {"--training.max_steps", "30", "--training.epochs", "1", "--model.hidden", "[64]", "--training.run_dir", dir});
  auto r = train(cfg, false);
  EXPECT_EQ(r.steps, 30);
  EXPECT_GT(r.test_accuracy, 0.6);  // 30 steps of a small MLP already learn most classes
  EXPECT_TRUE(std::filesystem::exists(dir + "/config.toml"));
  std::ifstream m(dir + "/metrics.jsonl");
  std::string line;
  std::getline(m, line);
  EXPECT_NE(line.find("\"test_accuracy\""), std::string::npos);
  EXPECT_EQ(RunConfig::from_file(dir + "/config.toml").get_int("training.max_steps"), 30);
}

TEST(Train, CharGptShortRunGeneratesText) {
  const std::string dir = corpus_in("gpt", "the quick brown fox jumps over the lazy dog", 200);
  auto cfg = RunConfig::from_file(std::string(LOWBIT_SOURCE_DIR) + "/configs/gpt_chars.toml");
  cfg.apply_overrides({"--data.path",
                       dir + "/corpus.txt",
                       "--model.context",
                       "16",
                       "--model.d_model",
                       "32",
                       "--model.n_layers",
                       "1",
                       "--data.batch_size",
                       "8",
                       "--training.max_steps",
                       "40",
                       "--training.eval_interval",
                       "20",
                       "--training.eval_batches",
                       "2",
                       "--lr_scheduler.warmup_steps",
                       "5",
                       "--training.sample_tokens",
                       "30",
                       "--training.run_dir",
                       dir});
  auto r = train(cfg, false);
  EXPECT_EQ(r.steps, 40);
  EXPECT_EQ(r.sample.size(), 30u);
  EXPECT_LT(r.val_loss, std::log(28.0));  // better than uniform over the vocabulary
}

TEST(Train, QatConvertEvalExportWorkflow) {
  if (!std::filesystem::exists(data::FashionMNIST::default_dir() + "/t10k-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto cfg = RunConfig::from_file(std::string(LOWBIT_SOURCE_DIR) + "/configs/fmnist_qat.toml");
  const std::string dir = tmpdir("qat");
  cfg.apply_overrides({"--training.max_steps", "40", "--training.epochs", "1", "--model.hidden", "[64]",
                       "--quantize.qat_epochs", "1", "--checkpoint.enabled", "false", "--training.run_dir", dir});
  const auto r = train(cfg, false);
  EXPECT_GT(r.float_accuracy, 0.6);
  EXPECT_GT(r.test_accuracy, 0.6);
  EXPECT_EQ(r.export_path, dir + "/model.h5");
  // the exported, converted model evaluates to the same accuracy when rebuilt from the file
  const auto [loss, acc] = evaluate_file(r.export_path);
  EXPECT_EQ(acc, r.test_accuracy);
  bool packed = false;
  const auto info = io::inspect(r.export_path);
  for (const auto& t : info.tensors)
    packed |=
        t.path == "/model/2/qdata" && t.dtype == "uint8" && t.shape == Shape{10, 32} && t.scheme == "intx_affine int4";
  EXPECT_TRUE(packed);
  EXPECT_EQ(info.parameters, 784 * 64 + 64 + 64 * 10 + 10);  // logical parameters, as the float model
  EXPECT_GT(static_cast<double>(info.float32_bytes) / static_cast<double>(info.stored_bytes), 1.0);
  // PTQ of a float export with another recipe
  auto fcfg = RunConfig::from_file(std::string(LOWBIT_SOURCE_DIR) + "/configs/fmnist_mlp.toml");
  const std::string fdir = tmpdir("float");
  fcfg.apply_overrides({"--training.max_steps", "40", "--training.epochs", "1", "--model.hidden", "[64]",
                        "--checkpoint.enabled", "false", "--training.run_dir", fdir});
  const auto fr = train(fcfg, false);
  convert_file(fr.export_path, fdir + "/int8.h5", "int8-dyn", "int4", 32);
  const auto [qloss, qacc] = evaluate_file(fdir + "/int8.h5");
  EXPECT_NEAR(qacc, fr.test_accuracy, 0.01);  // int8 PTQ barely moves accuracy
  expect_error([&] { convert_file(fdir + "/int8.h5", fdir + "/again.h5", "8da4w", "int4", 32); },
               {"already quantized"});
  expect_error([&] { convert_file(fr.export_path, fdir + "/x.h5", "int3-magic", "int4", 32); },
               {"unknown quantization recipe 'int3-magic'"});
}

// A run stopped during QAT fine-tuning resumes there: the checkpoint records phase "qat", the
// resumed run prepares the model before loading it, and the converted model it ends with equals
// the uninterrupted run's bit for bit -- for the Fashion-MNIST MLP and for a GPT (whose LM head
// shares its weight with the token embedding, through the fake-quantized module too).
TEST(Train, ResumeMidQatIsBitExact) {
  const bool have_fmnist = std::filesystem::exists(data::FashionMNIST::default_dir() + "/t10k-images-idx3-ubyte.gz");
  const std::string corpus_dir = corpus_in("qat_resume_corpus", "a small corpus line for a tiny model", 100);
  struct Case {
    std::string name, config;
    std::vector<std::string> overrides;
  };
  std::vector<Case> cases = {{"gpt",
                              "gpt_chars.toml",
                              {"--data.path",
                               corpus_dir + "/corpus.txt",
                               "--model.context",
                               "8",
                               "--model.d_model",
                               "32",
                               "--model.n_layers",
                               "1",
                               "--data.batch_size",
                               "4",
                               "--training.max_steps",
                               "6",
                               "--training.eval_interval",
                               "3",
                               "--training.eval_batches",
                               "1",
                               "--lr_scheduler.warmup_steps",
                               "1",
                               "--training.sample_tokens",
                               "4"}}};
  if (have_fmnist)
    cases.push_back(
        {"mlp", "fmnist_mlp.toml", {"--model.hidden", "[16]", "--training.epochs", "1", "--training.max_steps", "6"}});
  else
    std::printf("  (Fashion-MNIST not installed: only the GPT case runs)\n");
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto cfg = RunConfig::from_file(std::string(LOWBIT_SOURCE_DIR) + "/configs/" + c.config);
    const std::string dir = tmpdir("qat_resume_" + c.name);
    cfg.apply_overrides(c.overrides);
    cfg.apply_overrides({"--quantize.recipe", "8da4w", "--quantize.mode", "qat", "--quantize.qat_steps", "6",
                         "--checkpoint.enabled", "true", "--checkpoint.interval", "3", "--checkpoint.keep_last", "10",
                         "--training.run_dir", dir});
    const auto full = train(cfg, false);
    EXPECT_EQ(full.steps, 12);
    const std::string mid = dir + "/checkpoints/step_00000009.h5";
    ASSERT_TRUE(std::filesystem::exists(mid));
    EXPECT_EQ(io::inspect(mid).attributes.at("phase"), "qat");
    EXPECT_EQ(io::inspect(dir + "/checkpoints/step_00000006.h5").attributes.at("phase"), "train");
    const std::string saved = corpus_dir + "/" + c.name + "_step9.h5";
    std::filesystem::copy_file(mid, saved, std::filesystem::copy_options::overwrite_existing);
    const auto original = io::read_model_tensors(full.export_path);
    RunOptions ro;
    ro.overwrite = true;
    const auto resumed = train(cfg, false, saved, ro);
    EXPECT_EQ(resumed.steps, 12);
    const auto again = io::read_model_tensors(resumed.export_path);
    ASSERT_EQ(original.size(), again.size());
    int quantized = 0;
    for (size_t i = 0; i < original.size(); ++i) {
      EXPECT_EQ(original[i].first, again[i].first);
      quantized += original[i].first.find("qdata") != std::string::npos;
      ASSERT_EQ(original[i].second.nbytes(), again[i].second.nbytes()) << original[i].first;
      EXPECT_EQ(std::memcmp(original[i].second.raw_data(), again[i].second.raw_data(), original[i].second.nbytes()), 0)
          << original[i].first;
    }
    EXPECT_GT(quantized, 0) << "the exported model holds converted linears";
    if (c.name == "gpt") {
      EXPECT_EQ(resumed.sample, full.sample);
    } else {
      EXPECT_EQ(resumed.test_accuracy, full.test_accuracy);
    }
  }
}

// quantize.float8_qat_backward / float8_guard_zero_blocks reach the fake quantizers of the float8
// recipes (and are printed with the config); the defaults are lowbit's straight-through backward.
TEST(Train, Float8QatOptionsReachTheFakeQuantizers) {
  using B = qat::Float8FakeQuantizeConfig::Backward;
  auto expect_options = [](const qat::QuantConfigBase& q, B backward, bool guard) {
    const auto fq = q.fake_quantize_configs();
    EXPECT_TRUE(fq.weight != nullptr);
    for (const auto& c : {fq.activation, fq.weight}) {
      if (!c) continue;
      const auto* f = dynamic_cast<const qat::Float8FakeQuantizeConfig*>(c.get());
      ASSERT_NE(f, nullptr);
      EXPECT_EQ(f->backward, backward);
      EXPECT_EQ(f->guard_zero_blocks, guard);
    }
  };
  for (const char* recipe : {"float8-dyn", "float8-dyn-row", "float8-weight-only"}) {
    SCOPED_TRACE(recipe);
    RunConfig cfg;
    cfg.apply_overrides({"--quantize.recipe", recipe});
    expect_options(*build_quantize_config(cfg), B::StraightThrough, false);
    cfg.apply_overrides(
        {"--quantize.float8_qat_backward", "torchao_parity", "--quantize.float8_guard_zero_blocks", "true"});
    validate_config(cfg);
    const auto q = build_quantize_config(cfg);
    EXPECT_NE(q->to_string().find(", qat_backward=torchao_parity, qat_guard_zero_blocks=True)"), std::string::npos)
        << q->to_string();
    expect_options(*q, B::TorchaoParity, true);
  }
}

// [float8] / [mx]: the shipped float8 and MXFP8 configs train a tiny GPT, say which layers they converted and kept,
// resumes from a mid-run checkpoint to the same bits, and exports a model load_model rebuilds
// with its Float8Linear layers; config errors name the key.
TEST(Train, Float8AndMXRunsResumeBitExactAndExport) {
  const std::string corpus_dir = corpus_in("float8_corpus", "a small corpus line for a tiny float8 model", 100);
  auto cfg = RunConfig::from_file(std::string(LOWBIT_SOURCE_DIR) + "/configs/gpt_chars_float8.toml");
  EXPECT_EQ(cfg.get_string("float8.recipe_name"), "rowwise");
  const std::string dir = tmpdir("float8_run");
  const std::vector<std::string> tiny = {"--data.path",
                                         corpus_dir + "/corpus.txt",
                                         "--model.context",
                                         "16",
                                         "--model.d_model",
                                         "32",
                                         "--model.n_layers",
                                         "1",
                                         "--data.batch_size",
                                         "4",
                                         "--training.max_steps",
                                         "8",
                                         "--training.eval_interval",
                                         "4",
                                         "--training.eval_batches",
                                         "1",
                                         "--lr_scheduler.warmup_steps",
                                         "1",
                                         "--training.sample_tokens",
                                         "8",
                                         "--checkpoint.enabled",
                                         "true",
                                         "--checkpoint.interval",
                                         "4",
                                         "--checkpoint.keep_last",
                                         "10"};
  cfg.apply_overrides(tiny);
  cfg.apply_overrides({"--training.run_dir", dir});
  ::testing::internal::CaptureStdout();
  const auto full = train(cfg, false);
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(out.find("float8 (rowwise): 4 layers converted: blocks.0.attn.qkv, blocks.0.attn.proj, blocks.0.mlp.0, "
                     "blocks.0.mlp.2"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("float8: kept in high precision: lm_head (filter_fqns: 'lm_head')"), std::string::npos) << out;
  RunOptions ro;
  ro.overwrite = true;
  // resuming from the step-4 checkpoint of `full` (run in run_dir) gives the same 8-step run:
  // the same sample and bit-identical exported tensors (read before the resumed run overwrites them)
  auto expect_resume_bit_exact = [&](const RunConfig& c, const TrainResult& full_run, const std::string& run_dir,
                                     const std::string& name) {
    SCOPED_TRACE(name);
    const std::string saved = corpus_dir + "/" + name + "_step4.h5";
    std::filesystem::copy_file(run_dir + "/checkpoints/step_00000004.h5", saved,
                               std::filesystem::copy_options::overwrite_existing);
    const auto a = io::read_model_tensors(full_run.export_path);
    const auto resumed = train(c, false, saved, ro);
    EXPECT_EQ(resumed.steps, 8);
    EXPECT_EQ(resumed.sample, full_run.sample);
    const auto b = io::read_model_tensors(resumed.export_path);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_EQ(std::memcmp(a[i].second.raw_data(), b[i].second.raw_data(), a[i].second.nbytes()), 0) << a[i].first;
  };
  expect_resume_bit_exact(cfg, full, dir, "float8");
  auto model = io::load_model(full.export_path);
  EXPECT_EQ(model->get_submodule("blocks.0.attn.qkv")->type_name(), "Float8Linear");
  EXPECT_EQ(model->get_submodule("lm_head")->type_name(), "Linear");

  // the blockwise recipe (beyond torchao) trains, exports and rebuilds the same way
  auto bw = cfg;
  bw.apply_overrides({"--float8.recipe_name", "blockwise", "--training.max_steps", "4", "--checkpoint.enabled", "false",
                      "--training.run_dir", dir + "_blockwise"});
  ::testing::internal::CaptureStdout();
  const auto bw_run = train(bw, false, "", ro);
  const std::string bw_out = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(bw_out.find("float8 (blockwise): 4 layers converted"), std::string::npos) << bw_out;
  EXPECT_TRUE(std::isfinite(bw_run.final_train_loss));
  const std::string repr = io::load_model(bw_run.export_path)->get_submodule("blocks.0.mlp.0")->to_string();
  EXPECT_NE(repr.find("cast_configs=i:dyn_b1x128_e4m3,w:dyn_b128x128_e4m3,go:dyn_b1x128_e4m3"), std::string::npos)
      << repr;

  // MX training runs through the same path: [mx] recipe, converted layers listed, resumable, rebuilt
  auto mxc = RunConfig::from_file(std::string(LOWBIT_SOURCE_DIR) + "/configs/gpt_chars_mxfp8.toml");
  EXPECT_EQ(mxc.get_string("mx.recipe_name"), "mxfp8_rceil");
  mxc.apply_overrides(tiny);
  mxc.apply_overrides({"--training.run_dir", dir + "_mx"});
  ::testing::internal::CaptureStdout();
  const auto mx_full = train(mxc, false, "", ro);
  const std::string mx_out = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(mx_out.find("mx (mxfp8_rceil): 4 layers converted: blocks.0.attn.qkv"), std::string::npos) << mx_out;
  EXPECT_NE(mx_out.find("mx: kept in high precision: lm_head (filter_fqns: 'lm_head')"), std::string::npos);
  expect_resume_bit_exact(mxc, mx_full, dir + "_mx", "mx");
  EXPECT_EQ(io::load_model(mx_full.export_path)->get_submodule("blocks.0.mlp.2")->type_name(), "MXLinear");

  // NVFP4 training ([mx] recipe_name = "nvfp4"): resumes bit-exactly -- the stochastic rounding
  // streams continue from the checkpointed sr_state -- and rebuilds as NVFP4Linear
  auto nvc = mxc;
  nvc.apply_overrides({"--mx.recipe_name", "nvfp4", "--training.run_dir", dir + "_nvfp4"});
  ::testing::internal::CaptureStdout();
  const auto nv_full = train(nvc, false, "", ro);
  const std::string nv_out = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(nv_out.find("mx (nvfp4): 4 layers converted: blocks.0.attn.qkv"), std::string::npos) << nv_out;
  expect_resume_bit_exact(nvc, nv_full, dir + "_nvfp4", "nvfp4");
  EXPECT_EQ(io::load_model(nv_full.export_path)->get_submodule("blocks.0.mlp.2")->type_name(), "NVFP4Linear");

  // the low-bit Adams from a run config: quantized states travel through checkpoints, the run
  // resumes bit-exactly (the MLP's 32x128 weights have 4096 elements: quantized; the rest plain)
  for (const char* o : {"adamw8bit", "adamw4bit", "adamwfp8", "sgd8bit", "lion8bit"}) {
    auto oc = mxc;
    oc.apply_overrides({"--mx.recipe_name", "none", "--optimizer.name", o, "--optimizer.momentum", "0.9",
                        "--training.run_dir", dir + "_" + o});
    ::testing::internal::CaptureStdout();
    const auto o_full = train(oc, false, "", ro);
    ::testing::internal::GetCapturedStdout();
    EXPECT_TRUE(std::isfinite(o_full.final_train_loss)) << o;
    expect_resume_bit_exact(oc, o_full, dir + "_" + o, o);
  }
  // bfloat16 parameters (training.param_dtype): no float32 copy -- the export holds bfloat16 weights --
  // written back stochastically; the rounding draws continue after a resume (bit-exact)
  {
    auto bc = mxc;
    bc.apply_overrides({"--mx.recipe_name", "none", "--optimizer.name", "adamw8bit", "--training.param_dtype", "bf16",
                        "--optimizer.bf16_stochastic_round", "true", "--training.run_dir", dir + "_bf16"});
    ::testing::internal::CaptureStdout();
    const auto b_full = train(bc, false, "", ro);
    ::testing::internal::GetCapturedStdout();
    EXPECT_TRUE(std::isfinite(b_full.final_train_loss));
    for (const auto& [name, tensor] : io::read_model_tensors(b_full.export_path))
      EXPECT_EQ(tensor.dtype(), kBFloat16) << name;
    expect_resume_bit_exact(bc, b_full, dir + "_bf16", "bf16_sr");
    auto rne = bc;  // round to nearest even: another run
    rne.apply_overrides({"--optimizer.bf16_stochastic_round", "false", "--training.run_dir", dir + "_bf16_rne"});
    ::testing::internal::CaptureStdout();
    const auto r_full = train(rne, false, "", ro);
    ::testing::internal::GetCapturedStdout();
    const auto sr_w = io::read_model_tensors(b_full.export_path), rne_w = io::read_model_tensors(r_full.export_path);
    int64_t differ = 0;
    for (size_t i = 0; i < sr_w.size(); ++i)
      differ += std::memcmp(sr_w[i].second.raw_data(), rne_w[i].second.raw_data(), sr_w[i].second.nbytes()) != 0;
    EXPECT_GT(differ, 0);
    auto bad_bf16 = bc;
    bad_bf16.apply_overrides({"--optimizer.name", "adamw"});
    lowbit::testing::expect_error([&] { validate_config(bad_bf16); },
                                  {"training.param_dtype = bf16", "AdamW", "must be float32"});
    bad_bf16 = bc;
    bad_bf16.apply_overrides({"--mx.recipe_name", "mxfp8_rceil"});
    lowbit::testing::expect_error([&] { validate_config(bad_bf16); }, {"param_dtype", "mx.recipe_name"});
    bad_bf16 = mxc;
    bad_bf16.apply_overrides({"--optimizer.bf16_stochastic_round", "true"});
    lowbit::testing::expect_error([&] { validate_config(bad_bf16); }, {"bf16_stochastic_round", "param_dtype"});
    // torchao's zero codes are an 8-bit / fp8 Adam setting: refused elsewhere, naming the optimizer
    for (const char* other : {"adamw", "adamw4bit", "lion8bit"}) {
      auto floor_off = mxc;
      floor_off.apply_overrides(
          {"--mx.recipe_name", "none", "--optimizer.name", other, "--optimizer.second_moment_floor", "false"});
      lowbit::testing::expect_error([&] { validate_config(floor_off); },
                                    {"optimizer.second_moment_floor = false", "adamwfp8", other});
    }
    for (const char* ok : {"adamw8bit", "adam8bit", "adamwfp8", "adamfp8"}) {
      auto floor_off = mxc;
      floor_off.apply_overrides(
          {"--mx.recipe_name", "none", "--optimizer.name", ok, "--optimizer.second_moment_floor", "false"});
      EXPECT_NO_THROW(validate_config(floor_off)) << ok;
    }
  }
  // the per-parameter override: the named layer's states stay float32, the other 4096-element
  // weight's are quantized (read back from the run's last checkpoint)
  {
    auto oc = mxc;
    oc.apply_overrides({"--mx.recipe_name", "none", "--optimizer.name", "adamw8bit", "--optimizer.full_precision_state",
                        "[\"blocks.0.mlp.0\"]", "--training.run_dir", dir + "_fp_state"});
    ::testing::internal::CaptureStdout();
    train(oc, false, "", ro);
    ::testing::internal::GetCapturedStdout();
    const std::string ck = dir + "_fp_state/checkpoints/step_00000008.h5";
    hid_t f = H5Fopen(ck.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0) << ck;
    auto exists = [&](const char* path) { return H5Lexists(f, path, H5P_DEFAULT) > 0; };
    EXPECT_TRUE(exists("/optimizer/state/blocks/0/mlp/0/weight/exp_avg"));
    EXPECT_FALSE(exists("/optimizer/state/blocks/0/mlp/0/weight/exp_avg_codes"));
    EXPECT_TRUE(exists("/optimizer/state/blocks/0/mlp/2/weight/exp_avg_codes"));
    H5Fclose(f);
    auto nomatch = oc;
    nomatch.apply_overrides({"--optimizer.full_precision_state", "[\"embeding\"]"});
    lowbit::testing::expect_error(
        [&] { train(nomatch, false, "", ro); },
        {"optimizer.full_precision_state", "'embeding' is in no parameter name", "wte.weight"});
    auto fp32 = oc;
    fp32.apply_overrides({"--optimizer.name", "adamw"});
    lowbit::testing::expect_error([&] { validate_config(fp32); },
                                  {"optimizer.full_precision_state applies to the low-bit optimizers", "'adamw'"});
  }
  auto obad = mxc;
  obad.apply_overrides({"--optimizer.name", "sgd8bit", "--optimizer.momentum", "0"});
  lowbit::testing::expect_error([&] { validate_config(obad); }, {"optimizer (sgd8bit)", "momentum must be in (0, 1)"});
  obad = mxc;
  obad.apply_overrides({"--optimizer.name", "adamw2bit"});
  lowbit::testing::expect_error([&] { validate_config(obad); }, {"optimizer.name", "adamw2bit", "adamwfp8"});
  obad = mxc;
  obad.apply_overrides({"--optimizer.name", "adamw4bit", "--optimizer.block_size", "33"});
  lowbit::testing::expect_error([&] { validate_config(obad); }, {"optimizer.block_size", "and even", "33"});

  auto mbad = mxc;
  mbad.apply_overrides({"--mx.recipe_name", "mxfp9"});
  lowbit::testing::expect_error([&] { validate_config(mbad); }, {"[mx]", "'mxfp9'", "mxfp8_rceil", "or nvfp4"});
  mbad = mxc;
  mbad.apply_overrides({"--float8.recipe_name", "rowwise"});
  lowbit::testing::expect_error([&] { validate_config(mbad); }, {"mx.recipe_name 'mxfp8_rceil'", "float8"});
  mbad = mxc;
  mbad.apply_overrides({"--quantize.recipe", "8da4w", "--quantize.qat_steps", "5"});
  lowbit::testing::expect_error([&] { validate_config(mbad); }, {"mx.recipe_name", "cannot be combined"});

  auto bad = cfg;
  bad.apply_overrides({"--float8.recipe_name", "rowwize"});
  lowbit::testing::expect_error([&] { validate_config(bad); }, {"[float8]", "'rowwize'", "rowwise_with_gw_hp"});
  bad = cfg;
  bad.apply_overrides({"--quantize.recipe", "8da4w", "--quantize.qat_steps", "5"});
  lowbit::testing::expect_error([&] { validate_config(bad); }, {"float8.recipe_name 'rowwise'", "cannot be combined"});
  bad = cfg;
  bad.apply_overrides({"--float8.recipe_name", "rowwise_with_gw_hp", "--float8.auto_filter", "true"});
  lowbit::testing::expect_error([&] { validate_config(bad); }, {"[float8]", "unsupported recipe"});
  bad = cfg;
  bad.apply_overrides({"--float8.filter_fqns", "[lm_head, \"\"]"});
  EXPECT_EQ(bad.get_string_list("float8.filter_fqns"), (std::vector<std::string>{"lm_head"}));  // empty items dropped
  bad = RunConfig::from_string("[float8]\nfilter_fqns = [\"a\", \"\"]\n", "inline");
  lowbit::testing::expect_error([&] { validate_config(bad); }, {"float8.filter_fqns", "empty string"});
  lowbit::testing::expect_error([&] { RunConfig::from_string("[float8]\nfilter_fqns = [1, 2]\n", "inline"); },
                                {"float8.filter_fqns", "list of strings"});
}
