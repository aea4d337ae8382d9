// Fashion-MNIST with a 784-1024-1024-10 MLP, AdamW, 5 epochs: the C++ version of
// `lowbit train configs/fmnist_mlp.toml`.   ./build/examples/fmnist_mlp [epochs] [seed] [optimizer]
// optimizer: any name of `lowbit optimizers` (adamw, adamw8bit, adamw4bit, lion8bit, ...).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <lowbit/lowbit.h>

using namespace lowbit;

int main(int argc, char** argv) {
  const int epochs = argc > 1 ? std::atoi(argv[1]) : 5;
  const uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 0;
  const std::string opt_name = argc > 3 ? argv[3] : "adamw";
  manual_seed(seed);
  auto train_set = data::FashionMNIST::load("", /*train=*/true);
  auto test_set = data::FashionMNIST::load("", /*train=*/false);
  data::DataLoader loader(train_set, {.batch_size = 256, .shuffle = true, .seed = seed});

  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(784, 1024), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(1024, 1024),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(1024, 10)});
  // the optimizer table builds any of them; the low-bit ones quantize the states of the weights
  // (>= 4096 elements) and keep the biases' in float32
  std::unique_ptr<optim::Optimizer> opt_ptr;
  try {
    opt_ptr = optim::make_optimizer(opt_name, {{model->parameters(), {}}}, {.lr = 1e-3, .weight_decay = 1e-2});
  } catch (const Error& e) {
    std::fprintf(stderr, "fmnist_mlp: %s\n", e.what());
    return 2;
  }
  optim::Optimizer& opt = *opt_ptr;

  const auto t0 = std::chrono::steady_clock::now();
  std::printf("optimizer %s\n", opt.name().c_str());
  for (int epoch = 0; epoch < epochs; ++epoch) {
    model->train();
    double total = 0;
    int64_t steps = 0;
    while (auto batch = loader.next()) {
      Tensor loss = cross_entropy(model->forward(batch->data), batch->target);
      opt.zero_grad();
      loss.backward();
      opt.step();
      total += loss.item<float>();
      ++steps;
    }
    model->eval();
    NoGradGuard ng;
    const Tensor pred = argmax(model->forward(test_set->data()), 1);
    int64_t correct = 0;
    for (int64_t i = 0; i < pred.numel(); ++i)
      correct += pred.data_ptr<int64_t>()[i] == test_set->target().data_ptr<int64_t>()[i];
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("epoch %d  train loss %.4f  test accuracy %.2f%%  (%.1f s)\n", epoch + 1, total / steps,
                100.0 * correct / pred.numel(), secs);
  }
  return 0;
}
