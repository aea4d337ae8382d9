// Elementwise and reduction bandwidth on 16M floats vs a plain triad loop (a = b + s*c) measured
// in the same run. GB/s counts bytes read + written by the op (add/mul: 3 arrays, gelu: 2,
// sum: 1; triad: 3). Prints each op's share of the triad bandwidth.
//   ./build/bench/bench_elementwise [--threads=N]
#include <omp.h>

#include <cstring>

#include "bench_util.h"
#include <lowbit/lowbit.h>

using namespace lowbit;

namespace {
constexpr int64_t kN = int64_t{1} << 24;

void bytes(benchmark::State& st, int arrays) {
  st.counters["GB/s"] = benchmark::Counter(static_cast<double>(arrays) * kN * 4,
                                           benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void BM_triad(benchmark::State& st) {
  Tensor a = empty({kN}), b = randn({kN}), c = randn({kN});
  for (auto _ : st) {
    lowbit::bench::triad(a.data_ptr<float>(), b.data_ptr<float>(), c.data_ptr<float>(), kN, get_num_threads());
    benchmark::ClobberMemory();
  }
  bytes(st, 3);
}
void BM_add(benchmark::State& st) {
  Tensor a = randn({kN}), b = randn({kN});
  NoGradGuard ng;
  for (auto _ : st) benchmark::DoNotOptimize(add(a, b).raw_data());
  bytes(st, 3);
}
void BM_mul(benchmark::State& st) {
  Tensor a = randn({kN}), b = randn({kN});
  NoGradGuard ng;
  for (auto _ : st) benchmark::DoNotOptimize(mul(a, b).raw_data());
  bytes(st, 3);
}
void BM_gelu(benchmark::State& st) {
  Tensor a = randn({kN});
  NoGradGuard ng;
  for (auto _ : st) benchmark::DoNotOptimize(gelu(a).raw_data());
  bytes(st, 2);
}
void BM_sum(benchmark::State& st) {
  Tensor a = randn({kN});
  NoGradGuard ng;
  for (auto _ : st) benchmark::DoNotOptimize(sum(a).item<float>());
  bytes(st, 1);
}
}  // namespace

BENCHMARK(BM_triad)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_add)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_mul)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_gelu)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_sum)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);

int main(int argc, char** argv) {
  const auto rep = lowbit::bench::run_all(argc, argv, [](int n) { set_num_threads(n); });
  const double triad = rep.counter("BM_triad", "GB/s") / 1e9;
  std::printf("\nthreads=%d, 16M float32 elements\n%-8s %10s %10s %12s\n", get_num_threads(), "op", "GB/s",
              "triad GB/s", "% of triad");
  for (const char* op : {"add", "mul", "gelu", "sum"}) {
    const double gbs = rep.counter(std::string("BM_") + op, "GB/s") / 1e9;
    std::printf("%-8s %10.1f %10.1f %11.0f%%\n", op, gbs, triad, 100.0 * gbs / triad);
  }
  return 0;
}
