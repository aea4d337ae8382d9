// MX targets of docs/PERFORMANCE.md (issue #12), each next to its reference measured in the same
// run:
//  * MXLinear forward + backward (M = 4096 tokens, K = N = 1024) in the fast mode (mxfp8_rceil,
//    mxfp4_cutlass) and in emulate mode (torchao's EMULATED path) against the float32 Linear;
//  * to_mx (amax + e8m0 scale + cast, 16M floats; 5 bytes per element: 4 read, 1 written, plus a
//    scale byte per 32) against the triad bandwidth.
//   ./build/bench/bench_mx [--threads=N]
#include "bench_util.h"
#include <lowbit/lowbit.h>

using namespace lowbit;

namespace {
constexpr int64_t kM = 4096, kK = 1024, kN = 1024, kCastN = int64_t{1} << 24;

void linear_step(benchmark::State& st, const std::string& recipe) {
  manual_seed(0);
  std::shared_ptr<nn::Module> m = std::make_shared<nn::Linear>(kK, kN);
  if (!recipe.empty()) m = mx::convert_to_mx_training(m, mx::MXLinearConfig::from_recipe_name(recipe));
  lowbit::bench::linear_fwd_bwd(st, m, kM, kK, kN);
}
void BM_linear_fp32(benchmark::State& st) { linear_step(st, ""); }
void BM_mxfp8_rceil(benchmark::State& st) { linear_step(st, "mxfp8_rceil"); }
void BM_mxfp8_emulated_rceil(benchmark::State& st) { linear_step(st, "mxfp8_emulated_rceil"); }
void BM_mxfp4_cutlass(benchmark::State& st) { linear_step(st, "mxfp4_cutlass"); }

void to_mx_bench(benchmark::State& st, mx::FormatId elem) {
  const Tensor x = randn({kCastN / 4096, 4096});
  for (auto _ : st) benchmark::DoNotOptimize(mx::to_mx(x, elem, 32, mx::E8M0Rounding::RCeil).qdata.raw_data());
  st.counters["GB/s"] =
      benchmark::Counter(5.0 * kCastN, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
void BM_to_mx_fp8(benchmark::State& st) { to_mx_bench(st, mx::FormatId::Float8E4M3FN); }
void BM_to_mx_fp4(benchmark::State& st) { to_mx_bench(st, mx::FormatId::Float4E2M1FN); }
void BM_triad(benchmark::State& st) { lowbit::bench::triad_benchmark(st, kCastN, get_num_threads()); }
}  // namespace

BENCHMARK(BM_linear_fp32)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_mxfp8_rceil)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_mxfp4_cutlass)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_mxfp8_emulated_rceil)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_triad)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_to_mx_fp8)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_to_mx_fp4)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);

int main(int argc, char** argv) {
  const auto rep = lowbit::bench::run_all(argc, argv, [](int n) { set_num_threads(n); });
  std::printf("\nthreads=%d\n%-46s %10s %12s %8s %s\n", get_num_threads(), "target", "ours", "reference", "ratio",
              "goal");
  const double fp32 = rep.seconds("BM_linear_fp32") * 1e3;
  for (const auto& [what, bm, goal] :
       {std::tuple{"MXLinear fwd+bwd mxfp8_rceil vs fp32 Linear", "BM_mxfp8_rceil", "<= 0.70x"},
        std::tuple{"MXLinear fwd+bwd mxfp4_cutlass vs fp32", "BM_mxfp4_cutlass", ""},
        std::tuple{"MXLinear fwd+bwd mxfp8 emulated vs fp32", "BM_mxfp8_emulated_rceil", "(torchao's CPU path)"}}) {
    const double t = rep.seconds(bm) * 1e3;
    if (t > 0 && fp32 > 0) std::printf("%-46s %7.2f ms %9.2f ms %7.2fx %s\n", what, t, fp32, t / fp32, goal);
  }
  const double tr = rep.counter("BM_triad", "GB/s") / 1e9;
  for (const char* bm : {"BM_to_mx_fp8", "BM_to_mx_fp4"}) {
    const double gb = rep.counter(bm, "GB/s") / 1e9;
    if (gb > 0 && tr > 0)
      std::printf("%-46s %7.2f GB/s %6.2f GB/s %6.2fx %s\n", bm + 3, gb, tr, gb / tr, ">= 0.50x triad");
  }
  return 0;
}
