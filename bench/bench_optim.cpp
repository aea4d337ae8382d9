// Low-bit optimizers (issue #13): one optimizer step over 10M parameters (40 x 512 x 512 matrices,
// all quantized) for lowbit's fp32 AdamW and AdamW8bit / AdamW4bit / AdamWFp8 / SGD8bit / Lion8bit,
// in one run, with the bytes each moves per parameter turned into GB/s against the triad, and the
// state bytes per parameter.
//   ./build/bench/bench_optim [--threads=N]
#include "bench_util.h"
#include <lowbit/lowbit.h>

using namespace lowbit;

namespace {
constexpr int kMats = 40;
constexpr int64_t kRows = 512, kCols = 512, kParams = kMats * kRows * kCols;

std::vector<Tensor> params_with_grads() {
  manual_seed(0);
  std::vector<Tensor> ps;
  for (int i = 0; i < kMats; ++i) {
    Tensor p = mul(randn({kRows, kCols}), full({1}, 0.1f));
    p.requires_grad_();
    p.set_grad(mul(randn({kRows, kCols}), full({1}, 0.01f)));
    ps.push_back(p);
  }
  return ps;
}
// bytes one step moves per parameter: p read+write 8, g read 4, states read+write
void run(benchmark::State& st, const std::string& name, double state_bytes_rw) {
  auto ps = params_with_grads();
  optim::OptimizerSettings set;
  set.momentum = 0.9;
  auto opt = optim::make_optimizer(name, {{ps, {}}}, set);
  opt->step();  // states exist
  for (auto _ : st) opt->step();
  st.counters["GB/s"] = benchmark::Counter((12.0 + state_bytes_rw) * kParams,
                                           benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  if (auto* lb = dynamic_cast<optim::LowBitOptimizer*>(opt.get()))
    st.counters["state_B/param"] = static_cast<double>(lb->state_bytes()) / kParams;
  else
    st.counters["state_B/param"] = 8.0;
}
void BM_adamw_fp32(benchmark::State& st) { run(st, "adamw", 16.0); }  // m, v: 4 + 4 read and written
void BM_adamw_8bit(benchmark::State& st) { run(st, "adamw8bit", 2 * 2 * (1 + 4.0 / 256)); }
void BM_adamw_4bit(benchmark::State& st) { run(st, "adamw4bit", 2 * 2 * (0.5 + 4.0 / 128)); }
void BM_adamw_fp8(benchmark::State& st) { run(st, "adamwfp8", 2 * 2 * (1 + 4.0 / 256)); }
void BM_sgd_8bit(benchmark::State& st) { run(st, "sgd8bit", 2 * (1 + 4.0 / 256)); }
void BM_lion_8bit(benchmark::State& st) { run(st, "lion8bit", 2 * (1 + 4.0 / 256)); }
// The block quantizer alone, on one L1-resident block (one thread): ns per value
void BM_quantize_block(benchmark::State& st) {
  const bool fp8 = st.range(0) == 2;
  const core::Codebook& cb =
      core::codebook(st.range(0) == 0 ? core::CodebookId::Dynamic8Signed : core::CodebookId::Dynamic8Unsigned);
  std::vector<float> x(256);
  manual_seed(1);
  Tensor r = randn({256});
  for (int i = 0; i < 256; ++i)
    x[static_cast<size_t>(i)] =
        st.range(0) == 1 ? r.data_ptr<float>()[i] * r.data_ptr<float>()[i] : r.data_ptr<float>()[i];
  std::vector<uint8_t> codes(256);
  for (auto _ : st) {
    benchmark::DoNotOptimize(fp8 ? core::fp8_state_quantize_block(x.data(), 256, codes.data())
                                 : core::codebook_quantize_block(cb, x.data(), 256, codes.data()));
    benchmark::ClobberMemory();
  }
  st.counters["ns/value"] =
      benchmark::Counter(256, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
void BM_triad(benchmark::State& st) { lowbit::bench::triad_benchmark(st, int64_t{1} << 24, get_num_threads()); }
}  // namespace

BENCHMARK(BM_triad)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_adamw_fp32)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_adamw_8bit)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_adamw_4bit)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_adamw_fp8)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_sgd_8bit)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_lion_8bit)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_quantize_block)->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kNanosecond);

int main(int argc, char** argv) {
  const auto rep = lowbit::bench::run_all(argc, argv, [](int n) { set_num_threads(n); });
  std::printf("\nthreads=%d, %lld parameters\n%-34s %10s %12s %8s %10s %s\n", get_num_threads(),
              static_cast<long long>(kParams), "target", "ours", "fp32 AdamW", "ratio", "GB/s/triad", "goal");
  const double fp32 = rep.seconds("BM_adamw_fp32") * 1e3, tr = rep.counter("BM_triad", "GB/s");
  for (const auto& [what, bm, goal] :
       {std::tuple{"AdamW8bit step", "BM_adamw_8bit", "<= 0.80x"},
        std::tuple{"AdamW4bit step", "BM_adamw_4bit", "<= 0.90x"}, std::tuple{"AdamWFp8 step", "BM_adamw_fp8", ""},
        std::tuple{"SGD8bit step (momentum)", "BM_sgd_8bit", ""}, std::tuple{"Lion8bit step", "BM_lion_8bit", ""},
        std::tuple{"fp32 AdamW step (lowbit)", "BM_adamw_fp32", "(reference)"}}) {
    const double t = rep.seconds(bm) * 1e3;
    if (t > 0 && fp32 > 0 && tr > 0)
      std::printf("%-34s %7.2f ms %9.2f ms %7.2fx %9.2fx %s  (state %.3f B/param)\n", what, t, fp32, t / fp32,
                  rep.counter(bm, "GB/s") / tr, goal, rep.counter(bm, "state_B/param"));
  }
  return 0;
}
