// The block iterator every quantizer uses: a block size (torchao's block_size, one entry per
// dimension; what a granularity gives for a shape) splits a tensor into blocks that share a
// scale, and the blocks are visited either as runs of consecutive elements (per-tensor,
// per-token, per-row, per-group along the last dim: the fast path) or element by element with
// a strided indexer. A block size that does not divide a dimension ends it in a shorter
// (ragged) block.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lowbit/autograd/error.h"
#include "lowbit/autograd/kernel.h"

namespace lowbit::core {

/// Blocks per dimension: ceil(shape / block). Throws naming op on a rank mismatch or a
/// non-positive block size.
Shape blocks_shape(const Shape& shape, const Shape& block, const char* op);

/// Maps each element of a tensor of `shape` to its block index (row-major over blocks_shape).
struct BlockIndexer {
  Shape shape, block, nblocks;
  std::vector<int64_t> bstride;
  BlockIndexer(const Shape& s, const Shape& b, const char* op) : shape(s), block(b), nblocks(blocks_shape(s, b, op)) {
    bstride.assign(s.size(), 1);
    for (int64_t i = static_cast<int64_t>(s.size()) - 2; i >= 0; --i) bstride[i] = bstride[i + 1] * nblocks[i + 1];
  }
  template <typename F>
  void for_each(F&& f) const {  // f(element index, block index)
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    const int64_t nd = static_cast<int64_t>(shape.size());
    std::vector<int64_t> idx(nd, 0);
    for (int64_t e = 0; e < n; ++e) {
      int64_t b = 0;
      for (int64_t d = 0; d < nd; ++d) b += (idx[d] / block[d]) * bstride[d];
      f(e, b);
      for (int64_t d = nd - 1; d >= 0; --d) {
        if (++idx[d] < shape[d]) break;
        idx[d] = 0;
      }
    }
  }
};

/// The fast layout: blocks that are runs of consecutive elements in row-major order --
/// block_size is 1 before some dim k, any size at k, the full extent after k. Along k the last
/// block may be shorter. contiguous = false: use BlockIndexer.
struct Runs {
  bool contiguous = false;
  int64_t count = 0;    // blocks
  int64_t max_len = 0;  // elements of a full block
  int64_t extent = 1, step = 1, inner = 1, per_outer = 1;
  /// f(block, offset, length) for blocks [b0, b1) in order, with one division for the whole range
  /// (dividing per block costs more than a 32-element group's work).
  template <typename F>
  void for_each_run(int64_t b0, int64_t b1, F&& f) const {
    if (b0 >= b1) return;
    int64_t j = b0 % per_outer, base = (b0 / per_outer) * extent * inner;
    const int64_t full = step * inner, row = extent * inner;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = base + j * full;
      f(b, o, std::min(full, base + row - o));
      if (++j == per_outer) j = 0, base += row;
    }
  }
};
Runs block_runs(const Shape& shape, const Shape& block);

/// The largest magnitude of n floats, NaN when any is NaN (torch.amax(abs(x)) of a block): the
/// amax every scale rule starts from.
inline float amax_of_run(const float* x, int64_t n) {
  float m = 0.0f;
  int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan)
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    m = a > m ? a : m;
    nan |= x[i] != x[i];
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : m;
}

/// The bits of amax_of_run's result, by an integer max over |x|'s bits (non-negative floats
/// order as their bits, and every NaN's bits exceed inf's): no NaN flag, so it vectorizes to a
/// max per vector; any NaN in the run gives a NaN bit pattern.
inline uint32_t amax_bits_of_run(const float* x, int64_t n) {
  uint32_t m = 0;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    u &= 0x7FFFFFFFu;
    m = u > m ? u : m;
  }
  return m;
}
/// amax_bits_of_run over a long run split across the threads (the parts' maxima reduced): for
/// per-tensor scales of large tensors.
uint32_t amax_bits_threaded(const float* x, int64_t n);

/// Blocks per thread task for runs of `len` elements: about 32 Ki elements per task.
inline int64_t grain_for(int64_t len) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(len, 1)); }

/// put(element, block) over every element: runs in parallel when the blocks are runs, else the
/// strided indexer (serially).
template <typename F>
void for_each_element(const BlockIndexer& bi, const Runs& runs, F&& put) {
  if (!runs.contiguous) return bi.for_each(put);
  detail::parallel_for(runs.count, grain_for(runs.max_len), [&](int64_t b0, int64_t b1) {
    runs.for_each_run(b0, b1, [&](int64_t b, int64_t o, int64_t n) {
      for (int64_t e = o; e < o + n; ++e) put(e, b);
    });
  });
}

}  // namespace lowbit::core
