// Float8 QAT: torchao's backward against lowbit's straight-through one. An MLP 784-1024-1024-10
// trained from scratch on Fashion-MNIST with e4m3 per-row fake quantization of activations and
// weights (qat::Float8FakeQuantizeConfig), 3 epochs, AdamW 1e-3, the same seed and data order
// for each mode; and the float32 model for reference.
//   ./build/examples/float8_qat_backward [parity|ste|fp32]   (no argument: all three)
#include <cstdio>
#include <string>

#include <lowbit/lowbit.h>

#include "lowbit/train/trainer.h"

using namespace lowbit;

namespace {
void run(const std::string& mode) {
  manual_seed(0);
  auto train_set = data::FashionMNIST::load("", true), test_set = data::FashionMNIST::load("", false);
  data::DataLoader loader(train_set, {.batch_size = 256, .shuffle = true, .seed = 0});
  std::shared_ptr<nn::Module> model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(784, 1024), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(1024, 1024),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(1024, 10)});
  if (mode != "fp32") {
    auto cfg = std::make_shared<qat::Float8FakeQuantizeConfig>(kFloat8_e4m3fn, qat::PerRow{});
    cfg->backward = mode == "ste" ? qat::Float8FakeQuantizeConfig::Backward::StraightThrough
                                  : qat::Float8FakeQuantizeConfig::Backward::TorchaoParity;
    model = qat::quantize_(model, qat::QATConfig(cfg, cfg, "prepare"));
  }
  optim::AdamW opt(model->parameters(), {.lr = 1e-3});
  train::Reporter log(false, 1000);
  train::Options o;
  o.epochs = 3;
  o.total_steps = o.epochs * loader.num_batches();
  const auto r = train::fit(*model, opt, nullptr, loader, train::classification_task(test_set), o, log, 0);
  std::printf("%-16s %s\n",
              mode == "fp32"  ? "float32"
              : mode == "ste" ? "straight-through"
                              : "torchao parity",
              train::format_metrics(r.eval).c_str());
}
}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) {
    run(argv[1]);
    return 0;
  }
  for (const char* m : {"parity", "ste", "fp32"}) run(m);
}
