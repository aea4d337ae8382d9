// Kernel support for code outside the engine (qat/, core/, optim/, float8/, mx/): splitting work
// over lowbit's threads and dispatching on dtypes. Public and installed; the engine's own op
// helpers stay in autograd/src/internal.h.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "lowbit/autograd/dtype.h"
#include "lowbit/autograd/error.h"
#include "lowbit/autograd/parallel.h"

namespace lowbit::detail {

#define LOWBIT_DISPATCH_CASE(DT, CT, T, ...) \
  case DT: {                                 \
    using T = CT;                            \
    __VA_ARGS__;                             \
    break;                                   \
  }

/// Throws: dtype holds low-precision codes, which ops do not compute on (convert first).
[[noreturn]] void throw_not_computable(DType dtype);

/// Runs the body with T = the C++ type of dtype (every dtype ops compute on; the low-precision
/// storage dtypes throw, naming the dtype).
#define LOWBIT_DISPATCH_ALL(dtype, T, ...)                                              \
  switch (dtype) {                                                                      \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Float32, float, T, __VA_ARGS__)               \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::BFloat16, ::lowbit::BFloat16, T, __VA_ARGS__) \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Float64, double, T, __VA_ARGS__)              \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Int8, int8_t, T, __VA_ARGS__)                 \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::UInt8, uint8_t, T, __VA_ARGS__)               \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Int32, int32_t, T, __VA_ARGS__)               \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Int64, int64_t, T, __VA_ARGS__)               \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Bool, bool, T, __VA_ARGS__)                   \
    default: ::lowbit::detail::throw_not_computable(dtype);                             \
  }

/// Runs the body with T = an unsigned integer of the dtype's element size: for code that only
/// moves elements (gathers, permutes), which works for every dtype.
#define LOWBIT_DISPATCH_BYTES(dtype, T, ...)                    \
  switch (::lowbit::element_size(dtype)) {                      \
    LOWBIT_DISPATCH_CASE(1, uint8_t, T, __VA_ARGS__)            \
    LOWBIT_DISPATCH_CASE(2, uint16_t, T, __VA_ARGS__)           \
    LOWBIT_DISPATCH_CASE(4, uint32_t, T, __VA_ARGS__)           \
    LOWBIT_DISPATCH_CASE(8, uint64_t, T, __VA_ARGS__)           \
    default: LOWBIT_ASSERT(false && "unexpected element size"); \
  }

/// Runs the body with T = float or double (compute types).
#define LOWBIT_DISPATCH_FLOAT(dtype, T, ...)                                \
  switch (dtype) {                                                          \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Float32, float, T, __VA_ARGS__)   \
    LOWBIT_DISPATCH_CASE(::lowbit::DType::Float64, double, T, __VA_ARGS__)  \
    default: LOWBIT_ASSERT(false && "float dispatch on non-compute dtype"); \
  }

/// Splits [0, n) into one contiguous chunk per thread and runs fn(begin, end) on each, in
/// parallel when n >= grain and lowbit has more than one thread (serially inside another
/// parallel region). Chunk boundaries are multiples of align (the last chunk ends at n), so
/// vector loops over each chunk stay aligned. Results must not depend on the split.
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& fn, int64_t align = 1) {
  if (n <= 0) return;
  const int threads = get_num_threads();
  if (n < grain || threads <= 1 || omp_in_parallel()) {
    fn(int64_t{0}, n);
    return;
  }
  const int64_t tasks = std::min<int64_t>(threads, (n + grain - 1) / std::max<int64_t>(grain, 1));
#pragma omp parallel num_threads(static_cast <int>(tasks))
  {
    const int64_t t = omp_get_thread_num();
    const int64_t nt = omp_get_num_threads();
    const int64_t units = (n + align - 1) / align;
    const int64_t begin = std::min(n, units * t / nt * align), end = std::min(n, units * (t + 1) / nt * align);
    if (begin < end) fn(begin, end);
  }
}

}  // namespace lowbit::detail
