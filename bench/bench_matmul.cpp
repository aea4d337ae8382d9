// lowbit linear/matmul vs oneDNN's matmul primitive called directly, at the MLP's shapes; and
// lowbit's bf16 GEMM (gemm_bf16: bf16 operands, fp32 accumulation) vs its fp32 GEMM at the MLP
// and transformer shapes (the engine of exact fp8/MX emulation).
// Forward: Y(256xN) = X(256xK)·Wᵀ; backward: dX = dY·W and dW = dYᵀ·X (the transposes are
// strides in both cases). Prints a table: lowbit ms, oneDNN ms, overhead %.
//   ./build/bench/bench_matmul [--threads=N]
#include <dnnl.hpp>

#include <cstring>

#include "bench_util.h"
#include <lowbit/lowbit.h>

using namespace lowbit;

namespace {
struct Shape3 {
  int64_t m, k, n;
  const char* name;
};
const Shape3 kShapes[] = {{256, 784, 1024, "256x784->1024"}, {256, 1024, 1024, "256x1024->1024"}};

// oneDNN direct: C(m,n) = op(A)·op(B) with A stored (m,k) or (k,m), B stored (k,n) or (n,k)
struct Direct {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  dnnl::matmul prim;
  dnnl::memory a, b, c;
  Direct(int64_t m, int64_t k, int64_t n, bool ta, bool tb, float* pa, float* pb, float* pc) {
    using dt = dnnl::memory::data_type;
    using d = dnnl::memory::dims;
    dnnl::memory::desc amd(d{m, k}, dt::f32, ta ? d{1, m} : d{k, 1});
    dnnl::memory::desc bmd(d{k, n}, dt::f32, tb ? d{1, k} : d{n, 1});
    dnnl::memory::desc cmd(d{m, n}, dt::f32, d{n, 1});
    prim = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(amd, bmd, cmd), eng));
    a = dnnl::memory(amd, eng, pa);
    b = dnnl::memory(bmd, eng, pb);
    c = dnnl::memory(cmd, eng, pc);
  }
  void run() {
    prim.execute(strm, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    strm.wait();
  }
};

void set_flops(benchmark::State& st, double flops) {
  st.counters["GFLOP/s"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void BM_lowbit_linear_fwd(benchmark::State& st) {
  const auto& s = kShapes[st.range(0)];
  Tensor x = randn({s.m, s.k}), w = randn({s.n, s.k});
  NoGradGuard ng;
  for (auto _ : st) benchmark::DoNotOptimize(linear(x, w).raw_data());
  set_flops(st, 2.0 * s.m * s.k * s.n);
}
void BM_onednn_linear_fwd(benchmark::State& st) {
  const auto& s = kShapes[st.range(0)];
  Tensor x = randn({s.m, s.k}), w = randn({s.n, s.k}), y = empty({s.m, s.n});
  Direct d(s.m, s.k, s.n, false, true, x.data_ptr<float>(), w.data_ptr<float>(), y.data_ptr<float>());
  for (auto _ : st) d.run();
  set_flops(st, 2.0 * s.m * s.k * s.n);
}
// Forward + backward through lowbit's autograd (backward: dX = dY·W, dW = dYᵀ·X) vs the three
// oneDNN primitives run back to back.
void BM_lowbit_linear_bwd(benchmark::State& st) {
  const auto& s = kShapes[st.range(0)];
  Tensor x = randn({s.m, s.k}).requires_grad_(), w = randn({s.n, s.k}).requires_grad_(), g = randn({s.m, s.n});
  for (auto _ : st) {
    Tensor y = linear(x, w);
    y.backward(g);
    benchmark::DoNotOptimize(w.grad().raw_data());
    x.set_grad(Tensor());
    w.set_grad(Tensor());
  }
  set_flops(st, 6.0 * s.m * s.k * s.n);
}
void BM_onednn_linear_bwd(benchmark::State& st) {
  const auto& s = kShapes[st.range(0)];
  Tensor x = randn({s.m, s.k}), w = randn({s.n, s.k}), g = randn({s.m, s.n}), dx = empty({s.m, s.k}),
         dw = empty({s.n, s.k});
  Direct ddx(s.m, s.n, s.k, false, false, g.data_ptr<float>(), w.data_ptr<float>(), dx.data_ptr<float>());
  Direct ddw(s.n, s.m, s.k, true, false, g.data_ptr<float>(), x.data_ptr<float>(), dw.data_ptr<float>());
  Tensor y = empty({s.m, s.n});
  Direct fwd(s.m, s.k, s.n, false, true, x.data_ptr<float>(), w.data_ptr<float>(), y.data_ptr<float>());
  for (auto _ : st) {
    fwd.run();
    ddx.run();
    ddw.run();
  }
  set_flops(st, 6.0 * s.m * s.k * s.n);
}
}  // namespace

BENCHMARK(BM_lowbit_linear_fwd)->DenseRange(0, 1)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_onednn_linear_fwd)->DenseRange(0, 1)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_lowbit_linear_bwd)->DenseRange(0, 1)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_onednn_linear_bwd)->DenseRange(0, 1)->Unit(benchmark::kMicrosecond)->UseRealTime();

// bf16 vs fp32: Y(m x n) = X(m x k) · Wᵀ with W (n x k), both through lowbit
struct GemmShape {
  int64_t m, k, n;
  const char* name;
};
const GemmShape kGemmShapes[] = {{256, 784, 1024, "MLP 256x784->1024"},
                                 {256, 1024, 1024, "MLP 256x1024->1024"},
                                 {4096, 256, 768, "GPT qkv 4096x256->768"},
                                 {4096, 256, 1024, "GPT fc 4096x256->1024"},
                                 {4096, 1024, 256, "GPT proj 4096x1024->256"}};
void BM_gemm_f32(benchmark::State& st) {
  const auto& s = kGemmShapes[st.range(0)];
  Generator g(1);
  const Tensor x = randn({s.m, s.k}, &g), w = randn({s.n, s.k}, &g);
  NoGradGuard ng;
  for (auto _ : st) benchmark::DoNotOptimize(linear(x, w).raw_data());
  set_flops(st, 2.0 * s.m * s.n * s.k);
}
void BM_gemm_bf16(benchmark::State& st) {
  const auto& s = kGemmShapes[st.range(0)];
  Generator g(1);
  const Tensor x = randn({s.m, s.k}, &g).to(kBFloat16), w = randn({s.n, s.k}, &g).to(kBFloat16);
  for (auto _ : st) benchmark::DoNotOptimize(gemm_bf16(x, false, w, true).raw_data());
  set_flops(st, 2.0 * s.m * s.n * s.k);
}
BENCHMARK(BM_gemm_f32)->DenseRange(0, 4)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_gemm_bf16)->DenseRange(0, 4)->Unit(benchmark::kMicrosecond)->UseRealTime();

int main(int argc, char** argv) {
  const auto rep = lowbit::bench::run_all(argc, argv, [](int n) { set_num_threads(n); });
  std::printf("\nthreads=%d\n%-28s %12s %12s %10s\n", get_num_threads(), "case", "lowbit us", "oneDNN us", "overhead");
  for (int i = 0; i < 2; ++i)
    for (const char* pass : {"fwd", "fwd+bwd"}) {
      const std::string suffix = std::string("linear_") + (pass[3] ? "bwd" : "fwd") + "/" + std::to_string(i);
      const double ours = rep.seconds("BM_lowbit_" + suffix) * 1e6, ref = rep.seconds("BM_onednn_" + suffix) * 1e6;
      std::printf("%-28s %12.1f %12.1f %+9.1f%%\n", (std::string(kShapes[i].name) + " " + pass).c_str(), ours, ref,
                  100.0 * (ours / ref - 1.0));
    }
  std::printf("\n%-28s %12s %12s %10s\n", "bf16 vs fp32 GEMM", "fp32 GF/s", "bf16 GF/s", "speedup");
  for (int i = 0; i < 5; ++i) {
    const auto& s = kGemmShapes[i];
    const double flops = 2.0 * s.m * s.n * s.k;
    const double f32 = rep.seconds("BM_gemm_f32/" + std::to_string(i)),
                 bf16 = rep.seconds("BM_gemm_bf16/" + std::to_string(i));
    std::printf("%-28s %12.1f %12.1f %9.2fx\n", s.name, flops / f32 * 1e-9, flops / bf16 * 1e-9, f32 / bf16);
  }
  return 0;
}
