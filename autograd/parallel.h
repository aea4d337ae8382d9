// Thread control shared by lowbit's kernels and oneDNN (both run on OpenMP).
#pragma once
#include <cstdint>

namespace lowbit {

/// Sets the number of threads used by lowbit kernels and oneDNN primitives (n >= 1).
void set_num_threads(int n);
/// Current thread count (default: all cores).
int get_num_threads();

/// Elementwise kernels go parallel only above this many elements (smaller work stays serial).
inline constexpr int64_t kParallelGrain = 32768;

}  // namespace lowbit
