// The low-precision codecs of the format table on 16M floats, next to their references measured in
// the same run: the vectorized float32 -> float8_e4m3fn encoder (minifloat_encode_n, what
// Tensor::to(float8_e4m3fn) and core::encode_n run) against the scalar reference encoder (the
// same codes, one value at a time) and against the triad bandwidth (the encoder moves 5 bytes per
// element: 4 read, 1 written), and the table decoder.
//   ./build/bench/bench_format [--threads=N]
#include <vector>

#include "bench_util.h"
#include <lowbit/lowbit.h>

using namespace lowbit;

namespace {
constexpr int64_t kN = int64_t{1} << 24;

void BM_triad(benchmark::State& st) { lowbit::bench::triad_benchmark(st, kN, get_num_threads()); }

template <bool kVectorized>
void BM_encode_e4m3(benchmark::State& st) {
  const Tensor x = mul(randn({kN}), 100.0);  // spans normals, subnormals and saturation
  std::vector<uint8_t> codes(kN);
  const float* xp = x.data_ptr<float>();
  for (auto _ : st) {
    if constexpr (kVectorized) {
      minifloat_encode_n(kFloat8E4M3FN, xp, codes.data(), kN, true);
    } else {
      detail::parallel_for(kN, 1 << 16, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) codes[i] = static_cast<uint8_t>(minifloat_encode(kFloat8E4M3FN, xp[i], true));
      });
    }
    benchmark::DoNotOptimize(codes.data());
    benchmark::ClobberMemory();
  }
  st.counters["GB/s"] =
      benchmark::Counter(5.0 * kN, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void BM_decode_e4m3(benchmark::State& st) {
  const Tensor codes = mul(randn({kN}), 100.0).to(kFloat8_e4m3fn);
  std::vector<float> out(kN);
  for (auto _ : st) {
    minifloat_decode_n(kFloat8E4M3FN, static_cast<const uint8_t*>(codes.raw_data()), out.data(), kN);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  st.counters["GB/s"] =
      benchmark::Counter(5.0 * kN, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
}  // namespace

BENCHMARK(BM_triad)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_encode_e4m3<true>)
    ->Name("BM_encode_e4m3_vectorized")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(0.5);
BENCHMARK(BM_encode_e4m3<false>)
    ->Name("BM_encode_e4m3_scalar")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(0.5);
BENCHMARK(BM_decode_e4m3)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);

int main(int argc, char** argv) {
  const auto rep = lowbit::bench::run_all(argc, argv, [](int n) { set_num_threads(n); });
  const double tr = rep.counter("BM_triad", "GB/s") / 1e9;
  const double vec = rep.counter("BM_encode_e4m3_vectorized", "GB/s") / 1e9;
  const double sca = rep.counter("BM_encode_e4m3_scalar", "GB/s") / 1e9;
  const double dec = rep.counter("BM_decode_e4m3", "GB/s") / 1e9;
  std::printf("\nthreads=%d (GB/s: 5 bytes per element)\n", get_num_threads());
  std::printf("encode e4m3 vectorized  %7.2f GB/s  %5.2fx the scalar reference (%.2f GB/s), %.2fx triad (%.2f GB/s)\n",
              vec, vec / sca, sca, vec / tr, tr);
  std::printf("decode e4m3 (table)     %7.2f GB/s  %5.2fx triad\n", dec, dec / tr);
  return 0;
}
