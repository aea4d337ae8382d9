// The engine's runtime: error helpers, the default generator and thread setting, and the
// storage allocator (a bounded cache of large blocks).
#include <omp.h>

#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "lowbit/autograd/generator.h"
#include "lowbit/autograd/parallel.h"
#include "lowbit/autograd/tensor.h"

namespace lowbit {

namespace detail {
void throw_error(std::string msg) { throw Error(std::move(msg)); }
void internal_error(const char* file, int line, const char* cond) {
  throw Error(fmt::format("internal error at {}:{}: {} (this is a bug in lowbit; please report it)", file, line, cond));
}
}  // namespace detail

// ---------------- generator / threads ----------------
Generator& default_generator() {
  static Generator gen;
  return gen;
}
void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

namespace {
int& thread_setting() {
  static int n = omp_get_max_threads();
  return n;
}
}  // namespace
void set_num_threads(int n) {
  LOWBIT_CHECK(n >= 1, "set_num_threads: n must be >= 1, got {}", n);
  thread_setting() = n;
  omp_set_num_threads(n);  // oneDNN's OpenMP runtime follows this
}
int get_num_threads() { return thread_setting(); }

// ---------------- storage ----------------
// Large blocks (>= 128 KiB) are cached by exact rounded size: a training step allocates the same
// shapes every iteration, and returning 64 MiB to the OS and faulting it back in costs more than
// the kernel that uses it. The cache is bounded (LOWBIT_ALLOCATOR_CACHE_MB, default 4096) and
// empty_cache() releases it.
namespace {
constexpr size_t kCacheMin = size_t{1} << 17;
struct BlockCache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  size_t cached = 0;
  size_t limit = [] {
    const char* env = std::getenv("LOWBIT_ALLOCATOR_CACHE_MB");
    return (env ? static_cast<size_t>(std::strtoull(env, nullptr, 10)) : size_t{4096}) << 20;
  }();
  ~BlockCache() { release(); }
  void release() {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& [size, blocks] : free_blocks)
      for (void* p : blocks) std::free(p);
    free_blocks.clear();
    cached = 0;
  }
};
BlockCache& block_cache() {
  static BlockCache* cache = new BlockCache();  // leaked on purpose: outlives static tensors
  return *cache;
}
void* allocate(size_t rounded) {
  if (rounded >= kCacheMin) {
    BlockCache& c = block_cache();
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free_blocks.find(rounded);
    if (it != c.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      c.cached -= rounded;
      return p;
    }
  }
  return std::aligned_alloc(64, rounded);
}
void deallocate(void* p, size_t rounded) {
  if (rounded >= kCacheMin) {
    BlockCache& c = block_cache();
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.cached + rounded <= c.limit) {
      c.free_blocks[rounded].push_back(p);
      c.cached += rounded;
      return;
    }
  }
  std::free(p);
}
}  // namespace

void empty_cache() { block_cache().release(); }

Storage::Storage(size_t n) : nbytes(n) {
  const size_t rounded = n >= kCacheMin ? ((n + 4095) / 4096) * 4096 : ((n + 63) / 64) * 64;
  data = rounded ? allocate(rounded) : nullptr;
  if (rounded && !data) throw Error(fmt::format("out of memory allocating {} bytes", n));
  deleter = [rounded](void* p) { deallocate(p, rounded); };
}
Storage::Storage(void* external, size_t n, std::function<void(void*)> del)
    : data(external), nbytes(n), deleter(std::move(del)) {}
Storage::~Storage() {
  if (deleter && data) deleter(data);
}

}  // namespace lowbit
