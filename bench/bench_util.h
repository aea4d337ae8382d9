// Shared benchmark helpers: a console reporter that also keeps each run's real time, so a
// program can print "ours vs reference" ratios measured in the same run.
#pragma once
#include <benchmark/benchmark.h>
#include <lowbit/autograd/autograd.h>
#include <lowbit/autograd/tensor.h>
#include <lowbit/nn/layers.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace lowbit::bench {

class CollectingReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs)
      if (r.run_type == Run::RT_Iteration || r.aggregate_name == "median") {
        seconds_[r.benchmark_name()] = r.GetAdjustedRealTime() * time_unit_factor(r.time_unit);
        for (const auto& [k, v] : r.counters) counters_[r.benchmark_name()][k] = v.value;
      }
    ConsoleReporter::ReportRuns(runs);
  }
  /// Seconds per iteration of the benchmark whose full name starts with prefix (first match); the
  /// median when the run had --benchmark_repetitions.
  double seconds(const std::string& name) const {
    for (const auto& [k, v] : seconds_)
      if ((k == name || k.rfind(name + "/", 0) == 0) && k.size() > 7 && k.compare(k.size() - 7, 7, "_median") == 0)
        return v;
    for (const auto& [k, v] : seconds_)
      if (k == name || k.rfind(name + "/", 0) == 0 || k.rfind(name + "_median", 0) == 0) return v;
    return 0.0;
  }
  double counter(const std::string& name, const std::string& key) const {
    for (const auto& [k, v] : counters_)
      if (k == name || k.rfind(name + "/", 0) == 0) {
        auto it = v.find(key);
        if (it != v.end()) return it->second;
      }
    return 0.0;
  }

 private:
  static double time_unit_factor(benchmark::TimeUnit u) {
    switch (u) {
      case benchmark::kNanosecond: return 1e-9;
      case benchmark::kMicrosecond: return 1e-6;
      case benchmark::kMillisecond: return 1e-3;
      default: return 1.0;
    }
  }
  std::map<std::string, double> seconds_;
  std::map<std::string, std::map<std::string, double>> counters_;
};

/// Applies --threads=N (lowbit and oneDNN), initializes Google Benchmark and runs every
/// registered benchmark through a CollectingReporter, which is returned for the summary table.
inline CollectingReporter run_all(int argc, char** argv, void (*set_threads)(int)) {
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]).rfind("--threads=", 0) == 0) set_threads(std::atoi(argv[i] + 10));
  benchmark::Initialize(&argc, argv);
  CollectingReporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  return rep;
}

/// A benchmark body: forward + backward of a linear layer module m (an nn::Linear or a module
/// replacing one) on an M x K input with upstream gradient G, reporting "GFLOP/s" (its three
/// gemms, 3 x 2 M K N).
template <typename Module>
inline void linear_fwd_bwd(benchmark::State& st, const std::shared_ptr<Module>& m, int64_t M, int64_t K, int64_t N) {
  lowbit::Tensor x = lowbit::randn({M, K}).requires_grad_();
  const lowbit::Tensor g = lowbit::randn({M, N});
  auto* lin = dynamic_cast<lowbit::nn::Linear*>(m.get());
  for (auto _ : st) {
    x.set_grad(lowbit::Tensor());
    lin->weight.set_grad(lowbit::Tensor());
    lin->bias.set_grad(lowbit::Tensor());
    m->forward(x).backward(g);
    benchmark::DoNotOptimize(x.grad().raw_data());
  }
  st.counters["GFLOP/s"] = benchmark::Counter(3.0 * 2.0 * M * K * N, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}

/// The STREAM triad a = b + s*c over n floats with every thread (the bandwidth reference).
inline void triad(float* a, const float* b, const float* c, int64_t n, int threads) {
  const float s = 1.5f;
#pragma omp parallel for simd schedule(static) num_threads(threads)
  for (int64_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

/// A benchmark body: the triad over n floats with `threads` threads, reporting "GB/s" (12 bytes
/// per element: two reads, one write), the reference of every bandwidth figure.
inline void triad_benchmark(benchmark::State& st, int64_t n, int threads) {
  std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n), 1.0f), c(static_cast<size_t>(n), 2.0f);
  for (auto _ : st) {
    triad(a.data(), b.data(), c.data(), n, threads);
    benchmark::ClobberMemory();
  }
  st.counters["GB/s"] = benchmark::Counter(12.0 * static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate,
                                           benchmark::Counter::kIs1000);
}

}  // namespace lowbit::bench
