// Seeded, counter-based random numbers: element i of a draw depends only on (seed, offset + i),
// so the bits are the same for any thread count.
#pragma once
#include <cstdint>

namespace lowbit {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0x853c49e6748fea9bULL) : seed_(seed) {}
  void manual_seed(uint64_t seed) {
    seed_ = seed;
    offset_ = 0;
  }
  uint64_t seed() const { return seed_; }
  /// Number of 64-bit draws consumed so far; (seed, offset) is the whole state.
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }
  /// Reserves n consecutive counters and returns the first.
  uint64_t reserve(uint64_t n) {
    uint64_t o = offset_;
    offset_ += n;
    return o;
  }

  /// 64 random bits for counter c (a stateless hash of seed and c).
  static uint64_t bits(uint64_t seed, uint64_t c) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (c + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    // second round decorrelates nearby seeds
    z += seed * 0xd1b54a32d192ed03ULL;
    z = (z ^ (z >> 32)) * 0xd6e8feb86659fd93ULL;
    return z ^ (z >> 32);
  }
  /// Uniform float in [0, 1) with 24 random bits.
  static float uniform01f(uint64_t seed, uint64_t c) { return static_cast<float>(bits(seed, c) >> 40) * 0x1.0p-24f; }
  /// Uniform double in [0, 1) with 53 random bits.
  static double uniform01(uint64_t seed, uint64_t c) { return static_cast<double>(bits(seed, c) >> 11) * 0x1.0p-53; }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

/// The process-wide default generator (used when no generator is passed).
Generator& default_generator();
/// Seeds the default generator (like torch.manual_seed).
void manual_seed(uint64_t seed);

}  // namespace lowbit
