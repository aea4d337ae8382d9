// Engine demo: a 2-16-16-3 MLP learns the three-arm spiral with plain autograd and SGD.
// Run: ./build/examples/engine_demo [steps]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <lowbit/lowbit.h>

using namespace lowbit;

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 300;
  manual_seed(0);
  // data: 3 classes x 100 points on interleaved spirals
  const int per_class = 100, classes = 3, n = per_class * classes;
  std::vector<float> xs;
  std::vector<int64_t> ys;
  Generator noise(1);
  Tensor jitter = randn({n}, &noise);
  for (int c = 0; c < classes; ++c)
    for (int i = 0; i < per_class; ++i) {
      const float r = static_cast<float>(i) / per_class;
      const float t = c * 4.0f + r * 4.0f + 0.2f * jitter.data_ptr<float>()[c * per_class + i];
      xs.push_back(r * std::sin(t));
      xs.push_back(r * std::cos(t));
      ys.push_back(c);
    }
  const Tensor x = from_vector(xs, {n, 2}), y = from_vector(ys, {n});

  // parameters, PyTorch's default Linear init: U(-1/sqrt(in), 1/sqrt(in))
  auto param = [](Shape shape, int64_t fan_in) {
    const double b = 1.0 / std::sqrt(static_cast<double>(fan_in));
    Tensor p = empty(shape);
    p.uniform_(-b, b);
    return p.requires_grad_();
  };
  std::vector<Tensor> params = {param({64, 2}, 2), param({64}, 2),     param({64, 64}, 64),
                                param({64}, 64),   param({3, 64}, 64), param({3}, 64)};
  const double lr = 0.5;
  for (int step = 0; step <= steps; ++step) {
    Tensor h = relu(linear(x, params[0], params[1]));
    h = relu(linear(h, params[2], params[3]));
    Tensor logits = linear(h, params[4], params[5]);
    Tensor loss = cross_entropy(logits, y);
    for (auto& p : params) p.set_grad(Tensor());
    loss.backward();
    {
      NoGradGuard no_grad;
      for (auto& p : params) p.copy_(sub(p, p.grad(), lr));
    }
    if (step % 50 == 0) {
      const Tensor pred = argmax(logits, 1);
      int correct = 0;
      for (int i = 0; i < n; ++i) correct += pred.data_ptr<int64_t>()[i] == ys[i];
      std::printf("step %4d  loss %.4f  train accuracy %.1f%%\n", step, loss.item<float>(), 100.0 * correct / n);
    }
  }
  return 0;
}
