// fp32 -> QAT -> convert -> export on Fashion-MNIST, in one screen, with the library's trainer
// and QAT driver (what `lowbit train` runs).   ./build/examples/qat_workflow
#include <cstdio>

#include <lowbit/lowbit.h>

#include "lowbit/train/trainer.h"

using namespace lowbit;

int main() {
  manual_seed(0);
  auto train_set = data::FashionMNIST::load("", true), test_set = data::FashionMNIST::load("", false);
  data::DataLoader loader(train_set, {.batch_size = 256, .shuffle = true, .seed = 0});
  std::shared_ptr<nn::Module> model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(784, 1024), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(1024, 10)});
  optim::AdamW opt(model->parameters(), {.lr = 1e-3});
  const auto task = train::classification_task(test_set);  // cross-entropy; test loss and accuracy
  train::Reporter log(false, 100);

  train::Options o;  // 1. one epoch in float32
  o.total_steps = loader.num_batches();
  o.epochs = 1;
  const auto r = train::fit(*model, opt, nullptr, loader, task, o, log, 0);

  train::QatOptions q;  // 2-3. QAT with int8 dynamic activations x int4 g16 weights, then convert
  q.config = qat::recipe_config("8da4w", "int4", 16);
  q.epochs = 1;
  q.lr = 1e-4;
  o.total_steps = r.step + q.epochs * loader.num_batches();
  const auto qr = train::quantize_model(model, opt, nullptr, loader, task, q, o, log, r.step);
  std::printf("float32: %s\nconverted: %s\n", train::format_metrics(qr.float_eval).c_str(),
              train::format_metrics(qr.converted_eval).c_str());

  io::export_model("qat_workflow.h5", *qr.model);  // 4. HDF5 export: `lowbit eval qat_workflow.h5` rebuilds it
  std::printf("exported qat_workflow.h5\n");
}
