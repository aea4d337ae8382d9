#include "lowbit/core/blocks.h"

#include <atomic>

#include "lowbit/autograd/kernel.h"

namespace lowbit::core {

uint32_t amax_bits_threaded(const float* x, int64_t n) {
  std::atomic<uint32_t> top{0};
  lowbit::detail::parallel_for(n, int64_t{1} << 16, [&](int64_t i0, int64_t i1) {
    const uint32_t a = amax_bits_of_run(x + i0, i1 - i0);
    uint32_t cur = top.load();
    while (a > cur && !top.compare_exchange_weak(cur, a)) {}
  });
  return top.load();
}

Shape blocks_shape(const Shape& shape, const Shape& block, const char* op) {
  LOWBIT_CHECK(block.size() == shape.size(), "{}: block_size {} must have the rank of the input {}", op,
               shape_str(block), shape_str(shape));
  Shape out(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    LOWBIT_CHECK(block[i] >= 1, "{}: block_size {} must be positive at dim {} (input shape {})", op, shape_str(block),
                 i, shape_str(shape));
    out[i] = (shape[i] + block[i] - 1) / block[i];  // a ragged last block where block[i] does not divide
  }
  return out;
}

Runs block_runs(const Shape& shape, const Shape& block) {
  Runs r;
  const size_t nd = shape.size();
  size_t k = 0;
  while (k < nd && block[k] == 1) ++k;
  r.count = 1;
  for (size_t d = 0; d < nd; ++d) r.count *= (shape[d] + block[d] - 1) / block[d];
  if (k == nd) {  // one element per block
    r.contiguous = true;
    r.max_len = 1;
    r.extent = r.step = r.inner = r.per_outer = 1;
    return r;
  }
  for (size_t d = k + 1; d < nd; ++d) {
    if (block[d] != shape[d]) return r;
    r.inner *= shape[d];
  }
  r.contiguous = true;
  r.extent = shape[k];
  r.step = std::min(block[k], std::max<int64_t>(shape[k], 1));
  r.per_outer = (shape[k] + r.step - 1) / std::max<int64_t>(r.step, 1);
  r.max_len = r.step * r.inner;
  return r;
}

}  // namespace lowbit::core
