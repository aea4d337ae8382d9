// MX targets of docs/PERFORMANCE.md (issue #12), each next to its reference measured in the same
// run:
//  * MXLinear forward + backward (M = 4096 tokens, K = N = 1024) in the fast mode (mxfp8_rceil,
//    mxfp4_cutlass) and in emulate mode (torchao's EMULATED path) against the float32 Linear;
//  * converted MX linears (QAT -> convert, 4096 x 4096 weight, dynamic activations) on the int8
//    VNNI kernel (mxfp4, mxfp6) and on the dequantize + bf16 path, at batch 256 and batch 1,
//    against the float32 Linear at the same batch, and oneDNN's bare u8 x s8 GEMM (the VNNI ceiling);
//  * to_mx (amax + e8m0 scale + cast, 16M floats; 5 bytes per element: 4 read, 1 written, plus a
//    scale byte per 32) and its transposed variant (to_mx_transposed; and transpose + to_mx, the
//    two-pass way) against the triad bandwidth;
//  * MX and NVFP4 fake quantization (the QAT forward of a weight or activation) against the triad.
//   ./build/bench/bench_mx [--threads=N]
#include "bench_util.h"
#include "onednn_peer.h"
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
// the transposed variant (blocks down the columns, torchao's to_mx(x.t().contiguous())): one pass,
// the same bytes counted
void to_mx_t_bench(benchmark::State& st, mx::FormatId elem) {
  const Tensor x = randn({kCastN / 4096, 4096});
  for (auto _ : st)
    benchmark::DoNotOptimize(mx::to_mx_transposed(x, elem, 32, mx::E8M0Rounding::RCeil).qdata.raw_data());
  st.counters["GB/s"] =
      benchmark::Counter(5.0 * kCastN, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
void BM_to_mx_t_fp8(benchmark::State& st) { to_mx_t_bench(st, mx::FormatId::Float8E4M3FN); }
void BM_to_mx_t_fp4(benchmark::State& st) { to_mx_t_bench(st, mx::FormatId::Float4E2M1FN); }
// the two-pass way: transpose (a copy), then to_mx
void BM_to_mx_t_copy_fp8(benchmark::State& st) {
  const Tensor x = randn({kCastN / 4096, 4096});
  for (auto _ : st)
    benchmark::DoNotOptimize(
        mx::to_mx(x.t(), mx::FormatId::Float8E4M3FN, 32, mx::E8M0Rounding::RCeil).qdata.raw_data());
  st.counters["GB/s"] =
      benchmark::Counter(5.0 * kCastN, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
// MX fake quantization (QAT's forward on a weight or activation: amax, e8m0 scale, round, scale
// back; 8 bytes per element: 4 read, 4 written)
void BM_mx_fake_quant_fp4(benchmark::State& st) {
  const Tensor x = randn({kCastN / 4096, 4096});
  const qat::MXFakeQuantizeConfig cfg(mx::FormatId::Float4E2M1FN, 32, mx::E8M0Rounding::Floor);
  qat::FakeQuantizer fq(cfg);
  NoGradGuard ng;
  for (auto _ : st) benchmark::DoNotOptimize(cfg.fake_quantize(x, fq).raw_data());
  st.counters["GB/s"] =
      benchmark::Counter(8.0 * kCastN, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
void BM_nvfp4_fake_quant(benchmark::State& st) {  // per-tensor amax, e4m3 block scales, fp4, back
  const Tensor x = randn({kCastN / 4096, 4096});
  const qat::NVFP4FakeQuantizeConfig cfg(true);
  qat::FakeQuantizer fq(cfg);
  NoGradGuard ng;
  for (auto _ : st) benchmark::DoNotOptimize(cfg.fake_quantize(x, fq).raw_data());
  st.counters["GB/s"] =
      benchmark::Counter(8.0 * kCastN, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
// converted 4096 x 4096 linears (PTQ through QATConfig: the same module QAT -> convert builds)
std::shared_ptr<nn::Module> big_linear(const std::string& recipe, bool dequantize = false) {
  manual_seed(0);
  std::shared_ptr<nn::Module> m = std::make_shared<nn::Linear>(4096, 4096);
  if (recipe.empty()) return m;
  m = qat::quantize_(m, *qat::recipe_config(recipe, "int4", 32));
  if (dequantize) dynamic_cast<qat::MXQuantizedLinear&>(*m).kernel = qat::MXQuantizedLinear::Kernel::Dequantize;
  return m;
}
void linear_forward(benchmark::State& st, const std::shared_ptr<nn::Module>& m, int64_t batch) {
  const Tensor x = randn({batch, 4096});
  NoGradGuard ng;
  for (auto _ : st) benchmark::DoNotOptimize(m->forward(x).raw_data());
  if (auto* mq = dynamic_cast<qat::MXQuantizedLinear*>(m.get())) st.SetLabel(mq->kernel_name());
}
void BM_linear_fp32_b256(benchmark::State& st) { linear_forward(st, big_linear(""), 256); }
void BM_mxfp4_int8_b256(benchmark::State& st) { linear_forward(st, big_linear("mxfp4"), 256); }
void BM_mxfp6_int8_b256(benchmark::State& st) { linear_forward(st, big_linear("mxfp6"), 256); }
void BM_mxfp4_dequant_b256(benchmark::State& st) { linear_forward(st, big_linear("mxfp4", true), 256); }
void BM_linear_fp32_b1(benchmark::State& st) { linear_forward(st, big_linear(""), 1); }
void BM_mxfp4_int8_b1(benchmark::State& st) { linear_forward(st, big_linear("mxfp4"), 1); }
void BM_mxfp6_int8_b1(benchmark::State& st) { linear_forward(st, big_linear("mxfp6"), 1); }
// batch 1 through 8 distinct layers: fp32 weights (512 MB) and fp4 codes (68 MB) both exceed L3
void stack_forward(benchmark::State& st, const std::string& recipe) {
  std::vector<std::shared_ptr<nn::Module>> layers;
  for (int i = 0; i < 8; ++i) layers.push_back(big_linear(recipe));
  const Tensor x = randn({1, 4096});
  NoGradGuard ng;
  for (auto _ : st) {
    Tensor h = x;
    for (auto& l : layers) h = l->forward(h);
    benchmark::DoNotOptimize(h.raw_data());
  }
}
void BM_onednn_u8s8_s32_b256(benchmark::State& st) { lowbit::bench::onednn_gemm(st, true); }
void BM_stack8_fp32_b1(benchmark::State& st) { stack_forward(st, ""); }
void BM_stack8_mxfp4_b1(benchmark::State& st) { stack_forward(st, "mxfp4"); }
void BM_triad(benchmark::State& st) { lowbit::bench::triad_benchmark(st, kCastN, get_num_threads()); }
}  // namespace

BENCHMARK(BM_linear_fp32)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_mxfp8_rceil)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_mxfp4_cutlass)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_mxfp8_emulated_rceil)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_triad)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_to_mx_fp8)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_to_mx_fp4)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_to_mx_t_fp8)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_to_mx_t_fp4)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_to_mx_t_copy_fp8)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_mx_fake_quant_fp4)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_nvfp4_fake_quant)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_linear_fp32_b256)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_mxfp4_int8_b256)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_mxfp6_int8_b256)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_onednn_u8s8_s32_b256)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_mxfp4_dequant_b256)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_linear_fp32_b1)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_mxfp4_int8_b1)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_mxfp6_int8_b1)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_stack8_fp32_b1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_stack8_mxfp4_b1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);

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
  // converted linears: the fp32 Linear's time over ours (a speed-up)
  auto ms = [&](const char* n) { return rep.seconds(n) * 1e3; };
  for (const auto& [what, ours, ref, goal] :
       {std::tuple{"MXFP4 linear 4096^2 b256 (int8 VNNI) vs fp32", "BM_mxfp4_int8_b256", "BM_linear_fp32_b256",
                   ">= 3x faster"},
        std::tuple{"MXFP6-e2m3 linear b256 (int8 VNNI) vs fp32", "BM_mxfp6_int8_b256", "BM_linear_fp32_b256", ""},
        std::tuple{"peer: oneDNN u8s8->s32 GEMM alone vs fp32", "BM_onednn_u8s8_s32_b256", "BM_linear_fp32_b256",
                   "(VNNI ceiling)"},
        std::tuple{"MXFP4 b256 vs oneDNN's bare u8s8 GEMM", "BM_mxfp4_int8_b256", "BM_onednn_u8s8_s32_b256",
                   "(ours incl. act. quant)"},
        std::tuple{"MXFP4 linear b256 dequantize+bf16 vs fp32", "BM_mxfp4_dequant_b256", "BM_linear_fp32_b256",
                   "(previous path)"},
        std::tuple{"MXFP4 linear 4096^2 b1 vs fp32", "BM_mxfp4_int8_b1", "BM_linear_fp32_b1", ">= 5x faster"},
        std::tuple{"MXFP6-e2m3 linear b1 vs fp32", "BM_mxfp6_int8_b1", "BM_linear_fp32_b1", ""},
        std::tuple{"MXFP4 b1, 8 layers (out of L3) vs fp32", "BM_stack8_mxfp4_b1", "BM_stack8_fp32_b1",
                   ">= 5x faster"}}) {
    const double a = ms(ours), b = ms(ref);
    if (a > 0 && b > 0) std::printf("%-46s %7.3f ms %9.3f ms %7.2fx %s\n", what, a, b, b / a, goal);
  }
  const double tr = rep.counter("BM_triad", "GB/s") / 1e9;
  for (const char* bm : {"BM_to_mx_fp8", "BM_to_mx_fp4", "BM_to_mx_t_fp8", "BM_to_mx_t_fp4", "BM_to_mx_t_copy_fp8"}) {
    const double gb = rep.counter(bm, "GB/s") / 1e9;
    if (gb > 0 && tr > 0)
      std::printf("%-46s %7.2f GB/s %6.2f GB/s %6.2fx %s\n", bm + 3, gb, tr, gb / tr, ">= 0.50x triad");
  }
  if (const double gb = rep.counter("BM_mx_fake_quant_fp4", "GB/s") / 1e9; gb > 0 && tr > 0)
    std::printf("%-46s %7.2f GB/s %6.2f GB/s %6.2fx %s\n", "MX fake quant fp4 (QAT forward)", gb, tr, gb / tr, "");
  if (const double gb = rep.counter("BM_nvfp4_fake_quant", "GB/s") / 1e9; gb > 0 && tr > 0)
    std::printf("%-46s %7.2f GB/s %6.2f GB/s %6.2fx %s\n", "NVFP4 fake quant (QAT forward)", gb, tr, gb / tr, "");
  return 0;
}
