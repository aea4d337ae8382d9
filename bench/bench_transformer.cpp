// The transformer training step's GEMM share (docs/PERFORMANCE.md; issue #10's "≥ 85% of the GEMM
// floor"): a 2-layer encoder (B=32, T=128, C=256, 4 heads, ff 1024, no dropout) training step
// (zero_grad, forward, MSE, backward, AdamW) against the same step's GEMMs alone — every forward and
// backward GEMM of the step with its shape and transposes, run through the same oneDNN matmul
// (`gemm`) on preallocated operands. share = GEMMs alone / step: what float8/MX speed-ups of the
// GEMMs can reach.
//   ./build/bench/bench_transformer [--threads=N]
#include "bench_util.h"
#include <lowbit/lowbit.h>

using namespace lowbit;

namespace {
constexpr int64_t kB = 32, kT = 128, kC = 256, kH = 4, kF = 1024, kLayers = 2;
constexpr int64_t kN = kB * kT, kD = kC / kH, kBH = kB * kH;

std::shared_ptr<nn::Module> encoder() {
  manual_seed(0);
  std::vector<std::shared_ptr<nn::Module>> blocks;
  for (int64_t l = 0; l < kLayers; ++l)
    blocks.push_back(std::make_shared<nn::TransformerBlock>(kC, kH, kF, 0.0, false));
  return std::make_shared<nn::Sequential>(blocks);
}

void BM_encoder_step(benchmark::State& st) {
  auto model = encoder();
  optim::AdamW opt(model->parameters());
  const Tensor x = randn({kB, kT, kC}), tgt = randn({kB, kT, kC});
  for (auto _ : st) {
    opt.zero_grad();
    Tensor loss = mse_loss(model->forward(x), tgt);
    loss.backward();
    opt.step();
  }
}

// One GEMM of the step: op(A) (m x k) · op(B) (k x n), batch count, transposes, bias.
struct Gemm {
  Tensor a, b, bias;
  bool ta, tb;
};
Gemm make(int64_t batch, int64_t m, int64_t n, int64_t k, bool ta, bool tb, bool bias) {
  auto shape = [&](int64_t r, int64_t c) { return batch ? Shape{batch, r, c} : Shape{r, c}; };
  return {randn(ta ? shape(k, m) : shape(m, k)), randn(tb ? shape(n, k) : shape(k, n)), bias ? randn({n}) : Tensor(),
          ta, tb};
}
// A linear (N x in -> N x out): forward x·Wᵀ + b, backward dX = dY·W and dW = dYᵀ·X.
void add_linear(std::vector<Gemm>& g, int64_t in, int64_t out) {
  g.push_back(make(0, kN, out, in, false, true, true));
  g.push_back(make(0, kN, in, out, false, false, false));
  g.push_back(make(0, out, in, kN, true, false, false));
}
// The attention's six batched GEMMs over B·H heads (autograd/src/attention.cpp): S = Q·Kᵀ,
// O = P·V; backward dV = Pᵀ·dO, dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀ·Q.
void add_attention(std::vector<Gemm>& g) {
  g.push_back(make(kBH, kT, kT, kD, false, true, false));
  g.push_back(make(kBH, kT, kD, kT, false, false, false));
  g.push_back(make(kBH, kT, kD, kT, true, false, false));
  g.push_back(make(kBH, kT, kT, kD, false, true, false));
  g.push_back(make(kBH, kT, kD, kT, false, false, false));
  g.push_back(make(kBH, kT, kD, kT, true, false, false));
}
std::vector<Gemm> step_gemms() {
  std::vector<Gemm> g;
  for (int64_t l = 0; l < kLayers; ++l) {
    add_linear(g, kC, 3 * kC);  // qkv
    add_attention(g);
    add_linear(g, kC, kC);  // proj
    add_linear(g, kC, kF);  // fc1
    add_linear(g, kF, kC);  // fc2
  }
  return g;
}
double gemm_flops() {
  const double lin = 2.0 * kN * (3 * kC * kC + kC * kC + 2 * kC * kF), att = 2.0 * 2.0 * kBH * kT * kT * kD;
  return 3.0 * kLayers * (lin + att);  // forward + two backward GEMMs each
}
void BM_encoder_gemms_alone(benchmark::State& st) {
  const std::vector<Gemm> gemms = step_gemms();
  for (auto _ : st)
    for (const auto& g : gemms) benchmark::DoNotOptimize(gemm(g.a, g.ta, g.b, g.tb, g.bias).raw_data());
  st.counters["GFLOP/s"] =
      benchmark::Counter(gemm_flops(), benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
}  // namespace

BENCHMARK(BM_encoder_step)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_encoder_gemms_alone)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

int main(int argc, char** argv) {
  const auto rep = lowbit::bench::run_all(argc, argv, [](int n) { set_num_threads(n); });
  const double step = rep.seconds("BM_encoder_step") * 1e3, gemms = rep.seconds("BM_encoder_gemms_alone") * 1e3;
  if (step <= 0 || gemms <= 0) return 0;  // filtered out
  std::printf("\nthreads=%d, %.1f GFLOP of GEMMs per step\n%-44s %12s %12s %8s %s\n", get_num_threads(),
              gemm_flops() / 1e9, "target", "step", "GEMMs alone", "share", "goal");
  std::printf("%-44s %9.2f ms %9.2f ms %7.1f%% %s\n", "2-layer encoder step (B32 T128 C256 ff1024)", step, gemms,
              100.0 * gemms / step, ">= 85% (GEMM share)");
  return 0;
}
