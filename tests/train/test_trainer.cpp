// The library trainer with a user's own model, data and task: fit() evaluates, logs, appends
// metrics and checkpoints as told; the QAT driver prepares, fine-tunes and converts.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <lowbit/lowbit.h>

#include "lowbit/train/trainer.h"

using namespace lowbit;

namespace {
// two Gaussian blobs in 8 dimensions: class = sign of the first coordinate's mean
std::shared_ptr<data::TensorDataset> blobs(int64_t n, uint64_t seed) {
  Generator g(seed);
  Tensor y = randint(0, 2, {n}, &g);
  Tensor x = randn({n, 8}, &g);
  float* xp = x.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) xp[i * 8] += y.data_ptr<int64_t>()[i] ? 3.0f : -3.0f;
  return std::make_shared<data::TensorDataset>(x, y);
}
}  // namespace

TEST(Trainer, FitAndQatDriverWithAUserTask) {
  const auto dir = std::filesystem::temp_directory_path() / "lowbit_trainer";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  manual_seed(1);
  auto train_set = blobs(512, 2), test_set = blobs(256, 3);
  data::DataLoader loader(train_set, {.batch_size = 32, .shuffle = true, .seed = 4});
  std::shared_ptr<nn::Module> model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(8, 32), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(32, 2)});
  optim::AdamW opt(model->parameters(), {.lr = 1e-2});
  std::vector<std::string> lines;
  train::Reporter rep(false, 1000, [&](const std::string& l) { lines.push_back(l); });
  train::Options o;
  o.total_steps = 2 * loader.num_batches();  // two epochs, evaluated at each end
  o.epochs = 2;
  o.metrics_path = (dir / "metrics.jsonl").string();
  o.checkpoint = {true, (dir / "ck").string(), 10, 2, "", ""};
  const auto task = train::classification_task(test_set, 100);
  const auto r = train::fit(*model, opt, nullptr, loader, task, o, rep, 0);
  EXPECT_EQ(r.step, 32);
  ASSERT_EQ(r.eval.size(), 2u);
  EXPECT_EQ(r.eval[1].first, "test_accuracy");
  EXPECT_GT(r.eval[1].second, 0.95);  // separable blobs
  int epoch_lines = 0;
  for (const auto& l : lines) epoch_lines += l.rfind("epoch ", 0) == 0 && l.find("test accuracy") != std::string::npos;
  EXPECT_EQ(epoch_lines, 2);
  // checkpoints every 10 steps and at the end, the last two kept
  EXPECT_TRUE(std::filesystem::exists(dir / "ck" / "step_00000030.h5"));
  EXPECT_TRUE(std::filesystem::exists(dir / "ck" / "step_00000032.h5"));
  EXPECT_FALSE(std::filesystem::exists(dir / "ck" / "step_00000020.h5"));
  // QAT: 10 fine-tuning steps of 8da4w (groups of 32 over 8 inputs: one ragged group per row)
  train::QatOptions q;
  q.config = qat::recipe_config("8da4w", "int4", 32);
  q.steps = 10;
  q.lr = 1e-3;
  o.total_steps = r.step + q.steps;
  o.checkpoint.enabled = false;
  const auto qr = train::quantize_model(model, opt, nullptr, loader, task, q, o, rep, r.step);
  EXPECT_EQ(qr.step, 42);
  int converted = 0;
  for (const auto& [name, m] : qr.model->named_modules()) converted += m->type_name() == "QuantizedLinear";
  EXPECT_EQ(converted, 2);
  EXPECT_NE(train::format_metrics(qr.converted_eval).find("test accuracy"), std::string::npos);
  EXPECT_NEAR(qr.converted_eval[1].second, qr.fake_quant_eval[1].second, 0.02);  // convert keeps what QAT learned
  std::ifstream m(dir / "metrics.jsonl");
  int records = 0, qat_records = 0;
  for (std::string line; std::getline(m, line); ++records)
    qat_records += line.find("\"phase\":\"qat\"") != std::string::npos;
  EXPECT_EQ(records, 3);  // two epochs, then the end of fine-tuning
  EXPECT_EQ(qat_records, 1);
  std::filesystem::remove_all(dir);
}
