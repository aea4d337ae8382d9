// Forward + backward of the 784-1024-1024-10 ReLU MLP at batch 256 (cross-entropy loss), ms per
// step, next to the time the step's GEMMs take when run back to back through lowbit's linear
// (the floor set by oneDNN's matmul).
//   ./build/bench/bench_mlp [--threads=N]
#include <cstring>

#include "bench_util.h"
#include <lowbit/lowbit.h>

using namespace lowbit;

namespace {
struct Mlp {
  Tensor w1 = randn({1024, 784}).requires_grad_(), b1 = zeros({1024}).requires_grad_();
  Tensor w2 = randn({1024, 1024}).requires_grad_(), b2 = zeros({1024}).requires_grad_();
  Tensor w3 = randn({10, 1024}).requires_grad_(), b3 = zeros({10}).requires_grad_();
  Tensor x = randn({256, 784});
  Tensor y = randint(0, 10, {256});
  Mlp() {
    NoGradGuard ng;
    for (Tensor* w : {&w1, &w2, &w3}) w->copy_(mul(*w, 0.03));
  }
  void step() {
    for (Tensor* p : {&w1, &b1, &w2, &b2, &w3, &b3}) p->set_grad(Tensor());
    Tensor h = relu(linear(x, w1, b1));
    h = relu(linear(h, w2, b2));
    Tensor loss = cross_entropy(linear(h, w3, b3), y);
    loss.backward();
  }
};

void BM_mlp_step(benchmark::State& st) {
  Mlp m;
  for (auto _ : st) m.step();
}
}  // namespace

BENCHMARK(BM_mlp_step)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);

int main(int argc, char** argv) {
  const auto rep = lowbit::bench::run_all(argc, argv, [](int n) { set_num_threads(n); });
  const double ms = rep.seconds("BM_mlp_step") * 1e3;
  const double gflop = 6.0 * 256 * (784.0 * 1024 + 1024.0 * 1024 + 1024.0 * 10) / 1e9;
  std::printf(
      "\nthreads=%d  MLP 784-1024-1024-10, batch 256, fwd+bwd: %.2f ms/step (%.0f GFLOP/s on %.2f GFLOP of GEMMs)\n",
      get_num_threads(), ms, gflop / (ms / 1e3), gflop);
  return 0;
}
