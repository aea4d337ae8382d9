// Quantization targets of docs/PERFORMANCE.md, each next to its reference measured in the same run:
//  * int4 per-group-32 symmetric fake quantization, forward + backward on 16M floats, vs the
//    triad bandwidth (GB/s counts x, y, dy, dx: 16 bytes per element);
//  * the Fashion-MNIST MLP (784-1024-1024-10, batch 256) training step (zero_grad, forward,
//    cross-entropy, backward, AdamW) with 8da4w fake quantization vs float32;
//  * converted linears (4096 x 4096 weight): 8da4w and int8-dyn at batch 256, int4 and int8
//    weight-only at batch 1, vs the float32 linear at the same batch; the converted modules run
//    in their default (integer-kernel) mode;
//  * the peer: oneDNN's own u8 x s8 -> s32 matmul (brgemm, weights reordered once to its blocked
//    layout) and its float32 matmul on the same 256 x 4096 x 4096 problem — the int8/fp32 ratio
//    this CPU's VNNI allows for the GEMM alone.
//   ./build/bench/bench_qat [--threads=N] [--benchmark_filter=...]
#include "onednn_peer.h"

#include "bench_util.h"
#include <lowbit/lowbit.h>

using namespace lowbit;

namespace {
constexpr int64_t kN = int64_t{1} << 24;

void BM_triad(benchmark::State& st) { lowbit::bench::triad_benchmark(st, kN, get_num_threads()); }

void BM_fake_quant_int4_g32(benchmark::State& st) {
  Tensor x = randn({4096, kN / 4096}).requires_grad_();
  const Tensor g = randn({4096, kN / 4096});
  qat::FakeQuantizer fq(qat::IntxFakeQuantizeConfig("int4", qat::PerGroup{32}));
  for (auto _ : st) {
    x.set_grad(Tensor());
    Tensor y = fq.forward(x);
    y.backward(g);
    benchmark::DoNotOptimize(x.grad().raw_data());
  }
  st.counters["GB/s"] =
      benchmark::Counter(16.0 * kN, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

std::shared_ptr<nn::Module> mlp() {
  manual_seed(0);
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(784, 1024), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(1024, 1024),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(1024, 10)});
}
void mlp_steps(benchmark::State& st, std::shared_ptr<nn::Module> model) {
  optim::AdamW opt(model->parameters());
  const Tensor x = randn({256, 784}), y = randint(0, 10, {256});
  for (auto _ : st) {
    opt.zero_grad();
    Tensor loss = cross_entropy(model->forward(x), y);
    loss.backward();
    opt.step();
  }
}
void BM_mlp_step_fp32(benchmark::State& st) { mlp_steps(st, mlp()); }
void BM_mlp_step_8da4w_qat(benchmark::State& st) {
  auto base = qat::recipe_config("8da4w", "int4", 32);
  const qat::QATConfig cfg(base, "prepare");
  mlp_steps(st, qat::quantize_(mlp(), cfg, qat::compatible_linears(cfg)));
}

std::shared_ptr<nn::Linear> big_linear() {
  manual_seed(0);
  return std::make_shared<nn::Linear>(4096, 4096);
}
void linear_forward(benchmark::State& st, const std::shared_ptr<nn::Module>& m, int64_t batch) {
  const Tensor x = randn({batch, 4096});
  NoGradGuard ng;
  for (auto _ : st) benchmark::DoNotOptimize(m->forward(x).raw_data());
}
std::shared_ptr<nn::Module> converted(const std::string& recipe) {
  return qat::quantize_(big_linear(), *qat::recipe_config(recipe, "int4", 32));
}

void BM_linear_fp32_b256(benchmark::State& st) { linear_forward(st, big_linear(), 256); }
void BM_linear_8da4w_b256(benchmark::State& st) { linear_forward(st, converted("8da4w"), 256); }
void BM_linear_int8dyn_b256(benchmark::State& st) { linear_forward(st, converted("int8-dyn"), 256); }
void BM_linear_fp32_b1(benchmark::State& st) { linear_forward(st, big_linear(), 1); }
// Decode through 8 distinct 4096^2 layers: 84 MB of int4 codes + scales, more than this CPU's
// 32 MB L3 (one int4 layer alone stays cache-resident between iterations; fp32's 64 MB does not).
void stack_forward(benchmark::State& st, const std::string& recipe) {
  std::vector<std::shared_ptr<nn::Module>> layers;
  for (int i = 0; i < 8; ++i)
    layers.push_back(recipe.empty() ? std::static_pointer_cast<nn::Module>(big_linear()) : converted(recipe));
  Tensor x = randn({1, 4096});
  NoGradGuard ng;
  for (auto _ : st) {
    Tensor h = x;
    for (auto& l : layers) h = l->forward(h);
    benchmark::DoNotOptimize(h.raw_data());
  }
}
void BM_stack8_fp32_b1(benchmark::State& st) { stack_forward(st, ""); }
void BM_stack8_int4wo_b1(benchmark::State& st) { stack_forward(st, "int4-weight-only"); }
void BM_linear_int4wo_b1(benchmark::State& st) { linear_forward(st, converted("int4-weight-only"), 1); }
void BM_linear_int8wo_b1(benchmark::State& st) { linear_forward(st, converted("int8-weight-only"), 1); }
void BM_onednn_u8s8_s32_b256(benchmark::State& st) { lowbit::bench::onednn_gemm(st, true); }
void BM_onednn_f32_b256(benchmark::State& st) { lowbit::bench::onednn_gemm(st, false); }
}  // namespace

BENCHMARK(BM_triad)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_fake_quant_int4_g32)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_mlp_step_fp32)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_mlp_step_8da4w_qat)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_linear_fp32_b256)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_linear_8da4w_b256)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_linear_int8dyn_b256)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_onednn_u8s8_s32_b256)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_onednn_f32_b256)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_linear_fp32_b1)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_linear_int4wo_b1)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_linear_int8wo_b1)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_stack8_fp32_b1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_stack8_int4wo_b1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);

int main(int argc, char** argv) {
  const auto rep = lowbit::bench::run_all(argc, argv, [](int n) { set_num_threads(n); });
  std::printf("\nthreads=%d\n%-44s %12s %12s %8s %s\n", get_num_threads(), "target", "ours", "reference", "ratio",
              "goal");
  auto row = [](const char* what, double ours, double ref, const char* unit, double ratio, const char* goal) {
    if (ours <= 0 || ref <= 0) return;  // filtered out
    std::printf("%-44s %9.3f %-2s %9.3f %-2s %7.2fx %s\n", what, ours, unit, ref, unit, ratio, goal);
  };
  const double fq = rep.counter("BM_fake_quant_int4_g32", "GB/s") / 1e9, tr = rep.counter("BM_triad", "GB/s") / 1e9;
  row("int4 g32 fake-quant fwd+bwd 16M (GB/s)", fq, tr, "", fq / tr, ">= 0.50x triad");
  auto t = [&](const char* n) { return rep.seconds(n) * 1e3; };
  row("MLP step 8da4w QAT vs fp32 (ms)", t("BM_mlp_step_8da4w_qat"), t("BM_mlp_step_fp32"), "",
      t("BM_mlp_step_8da4w_qat") / t("BM_mlp_step_fp32"), "<= 1.25x");
  // ours vs a reference in ms, the ratio as the reference's time over ours (a speed-up)
  auto speedup = [&](const char* what, const char* ours, const char* ref, const char* goal) {
    row(what, t(ours), t(ref), "", t(ref) / t(ours), goal);
  };
  speedup("8da4w linear 4096^2 b256 vs fp32 (ms)", "BM_linear_8da4w_b256", "BM_linear_fp32_b256", ">= 4x faster");
  speedup("int8-dyn linear 4096^2 b256 vs fp32 (ms)", "BM_linear_int8dyn_b256", "BM_linear_fp32_b256", ">= 4x faster");
  speedup("peer: oneDNN u8s8->s32 vs its f32 GEMM (ms)", "BM_onednn_u8s8_s32_b256", "BM_onednn_f32_b256",
          "(VNNI ceiling, GEMM only)");
  speedup("ours 8da4w vs oneDNN u8s8 GEMM (ms)", "BM_linear_8da4w_b256", "BM_onednn_u8s8_s32_b256",
          "(ours incl. act. quant)");
  speedup("ours int8-dyn vs oneDNN u8s8 GEMM (ms)", "BM_linear_int8dyn_b256", "BM_onednn_u8s8_s32_b256",
          "(ours incl. act. quant)");
  speedup("int4 weight-only 4096^2 b1 vs fp32 (ms)", "BM_linear_int4wo_b1", "BM_linear_fp32_b1", ">= 4x faster");
  speedup("int4 w-only b1, 8 layers (out of L3) (ms)", "BM_stack8_int4wo_b1", "BM_stack8_fp32_b1", ">= 4x faster");
  speedup("int8 weight-only 4096^2 b1 vs fp32 (ms)", "BM_linear_int8wo_b1", "BM_linear_fp32_b1", "(no target)");
  return 0;
}
