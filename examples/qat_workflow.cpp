// fp32 -> QAT -> convert -> export on Fashion-MNIST, in one screen.   ./build/examples/qat_workflow
#include <cstdio>

#include <lowbit/lowbit.h>

using namespace lowbit;

static double accuracy(nn::Module& m, const data::TensorDataset& test) {
  NoGradGuard ng;
  const Tensor pred = argmax(m.forward(test.data()), 1);
  return mean(eq(pred, test.target()).to(kFloat32)).item<double>();
}

int main() {
  manual_seed(0);
  auto train = data::FashionMNIST::load("", true), test = data::FashionMNIST::load("", false);
  data::DataLoader loader(train, {.batch_size = 256, .shuffle = true, .seed = 0});
  std::shared_ptr<nn::Module> model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(784, 1024), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(1024, 10)});
  optim::AdamW opt(model->parameters(), {.lr = 1e-3});
  auto epoch = [&] {
    while (auto b = loader.next()) {
      Tensor loss = cross_entropy(model->forward(b->data), b->target);
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
  };
  epoch();  // 1. float32 training
  std::printf("float32:   %.2f%%\n", 100 * accuracy(*model, *test));

  const auto base = qat::recipe_config("8da4w", "int4", 16);       // int8 dyn. activations x int4 g16 weights
  model = qat::quantize_(model, qat::QATConfig(base, "prepare"));  // 2. QAT: fake quantizers inserted
  opt.set_lr(1e-4);
  epoch();
  std::printf("QAT:       %.2f%%\n", 100 * accuracy(*model, *test));

  model = qat::quantize_(model, qat::QATConfig(base, "convert"));  // 3. real packed int4 linears
  std::printf("converted: %.2f%%\n", 100 * accuracy(*model, *test));
  io::export_model("qat_workflow.h5", *model);  // 4. HDF5 export
  std::printf("exported qat_workflow.h5\n");
}
