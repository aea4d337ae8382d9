// Float8 training targets of docs/PERFORMANCE.md (issue #11), each next to its reference measured
// in the same run:
//  * Float8Linear forward + backward (M = 4096 tokens, K = N = 1024) in the fast mode for each
//    recipe, and in emulate mode, against the float32 Linear; the three bf16 gemms alone (the
//    floor the fast mode is built on: 3 x 2·M·K·N FLOP at this CPU's bf16 rate);
//  * the training step of configs/gpt_chars.toml's GPT in float32, bf16 mixed precision
//    (training.precision = "bf16") and float8 (rowwise, tensorwise, blockwise);
//  * the cast kernels (amax + scale + cast, 16M floats; 5 bytes per element: 4 read, 1 written)
//    and float8 QAT's fake quantization (13 bytes per element) against the triad bandwidth.
//   ./build/bench/bench_float8 [--threads=N]
#include "bench_util.h"
#include <lowbit/lowbit.h>

using namespace lowbit;

namespace {
constexpr int64_t kM = 4096, kK = 1024, kN = 1024, kCastN = int64_t{1} << 24;

void linear_step(benchmark::State& st, const std::string& recipe, bool emulate) {
  manual_seed(0);
  std::shared_ptr<nn::Module> m = std::make_shared<nn::Linear>(kK, kN);
  if (!recipe.empty()) {
    float8::Float8LinearConfig c = float8::Float8LinearConfig::from_recipe_name(recipe);
    c.emulate = emulate;
    m = float8::convert_to_float8_training(m, c);
  }
  lowbit::bench::linear_fwd_bwd(st, m, kM, kK, kN);
}
void BM_linear_fp32(benchmark::State& st) { linear_step(st, "", false); }
void BM_float8_tensorwise(benchmark::State& st) { linear_step(st, "tensorwise", false); }
void BM_float8_rowwise(benchmark::State& st) { linear_step(st, "rowwise", false); }
void BM_float8_rowwise_with_gw_hp(benchmark::State& st) { linear_step(st, "rowwise_with_gw_hp", false); }
void BM_float8_rowwise_emulate(benchmark::State& st) { linear_step(st, "rowwise", true); }
void BM_float8_blockwise(benchmark::State& st) { linear_step(st, "blockwise", false); }

// The fast mode's three gemms alone, on bf16 operands: X·Wᵀ, G·W, Gᵀ·X.
void BM_bf16_gemms_alone(benchmark::State& st) {
  const Tensor x = randn({kM, kK}).to(kBFloat16), w = randn({kN, kK}).to(kBFloat16), g = randn({kM, kN}).to(kBFloat16);
  for (auto _ : st) {
    benchmark::DoNotOptimize(gemm_bf16(x, false, w, true).raw_data());
    benchmark::DoNotOptimize(gemm_bf16(g, false, w, false).raw_data());
    benchmark::DoNotOptimize(gemm_bf16(g, true, x, false).raw_data());
  }
  st.counters["GFLOP/s"] = benchmark::Counter(3.0 * 2.0 * kM * kK * kN, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}

// One training step of configs/gpt_chars.toml's model (4 layers, d_model 256, context 128, batch
// 32, vocabulary 96): zero_grad, forward, cross-entropy, backward, AdamW; float32 or float8 with
// the head kept in float32 (the shipped gpt_chars_float8.toml).
void gpt_step(benchmark::State& st, const std::string& recipe) {
  manual_seed(0);
  nn::GPTConfig cfg;
  cfg.vocab_size = 96;
  std::shared_ptr<nn::Module> m = std::make_shared<nn::GPT>(cfg);
  if (!recipe.empty())
    m = float8::convert_to_float8_training(m, float8::Float8LinearConfig::from_recipe_name(recipe),
                                           [](const nn::Linear&, const std::string& fqn) { return fqn != "lm_head"; });
  optim::AdamW opt(m->parameters());
  const Tensor idx = randint(0, 96, {32, 128}), tgt = randint(0, 96, {32 * 128});
  for (auto _ : st) {
    opt.zero_grad();
    Tensor loss = cross_entropy(m->forward(idx).reshape({-1, 96}), tgt);
    loss.backward();
    opt.step();
  }
}
void BM_gpt_step_fp32(benchmark::State& st) { gpt_step(st, ""); }
void BM_gpt_step_bf16(benchmark::State& st) {  // training.precision = "bf16"
  set_float32_matmul_precision("medium");
  gpt_step(st, "");
  set_float32_matmul_precision("highest");
}
void BM_gpt_step_float8_rowwise(benchmark::State& st) { gpt_step(st, "rowwise"); }
void BM_gpt_step_float8_tensorwise(benchmark::State& st) { gpt_step(st, "tensorwise"); }
void BM_gpt_step_float8_blockwise(benchmark::State& st) { gpt_step(st, "blockwise"); }

void cast(benchmark::State& st, float8::ScalingGranularity g, int64_t axis) {
  const Tensor x = randn({kCastN / 4096, 4096});
  for (auto _ : st)
    benchmark::DoNotOptimize(float8::to_float8_dynamic(x, kFloat8_e4m3fn, g, axis, true).data.raw_data());
  st.counters["GB/s"] =
      benchmark::Counter(5.0 * kCastN, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
void BM_cast_rowwise(benchmark::State& st) { cast(st, float8::ScalingGranularity::Axiswise, -1); }
void BM_cast_colwise(benchmark::State& st) { cast(st, float8::ScalingGranularity::Axiswise, 0); }
void BM_cast_tensorwise(benchmark::State& st) { cast(st, float8::ScalingGranularity::Tensorwise, -1); }
void BM_cast_blockwise_1x128(benchmark::State& st) {
  const Tensor x = randn({kCastN / 4096, 4096});
  for (auto _ : st) benchmark::DoNotOptimize(float8::to_float8_blockwise(x, kFloat8_e4m3fn, 1, 128).data.raw_data());
  st.counters["GB/s"] =
      benchmark::Counter(5.0 * kCastN, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
void BM_cast_blockwise_128x128(benchmark::State& st) {
  const Tensor x = randn({kCastN / 4096, 4096});
  for (auto _ : st) benchmark::DoNotOptimize(float8::to_float8_blockwise(x, kFloat8_e4m3fn, 128, 128).data.raw_data());
  st.counters["GB/s"] =
      benchmark::Counter(5.0 * kCastN, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
// float8 QAT's fake quantization (Float8FakeQuantizeConfig, per row; 13 bytes per element: x read,
// y and the fp8 values written, the clamp mask)
void BM_fake_quant_rowwise(benchmark::State& st) {
  const Tensor x = randn({kCastN / 4096, 4096});
  const qat::Float8FakeQuantizeConfig cfg(kFloat8_e4m3fn, qat::PerRow{});
  qat::FakeQuantizer fq(cfg);
  for (auto _ : st) benchmark::DoNotOptimize(cfg.fake_quantize(x, fq).raw_data());
  st.counters["GB/s"] =
      benchmark::Counter(13.0 * kCastN, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
void BM_triad(benchmark::State& st) { lowbit::bench::triad_benchmark(st, kCastN, get_num_threads()); }
}  // namespace

BENCHMARK(BM_linear_fp32)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_float8_tensorwise)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_float8_rowwise)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_float8_rowwise_with_gw_hp)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_float8_rowwise_emulate)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_float8_blockwise)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_bf16_gemms_alone)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_gpt_step_fp32)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_gpt_step_bf16)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_gpt_step_float8_rowwise)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_gpt_step_float8_tensorwise)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_gpt_step_float8_blockwise)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_triad)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_cast_rowwise)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_cast_colwise)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_cast_tensorwise)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_cast_blockwise_1x128)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_cast_blockwise_128x128)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_fake_quant_rowwise)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);

int main(int argc, char** argv) {
  const auto rep = lowbit::bench::run_all(argc, argv, [](int n) { set_num_threads(n); });
  std::printf("\nthreads=%d\n%-46s %10s %12s %8s %s\n", get_num_threads(), "target", "ours", "reference", "ratio",
              "goal");
  const double fp32 = rep.seconds("BM_linear_fp32") * 1e3;
  auto time_row = [&](const char* what, const char* bm, const char* goal) {
    const double t = rep.seconds(bm) * 1e3;
    if (t > 0 && fp32 > 0) std::printf("%-46s %7.2f ms %9.2f ms %7.2fx %s\n", what, t, fp32, t / fp32, goal);
  };
  time_row("Float8Linear fwd+bwd tensorwise vs fp32 Linear", "BM_float8_tensorwise", "<= 0.60x");
  time_row("Float8Linear fwd+bwd rowwise vs fp32 Linear", "BM_float8_rowwise", "<= 0.65x");
  time_row("Float8Linear fwd+bwd rowwise_with_gw_hp vs fp32", "BM_float8_rowwise_with_gw_hp", "");
  time_row("Float8Linear fwd+bwd rowwise emulate vs fp32", "BM_float8_rowwise_emulate", "(torchao's CPU path)");
  time_row("Float8Linear fwd+bwd blockwise vs fp32 Linear", "BM_float8_blockwise", "");
  time_row("the three bf16 gemms alone vs fp32 Linear", "BM_bf16_gemms_alone", "(the floor)");
  const double gpt = rep.seconds("BM_gpt_step_fp32") * 1e3;
  for (const auto& [what, bm, goal] :
       {std::tuple{"gpt_chars step bf16 mixed precision vs fp32", "BM_gpt_step_bf16", "(baseline)"},
        std::tuple{"gpt_chars step float8 rowwise vs fp32", "BM_gpt_step_float8_rowwise", "<= 0.80x"},
        std::tuple{"gpt_chars step float8 tensorwise vs fp32", "BM_gpt_step_float8_tensorwise", ""},
        std::tuple{"gpt_chars step float8 blockwise vs fp32", "BM_gpt_step_float8_blockwise", ""}}) {
    const double t = rep.seconds(bm) * 1e3;
    if (t > 0 && gpt > 0) std::printf("%-46s %7.2f ms %9.2f ms %7.2fx %s\n", what, t, gpt, t / gpt, goal);
  }
  const double tr = rep.counter("BM_triad", "GB/s") / 1e9;
  for (const char* bm : {"BM_cast_rowwise", "BM_cast_colwise", "BM_cast_tensorwise", "BM_cast_blockwise_1x128",
                         "BM_cast_blockwise_128x128", "BM_fake_quant_rowwise"}) {
    const double gb = rep.counter(bm, "GB/s") / 1e9;
    if (gb > 0 && tr > 0)
      std::printf("%-46s %7.2f GB/s %6.2f GB/s %6.2fx %s\n", bm + 3, gb, tr, gb / tr,
                  std::string(bm).find("cast") != std::string::npos ? ">= 0.50x triad" : "(float8 QAT)");
  }
  return 0;
}
