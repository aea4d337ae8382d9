// Links against the installed package and runs one training step of autograd.
#include <cstdio>

#include <lowbit/lowbit.h>

int main() {
  using namespace lowbit;
  Tensor w = randn({4, 3}).requires_grad_();
  Tensor x = ones({2, 3});
  Tensor loss = mean(square(linear(x, w)));
  loss.backward();
  if (!w.grad().defined() || w.grad().shape() != Shape{4, 3}) return 1;
  std::printf("consumer ok: loss %.4f\n", loss.item<float>());
  return 0;
}
