// oneDNN's own matmul as a peer: the int8 (u8 x s8 -> s32, VNNI brgemm) and float32 GEMMs that
// bound what an int8 kernel can gain on this CPU.
#pragma once
#include <dnnl.hpp>

#include "bench_util.h"
#include <lowbit/lowbit.h>

namespace lowbit::bench {
// oneDNN matmul 256 x 4096 x 4096 with prepacked weights (format_tag::any + one reorder)
inline void onednn_gemm(benchmark::State& st, bool int8) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  const int64_t m = 256, k = 4096, n = 4096;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  const dnnl::memory::desc a_md({m, k}, int8 ? dt::u8 : dt::f32, tag::ab),
      c_md({m, n}, int8 ? dt::s32 : dt::f32, tag::ab);
  const dnnl::memory::desc b_user({k, n}, int8 ? dt::s8 : dt::f32, tag::ba),
      b_any({k, n}, int8 ? dt::s8 : dt::f32, tag::any);
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_any, c_md), eng);
  Tensor a = int8 ? full({m, k}, 131, kUInt8) : randn({m, k}), b = int8 ? full({n, k}, -3, kInt8) : randn({n, k});
  Tensor c = empty({m, n}, int8 ? kInt32 : kFloat32),
         packed = empty({static_cast<int64_t>(pd.weights_desc().get_size())}, kUInt8);
  dnnl::memory bm(b_user, eng, b.raw_data()), bpm(pd.weights_desc(), eng, packed.raw_data());
  dnnl::reorder(bm, bpm).execute(strm, bm, bpm);
  dnnl::matmul mm(pd);
  dnnl::memory am(a_md, eng, a.raw_data()), cm(c_md, eng, c.raw_data());
  for (auto _ : st) {
    mm.execute(strm, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bpm}, {DNNL_ARG_DST, cm}});
    strm.wait();
  }
  st.SetLabel(pd.impl_info_str());
}
}  // namespace lowbit::bench
