// Code-book formats (core/codebook.h).
#include "lowbit/core/codebook.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <bit>
#include <limits>
#include <type_traits>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define LOWBIT_CODEBOOK_SIMD 1
#else
#define LOWBIT_CODEBOOK_SIMD 0
#endif

#include "lowbit/autograd/kernel.h"
#include "lowbit/core/blocks.h"
#include "lowbit/core/exact_div.h"
#include "lowbit/core/format.h"

namespace lowbit::core {

std::vector<float> linspace_f32(float start, float end, int64_t n) {
  std::vector<float> v(static_cast<size_t>(std::max<int64_t>(n, 0)));
  if (n == 1) v[0] = start;
  if (n <= 1) return v;
  const float step = (end - start) / static_cast<float>(n - 1);
  for (int64_t i = 0; i < n; ++i)
    v[static_cast<size_t>(i)] =
        i < n / 2 ? std::fma(step, static_cast<float>(i), start) : std::fma(-step, static_cast<float>(n - 1 - i), end);
  return v;
}

std::vector<float> create_dynamic_map(bool is_signed, int max_exponent_bits, int total_bits) {
  const int non_sign_bits = total_bits - 1;  // torchao's quirk: the same for unsigned maps
  const int additional = (1 << (non_sign_bits - max_exponent_bits)) - 1;
  std::vector<float> data;
  auto add_means = [&](int64_t items, int i) {
    const std::vector<float> b = linspace_f32(0.1f, 1.0f, items);
    // 10 ** (i - (max_exponent_bits - 1)): a Python float, rounded to float32 by the multiply
    const float mag = static_cast<float>(std::pow(10.0, i - (max_exponent_bits - 1)));
    for (size_t j = 0; j + 1 < b.size(); ++j) {
      const float mean = (b[j] + b[j + 1]) / 2.0f;
      data.push_back(mag * mean);
      if (is_signed) data.push_back(-mag * mean);
    }
  };
  int last = 0;
  for (int i = 0; i < max_exponent_bits; ++i) {
    const int64_t items = is_signed ? (int64_t{1} << (i + non_sign_bits - max_exponent_bits)) + 1
                                    : (int64_t{1} << (i + non_sign_bits - max_exponent_bits + 1)) + 1;
    add_means(items, i);
    last = i;
  }
  if (additional > 0) add_means(additional + 1, last);
  data.push_back(0.0f);
  data.push_back(1.0f);
  LOWBIT_CHECK(data.size() == (size_t{1} << total_bits), "create_dynamic_map: {} values for {} bits", data.size(),
               total_bits);
  std::sort(data.begin(), data.end());
  return data;
}

namespace {
std::vector<Codebook> build_table() {
  std::vector<Codebook> t;
  t.push_back({CodebookId::Dynamic8Signed, "dynamic8_signed", 8, true, create_dynamic_map(true, 7, 8)});
  t.push_back({CodebookId::Dynamic8Unsigned, "dynamic8_unsigned", 8, false, create_dynamic_map(false, 7, 8)});
  t.push_back({CodebookId::Dynamic4Signed, "dynamic4_signed", 4, true, create_dynamic_map(true, 3, 4)});
  std::vector<float> lin = linspace_f32(0.0f, 1.0f, 17);
  lin.erase(lin.begin());
  t.push_back({CodebookId::Linear4Unsigned, "linear4_unsigned", 4, false, lin});
  return t;
}
const std::vector<Codebook>& table() {
  static const std::vector<Codebook> t = build_table();
  return t;
}
// f(c) for every code book, in table order: the derived tables (encoders, dequantizers), each
// built once on first use and indexed by the code book's id
template <typename F>
auto per_codebook(F f) {
  std::vector<std::decay_t<decltype(f(table()[0]))>> v;
  for (const auto& c : table()) v.push_back(f(c));
  return v;
}
}  // namespace

const Codebook& codebook(CodebookId id) {
  LOWBIT_CHECK(id < CodebookId::kCount, "codebook: unknown id {}", static_cast<int>(id));
  return table()[static_cast<size_t>(id)];
}

std::string codebook_names() {
  std::string s;
  for (const auto& c : table()) s += (s.empty() ? "" : ", ") + std::string(c.name);
  return s;
}

const Codebook& codebook_by_name(std::string_view name) {
  for (const auto& c : table())
    if (name == c.name) return c;
  throw Error(fmt::format("code book '{}' is not one of {}", name, codebook_names()));
}

namespace {
// torchao's search for one value: the reference every faster path is built from and tested against
int encode_reference(const float* q, int top, float v) {
  int c = 0;
  for (int step = (top + 1) / 2; step >= 1; step /= 2) c += v >= q[c + step] ? step : 0;
  const int up = std::min(c + 1, top);
  // residual >= half the gap: ties go up; NaN compares false everywhere and stays at 0
  return v - q[c] >= (q[up] - q[c]) * 0.5f ? up : c;
}

// The search is monotone in x (the floor index is; within a gap the residual x - q[c] is, and the
// half gap is fixed), so a code is the number of thresholds E_1 < ... < E_top at or below x, E_i
// being the least float that encodes to >= i. The bucket table finds that count with one lookup:
// x's magnitude, clamped to [2^-24, 2], minus 2^-24, split into a bucket (the high 16 bits: 8
// exponent + 7 mantissa bits) and its low 16 bits; negative values use mirrored buckets with the
// low bits complemented, so the order of (bucket, low) is the order of x. An entry holds the count
// at the bucket's least value (<< 17) and the low bits of the one threshold inside the bucket
// (0x10000: none); x's code = count + (low >= threshold low). Valid when no bucket holds two
// thresholds and none lies within 2^-24 of zero -- checked when the table is built (the maps'
// spacing is >= 0.007 where the buckets are 0.004 wide); otherwise the reference search is used.
constexpr uint32_t kBucketLo = 0x33800000u;  // 2^-24
constexpr uint32_t kBucketHi = 0x40000000u;  // 2.0
constexpr int32_t kHalfBuckets = static_cast<int32_t>((kBucketHi - kBucketLo) >> 16) + 1;

float bucket_value(int32_t idx, uint32_t lowp) {
  if (idx >= kHalfBuckets)
    return std::bit_cast<float>(kBucketLo + (static_cast<uint32_t>(idx - kHalfBuckets) << 16) + lowp);
  const uint32_t bm = static_cast<uint32_t>(kHalfBuckets - 1 - idx);
  return -std::bit_cast<float>(kBucketLo + (bm << 16) + (0xffffu - lowp));
}

std::vector<uint32_t> build_bucket_table(const Codebook& cb) {
  const float* q = cb.values.data();
  const int top = (1 << cb.bits) - 1;
  auto f = [&](float x) { return encode_reference(q, top, x); };
  const float lo = std::bit_cast<float>(kBucketLo);
  if (f(-lo) != f(lo)) return {};
  std::vector<uint32_t> t(static_cast<size_t>(2 * kHalfBuckets));
  for (int32_t idx = 0; idx < 2 * kHalfBuckets; ++idx) {
    const int base = f(bucket_value(idx, 0)), last = f(bucket_value(idx, 0xffff));
    if (last - base > 1) return {};
    uint32_t th = 0x10000;
    if (last > base) {  // the least low bits that encode above base
      uint32_t a = 0, b = 0xffff;
      while (a < b) {
        const uint32_t mid = (a + b) / 2;
        if (f(bucket_value(idx, mid)) > base)
          b = mid;
        else
          a = mid + 1;
      }
      th = a;
    }
    t[static_cast<size_t>(idx)] = static_cast<uint32_t>(base) << 17 | th;
  }
  return t;
}

// per code book, built on first use
const std::vector<uint32_t>& bucket_table(const Codebook& cb) {
  static const auto tables = per_codebook(build_bucket_table);
  return tables[static_cast<size_t>(cb.id)];
}

// order-preserving int of a float, and back
int32_t order_key(float x) {
  const int32_t u = std::bit_cast<int32_t>(x);
  return u < 0 ? static_cast<int32_t>(0x80000000u - static_cast<uint32_t>(u)) : u;
}
float float_of_key(int32_t k) {
  return k < 0 ? std::bit_cast<float>(static_cast<int32_t>(0x80000000u - static_cast<uint32_t>(k)))
               : std::bit_cast<float>(k);
}
// E_i: the least float in [-2, 2] that encodes to >= i, by bisection on the float order
float threshold_of(const Codebook& cb, int i) {
  const int top = (1 << cb.bits) - 1;
  int32_t a = order_key(-2.0f), b = order_key(2.0f);
  while (a < b) {
    const auto mid = static_cast<int32_t>((static_cast<int64_t>(a) + b) >> 1);  // floor: a <= mid < b
    if (encode_reference(cb.values.data(), top, float_of_key(mid)) >= i)
      b = mid;
    else
      a = mid + 1;
  }
  return float_of_key(a);
}

// ---- the segment encoder (8-bit maps): a code by arithmetic, no lookup per value ----
// The entries at or above zero are runs of equally spaced values (the dynamic maps' decades, and
// the single gaps between decades). In a run starting at entry P0 with spacing D, an x from P0 up
// to the next run has code base + round(t), t = fma(x, 1/D, -P0/D) -- up to the float32 rounding
// of the entries and of the search's midpoints, which moves each threshold off its half-integer.
// t is monotone in x, so with every true threshold E (the least float whose code is >= c) checked
// when the table is built to lie within margin/2 of its half-integer, a t farther than `margin`
// from every half-integer has the true code: t(x) < t(E) implies x < E and t(x) > t(E) implies
// x > E. Lanes within the margin (about 1 in 10^4) take the bucket table instead. A run is found
// per binade of x: the run at the binade's start plus up to two run starts inside it. Signed maps
// are symmetric: code(x < 0) = 254 - code(|x|), floored at 0 (there is no -1), with the negative
// thresholds checked the same way against the mirrored runs.
struct SegmentTable {
  bool valid = false;
  bool mirrored = false;
  float margin = 0.0f;
  alignas(64) int32_t seglo[32]{};
  alignas(64) float split1[32]{};
  alignas(64) float split2[32]{};
  alignas(64) float a[16]{};
  alignas(64) float b[16]{};
  alignas(64) int32_t base[16]{};
};
constexpr int kSegmentBinadeBias = 96;  // binade index 31 holds [1, 2); index 0 everything below 2^-30

int segment_of(const SegmentTable& t, float a) {  // 0 <= a < 2
  const int idx = std::clamp(static_cast<int>(std::bit_cast<uint32_t>(a) >> 23) - kSegmentBinadeBias, 0, 31);
  return t.seglo[idx] + (a >= t.split1[idx]) + (a >= t.split2[idx]);
}

SegmentTable build_segment_table(const Codebook& cb) {
  SegmentTable t;
  const std::vector<float>& v = cb.values;
  if (cb.bits != 8 || v.size() != 256) return t;
  const int z = static_cast<int>(std::lower_bound(v.begin(), v.end(), 0.0f) - v.begin());
  if (v[static_cast<size_t>(z)] != 0.0f || v[255] > 1.0f) return t;
  if (cb.is_signed) {
    if (z != 127) return t;
    for (int j = 1; j <= 127; ++j)
      if (v[static_cast<size_t>(127 - j)] != -v[static_cast<size_t>(127 + j)]) return t;
    t.mirrored = true;
  } else if (z != 0) {
    return t;
  }
  struct Run {
    int i0, k;  // entries i0 .. i0 + k
  };
  std::vector<Run> runs;
  for (int i = z; i < 255;) {
    const double g = static_cast<double>(v[static_cast<size_t>(i + 1)]) - v[static_cast<size_t>(i)];
    int k = 1;
    while (i + k < 255 &&
           std::fabs((static_cast<double>(v[static_cast<size_t>(i + k + 1)]) - v[static_cast<size_t>(i + k)]) / g - 1) <
               1e-3)
      ++k;
    runs.push_back({i, k});
    i += k;
  }
  if (runs.size() > 16) return t;
  for (size_t s = 0; s < runs.size(); ++s) {
    const double p0 = v[static_cast<size_t>(runs[s].i0)];
    const double d = (static_cast<double>(v[static_cast<size_t>(runs[s].i0 + runs[s].k)]) - p0) / runs[s].k;
    t.a[s] = static_cast<float>(1.0 / d);
    t.b[s] = static_cast<float>(runs[s].i0 - p0 / d);  // the code itself: base + (x - P0) / D
    t.base[s] = runs[s].i0;
  }
  for (int idx = 0; idx < 32; ++idx) {
    const double lo = idx == 0 ? 0.0 : std::ldexp(1.0, idx - 31), hi = std::ldexp(1.0, idx - 30);
    int inside = 0;
    t.split1[idx] = t.split2[idx] = std::numeric_limits<float>::infinity();
    for (size_t s = 0; s < runs.size(); ++s) {
      const double start = v[static_cast<size_t>(runs[s].i0)];
      if (start <= lo) t.seglo[idx] = static_cast<int32_t>(s);
      if (start > lo && start < hi) {
        if (inside == 2) return SegmentTable{};
        (inside++ == 0 ? t.split1 : t.split2)[idx] = static_cast<float>(start);
      }
    }
  }
  // every threshold against its half-integer: positive ones, then the mirrored negative ones
  double dev = 0.0;
  auto check = [&](float e, int code_above) {  // e >= 0: codes >= code_above from e on (positive side)
    const int s = segment_of(t, e);
    const double h = code_above - 0.5;
    const float te = std::fma(e, t.a[s], t.b[s]);
    if (code_above - t.base[s] < 1 || code_above - t.base[s] > runs[static_cast<size_t>(s)].k) return false;
    dev = std::max(dev, std::fabs(te - h));
    return true;
  };
  for (int c = z + 1; c <= 255; ++c)
    if (!check(threshold_of(cb, c), c)) return SegmentTable{};
  if (t.mirrored)  // the threshold between negative codes c - 1 and c mirrors positive codes 254 - c, 255 - c
    for (int c = 1; c <= 127; ++c)
      if (!check(-threshold_of(cb, c), 255 - c)) return SegmentTable{};
  float m = 1.0f / 65536;
  while (m < 2 * dev) m *= 2;
  if (m > 1.0f / 256) return SegmentTable{};
  t.margin = m;
  t.valid = true;
  return t;
}

const SegmentTable& segment_table(const Codebook& cb) {
  static const auto tables = per_codebook(build_segment_table);
  return tables[static_cast<size_t>(cb.id)];
}

#if LOWBIT_CODEBOOK_SIMD
// The thresholds themselves for 4-bit code books, E_1..E_15 in entries 1..15 (entry 0 unused).
std::array<float, 16> thresholds16(const Codebook& cb) {
  std::array<float, 16> e{};
  for (int i = 1; i < 16; ++i) e[static_cast<size_t>(i)] = threshold_of(cb, i);
  return e;
}

// 4-bit codes: the number of thresholds <= x by a four-step search, each step one permute of the
// 16 thresholds (x >= E_i is f(x) >= i: f is monotone; NaN compares false and stays at 0)
inline __m512i encode16_small(__m512 e, __m512 x) {
  __m512i p = _mm512_setzero_si512();
  for (int step = 8; step >= 1; step /= 2) {
    const __m512i c = _mm512_add_epi32(p, _mm512_set1_epi32(step));
    p = _mm512_mask_mov_epi32(p, _mm512_cmp_ps_mask(x, _mm512_permutexvar_ps(c, e), _CMP_GE_OQ), c);
  }
  return p;
}

// 16 codes (as int32 lanes) through the bucket table
inline __m512i encode16(const uint32_t* tab, __m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i mag = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __m512i m =
      _mm512_sub_epi32(_mm512_min_epu32(_mm512_max_epu32(mag, _mm512_set1_epi32(static_cast<int>(kBucketLo))),
                                        _mm512_set1_epi32(static_cast<int>(kBucketHi))),
                       _mm512_set1_epi32(static_cast<int>(kBucketLo)));
  const __m512i bm = _mm512_srli_epi32(m, 16);
  const __m512i low = _mm512_and_si512(m, _mm512_set1_epi32(0xffff));
  const __mmask16 neg = _mm512_movepi32_mask(u);
  const __m512i idx = _mm512_mask_sub_epi32(_mm512_add_epi32(bm, _mm512_set1_epi32(kHalfBuckets)), neg,
                                            _mm512_set1_epi32(kHalfBuckets - 1), bm);
  const __m512i lowp = _mm512_mask_xor_epi32(low, neg, low, _mm512_set1_epi32(0xffff));
  const __m512i e = _mm512_i32gather_epi32(idx, tab, 4);
  __m512i c = _mm512_srli_epi32(e, 17);
  c = _mm512_mask_add_epi32(c, _mm512_cmpge_epu32_mask(lowp, _mm512_and_si512(e, _mm512_set1_epi32(0x1ffff))), c,
                            _mm512_set1_epi32(1));
  return _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), c);  // NaN: code 0
}

// The segment table in registers, loaded once per run of values (code stores are bytes, which may
// alias the table: read through memory, every entry would be reloaded per vector).
struct SegmentRegs {
  __m512i seglo0, seglo1;
  __m512 split10, split11, split20, split21, a, b;
  __m512 limit;  // 0.5 - margin
  bool mirrored;
  explicit SegmentRegs(const SegmentTable& t)
      : seglo0(_mm512_load_si512(t.seglo)),
        seglo1(_mm512_load_si512(t.seglo + 16)),
        split10(_mm512_load_ps(t.split1)),
        split11(_mm512_load_ps(t.split1 + 16)),
        split20(_mm512_load_ps(t.split2)),
        split21(_mm512_load_ps(t.split2 + 16)),
        a(_mm512_load_ps(t.a)),
        b(_mm512_load_ps(t.b)),
        limit(_mm512_set1_ps(0.5f - t.margin)),
        mirrored(t.mirrored) {}
};

// 16 codes through the segment table; `amb` gets the lanes within its margin. kGeneral: any x
// (NaN -> 0, magnitudes clamped below 2 -- every code book ends at or below 1); otherwise the
// caller guarantees |x| <= 1 and no NaN (a block divided by its finite absmax).
template <bool kGeneral>
inline __m512i encode16_segments(const SegmentRegs& t, __m512 x, __mmask16& amb) {
  __m512 a = _mm512_abs_ps(x);
  if (kGeneral) a = _mm512_min_ps(a, _mm512_set1_ps(std::bit_cast<float>(0x3FFFFFFFu)));
  const __m512i idx =
      _mm512_subs_epu16(_mm512_srli_epi32(_mm512_castps_si512(a), 23), _mm512_set1_epi32(kSegmentBinadeBias));
  __m512i s = _mm512_permutex2var_epi32(t.seglo0, idx, t.seglo1);
  const __m512i one = _mm512_set1_epi32(1);
  s = _mm512_mask_add_epi32(s, _mm512_cmp_ps_mask(a, _mm512_permutex2var_ps(t.split10, idx, t.split11), _CMP_GE_OQ), s,
                            one);
  s = _mm512_mask_add_epi32(s, _mm512_cmp_ps_mask(a, _mm512_permutex2var_ps(t.split20, idx, t.split21), _CMP_GE_OQ), s,
                            one);
  // tt = the code as a real number; rounded by adding 1.5 * 2^23 (the sum's low bits are the
  // nearest integer, ties to even), and within margin of a half-integer is ambiguous
  const __m512 tt = _mm512_fmadd_ps(a, _mm512_permutexvar_ps(s, t.a), _mm512_permutexvar_ps(s, t.b));
  const __m512 magic = _mm512_set1_ps(12582912.0f);
  const __m512 tm = _mm512_add_ps(tt, magic);
  amb = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(tt, _mm512_sub_ps(tm, magic))), t.limit, _CMP_GE_OQ);
  __m512i c = _mm512_sub_epi32(_mm512_castps_si512(tm), _mm512_castps_si512(magic));
  if (kGeneral) c = _mm512_min_epi32(c, _mm512_set1_epi32(255));
  const __mmask16 neg = _mm512_movepi32_mask(_mm512_castps_si512(x));
  if (t.mirrored)
    c = _mm512_max_epi32(_mm512_mask_sub_epi32(c, neg, _mm512_set1_epi32(254), c), _mm512_setzero_si512());
  else
    c = _mm512_maskz_mov_epi32(static_cast<__mmask16>(~neg), c);  // below the first entry (0): code 0
  if (kGeneral) c = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), c);
  return c;
}
#endif
}  // namespace

namespace {
#if LOWBIT_CODEBOOK_SIMD
const std::array<float, 16>& small_thresholds(const Codebook& cb) {
  static const auto small =
      per_codebook([](const Codebook& c) { return c.bits == 4 ? thresholds16(c) : std::array<float, 16>{}; });
  return small[static_cast<size_t>(cb.id)];
}
#endif
// The encoder of one code book, its tables looked up and loaded once per run of blocks (a block
// is 128 or 256 values: per-call set-up and loop exits cost as much as the block's codes).
// encode<true>: codes of x[i] / s (the quotients of torchao's true division), s the block's scale:
// >= every |x[i]| (or not finite), so the quotients are at most 1; encode<false>: codes of x[i].
// The entry spacing of a map whose entries are k * step (k = 1, 2, ...) with step a power of two
// (torchao's linear 4-bit map, k/16), else 0. For such a map 16x is exact, x - entry is exact
// (Sterbenz) and the midpoints are exact, so the search's code is floor(x/step - 1/2) clamped to
// [0, top]: t - 1/2 is exact for t = x/step >= 1, and below 1 every code is 0 anyway.
float uniform_step(const Codebook& cb) {
  const float step = cb.values[0];
  int e = 0;
  if (!(step > 0.0f) || std::frexp(step, &e) != 0.5f) return 0.0f;
  for (size_t k = 0; k < cb.values.size(); ++k)
    if (cb.values[k] != static_cast<float>(k + 1) * step) return 0.0f;
  return step;
}

const std::vector<float>& uniform_steps() {
  static const auto steps = per_codebook(uniform_step);
  return steps;
}

class Encoder {
 public:
  explicit Encoder(const Codebook& cb)
      : cb_(cb)
#if LOWBIT_CODEBOOK_SIMD
        ,
        tab_(bucket_table(cb)),
        seg_(segment_table(cb)),
        regs_(seg_),
        small_(cb.bits == 4 ? _mm512_loadu_ps(small_thresholds(cb).data()) : _mm512_setzero_ps()),
        step_(uniform_steps()[static_cast<size_t>(cb.id)])
#endif
  {
  }
  template <bool kDivide>
  void encode(const float* x, float s, uint8_t* codes, int64_t n) const {
    const float* q = cb_.values.data();
    const int top = (1 << cb_.bits) - 1;
    int64_t i = 0;
#if LOWBIT_CODEBOOK_SIMD
    // a finite scale divides by its reciprocal (core/exact_div.h): exact where it is proven, and
    // the lanes it does not prove are below 2^-96 -- far below every code book's first threshold
    const bool bounded = kDivide && std::isfinite(s);
    const __m512 vs = _mm512_set1_ps(s), vy = _mm512_set1_ps(1.0f / s);
    auto load = [&](int64_t k) {
      const __m512 v = _mm512_loadu_ps(x + k);
      return !kDivide ? v : bounded ? div_by_constant(v, vs, vy) : _mm512_div_ps(v, vs);
    };
    auto store = [&](int64_t k, __m512i c) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + k), _mm512_cvtepi32_epi8(c));
    };
    if (step_ > 0.0f) {
      const __m512 inv = _mm512_set1_ps(1.0f / step_), half = _mm512_set1_ps(0.5f);
      const __m512i hi = _mm512_set1_epi32(top);
      for (; i + 16 <= n; i += 16) {
        const __m512 v = load(i);
        __m512 t = _mm512_mul_ps(v, inv);                                // exact: a power of two
        if (!bounded) t = _mm512_min_ps(t, _mm512_set1_ps(8388608.0f));  // inf (NaN: masked below)
        __m512i c = _mm512_cvt_roundps_epi32(_mm512_sub_ps(t, half), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        c = _mm512_min_epi32(_mm512_max_epi32(c, _mm512_setzero_si512()), hi);
        if (!bounded) c = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), c);  // NaN: code 0
        store(i, c);
      }
    }
    if (cb_.bits == 4)
      for (; i + 16 <= n; i += 16) store(i, encode16_small(small_, load(i)));
    if (!tab_.empty() && seg_.valid) {
      for (; i + 16 <= n; i += 16) {
        const __m512 v = load(i);
        __mmask16 amb;
        __m512i c = bounded ? encode16_segments<false>(regs_, v, amb) : encode16_segments<true>(regs_, v, amb);
        if (amb) c = encode16(tab_.data(), v);  // within the margin of a threshold: the exact table
        store(i, c);
      }
    }
    if (!tab_.empty())
      for (; i + 16 <= n; i += 16) store(i, encode16(tab_.data(), load(i)));
#endif
    for (; i < n; ++i) codes[i] = static_cast<uint8_t>(encode_reference(q, top, kDivide ? x[i] / s : x[i]));
  }
  // one block: scale = max(amax, 1e-12) (NaN stays NaN), its codes; the scale returned
  float quantize(const float* x, int64_t n, uint8_t* codes) const {
    const float amax = amax_of_run(x, n);
    const float s = std::isnan(amax) ? amax : std::max(amax, 1e-12f);
    encode<true>(x, s, codes, n);
    return s;
  }

 private:
  const Codebook& cb_;
#if LOWBIT_CODEBOOK_SIMD
  const std::vector<uint32_t>& tab_;
  const SegmentTable& seg_;
  SegmentRegs regs_;
  __m512 small_;
  float step_;  // uniform_step: codes by arithmetic
#endif
};
}  // namespace

void codebook_encode(const Codebook& cb, const float* x, uint8_t* codes, int64_t n) {
  Encoder(cb).encode<false>(x, 1.0f, codes, n);
}

void codebook_encode_reference(const Codebook& cb, const float* x, uint8_t* codes, int64_t n) {
  const int top = (1 << cb.bits) - 1;
  for (int64_t i = 0; i < n; ++i) codes[i] = static_cast<uint8_t>(encode_reference(cb.values.data(), top, x[i]));
}

bool codebook_has_fast_encode(const Codebook& cb) { return !bucket_table(cb).empty(); }

float codebook_segment_margin(const Codebook& cb) {
  const SegmentTable& t = segment_table(cb);
  return t.valid ? t.margin : 0.0f;
}

namespace {
// a block's normalized values: on the stack up to 256 (the optimizers' blocks: they quantize one
// block per call), else on the heap
struct ScratchBlock {
  float small[256];
  std::vector<float> big;
  float* p;
  explicit ScratchBlock(int64_t n) : big(n > 256 ? static_cast<size_t>(n) : 0), p(n > 256 ? big.data() : small) {}
};
// out = x / s, the quotients of a true division (as torchao); s is the block's scale, so the lanes
// exact_div.h does not prove are |x| < 2^-96, whose quotients lie far below any state format's
// first threshold (1e-7 for the maps, 2^-10 for e4m3)
void divide_run(const float* __restrict x, float s, float* __restrict out, int64_t n) {
  int64_t i = 0;
#if LOWBIT_CODEBOOK_SIMD
  if (std::isfinite(s)) {
    const __m512 vs = _mm512_set1_ps(s), vy = _mm512_set1_ps(1.0f / s);
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, div_by_constant(_mm512_loadu_ps(x + i), vs, vy));
  }
#endif
  for (; i < n; ++i) out[i] = x[i] / s;
}
void check_blocks(const char* op, int64_t n, int64_t block) {
  LOWBIT_CHECK(block > 0 && n >= 0 && n % block == 0, "{}: {} values do not split into blocks of {}", op, n, block);
}
}  // namespace

float codebook_quantize_block(const Codebook& cb, const float* x, int64_t n, uint8_t* codes) {
  return Encoder(cb).quantize(x, n, codes);
}

void codebook_quantize_blocks(const Codebook& cb, const float* x, int64_t n, int64_t block, uint8_t* codes,
                              float* scales) {
  check_blocks("codebook_quantize_blocks", n, block);
  detail::parallel_for(n / block, std::max<int64_t>(1, 16384 / block), [&](int64_t b0, int64_t b1) {
    const Encoder enc(cb);
    for (int64_t b = b0; b < b1; ++b) scales[b] = enc.quantize(x + b * block, block, codes + b * block);
  });
}

namespace {
#if LOWBIT_CODEBOOK_SIMD && defined(__AVX512VBMI__)
// A 256-entry float table as four byte planes (byte k of every entry), 64 entries per register:
// a lookup of 64 codes is two vpermi2b per plane (entries 0-127 and 128-255, picked by bit 7),
// then the planes interleaved back into floats -- no gathers.
struct BytePlanes {
  __m512i q[4][4];  // [plane][quarter of the table]
  explicit BytePlanes(const float* table) {
    alignas(64) uint8_t b[256];
    for (int k = 0; k < 4; ++k) {
      for (int c = 0; c < 256; ++c) b[c] = static_cast<uint8_t>(std::bit_cast<uint32_t>(table[c]) >> (8 * k));
      for (int j = 0; j < 4; ++j) q[k][j] = _mm512_load_si512(b + 64 * j);
    }
  }
};
// out[0..63] = table[codes[0..63]] * s
inline void lookup64(const BytePlanes& t, const uint8_t* codes, __m512 s, float* out) {
  // the unpacks below interleave within 128-bit lanes: lane l of result q holds input bytes
  // 16l + 4q .. 16l + 4q + 3, so those must be codes 16q + 4l .. 16q + 4l + 3
  static const __m512i order = [] {
    alignas(64) uint8_t o[64];
    for (int l = 0; l < 4; ++l)
      for (int q = 0; q < 4; ++q)
        for (int r = 0; r < 4; ++r) o[16 * l + 4 * q + r] = static_cast<uint8_t>(16 * q + 4 * l + r);
    return _mm512_load_si512(o);
  }();
  const __m512i c = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(codes));
  const __mmask64 high = _mm512_movepi8_mask(c);
  __m512i r[4];
  for (int k = 0; k < 4; ++k)
    r[k] = _mm512_mask_blend_epi8(high, _mm512_permutex2var_epi8(t.q[k][0], c, t.q[k][1]),
                                  _mm512_permutex2var_epi8(t.q[k][2], c, t.q[k][3]));
  const __m512i lo01 = _mm512_unpacklo_epi8(r[0], r[1]), hi01 = _mm512_unpackhi_epi8(r[0], r[1]);
  const __m512i lo23 = _mm512_unpacklo_epi8(r[2], r[3]), hi23 = _mm512_unpackhi_epi8(r[2], r[3]);
  _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(lo01, lo23)), s));
  _mm512_storeu_ps(out + 16, _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(lo01, lo23)), s));
  _mm512_storeu_ps(out + 32, _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(hi01, hi23)), s));
  _mm512_storeu_ps(out + 48, _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(hi01, hi23)), s));
}
#define LOWBIT_CODEBOOK_PLANES 1
#else
struct BytePlanes {
  explicit BytePlanes(const float*) {}
};
#define LOWBIT_CODEBOOK_PLANES 0
#endif

// out[i] = table[codes[i] & mask] * s; 64 at a time through byte planes (256 entries), 16 at a
// time by a permute (16 entries)
void lookup_run(const float* table, const BytePlanes& planes, int bits, const uint8_t* codes, float s, int64_t n,
                float* out) {
  const int mask = (1 << bits) - 1;
  int64_t i = 0;
#if LOWBIT_CODEBOOK_SIMD
  const __m512 vs = _mm512_set1_ps(s);
  if (bits == 4) {
    const __m512 t16 = _mm512_loadu_ps(table);
    for (; i + 16 <= n; i += 16) {
      const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
      _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_permutexvar_ps(c, t16), vs));
    }
  } else {
#if LOWBIT_CODEBOOK_PLANES
    for (; i + 64 <= n; i += 64) lookup64(planes, codes + i, vs, out + i);
#else
    (void)planes;
#endif
    for (; i + 16 <= n; i += 16) {
      const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
      _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_i32gather_ps(c, table, 4), vs));
    }
  }
#else
  (void)planes;
#endif
  for (; i < n; ++i) out[i] = table[codes[i] & mask] * s;
}
const BytePlanes& codebook_planes(const Codebook& cb) {
  static const auto planes = per_codebook([](const Codebook& c) {
    std::vector<float> t(256, 0.0f);  // 4-bit maps padded
    std::copy(c.values.begin(), c.values.end(), t.begin());
    return BytePlanes(t.data());
  });
  return planes[static_cast<size_t>(cb.id)];
}
const float* fp8_values() {
  static const std::array<float, 256> value = [] {
    std::array<float, 256> v{};
    for (uint32_t c = 0; c < 256; ++c) v[c] = decode(format(FormatId::Float8E4M3FN), c);
    return v;
  }();
  return value.data();
}
const BytePlanes& fp8_planes() {
  static const BytePlanes planes(fp8_values());
  return planes;
}
}  // namespace

void codebook_dequantize_block(const Codebook& cb, const uint8_t* codes, float scale, int64_t n, float* out) {
  lookup_run(cb.values.data(), codebook_planes(cb), cb.bits, codes, scale, n, out);
}

void codebook_dequantize_blocks(const Codebook& cb, const uint8_t* codes, const float* scales, int64_t n, int64_t block,
                                float* out) {
  check_blocks("codebook_dequantize_blocks", n, block);
  detail::parallel_for(n / block, std::max<int64_t>(1, 16384 / block), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      codebook_dequantize_block(cb, codes + b * block, scales[b], block, out + b * block);
  });
}

float fp8_state_quantize_block(const float* x, int64_t n, uint8_t* codes) {
  ScratchBlock xn(n);
  const float amax = amax_of_run(x, n);
  const float s = (std::isnan(amax) ? amax : std::max(amax, 1e-12f)) / 448.0f;
  divide_run(x, s, xn.p, n);
  minifloat_encode_scaled(*format(FormatId::Float8E4M3FN).minifloat, xn.p, 1.0f, nullptr, codes, n,
                          true);  // x * 1 is exact
  return s;
}

void fp8_state_quantize_blocks(const float* x, int64_t n, int64_t block, uint8_t* codes, float* scales) {
  check_blocks("fp8_state_quantize_blocks", n, block);
  detail::parallel_for(n / block, std::max<int64_t>(1, 16384 / block), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) scales[b] = fp8_state_quantize_block(x + b * block, block, codes + b * block);
  });
}

void fp8_state_dequantize_block(const uint8_t* codes, float scale, int64_t n, float* out) {
  lookup_run(fp8_values(), fp8_planes(), 8, codes, scale, n, out);
}

void fp8_state_dequantize_blocks(const uint8_t* codes, const float* scales, int64_t n, int64_t block, float* out) {
  check_blocks("fp8_state_dequantize_blocks", n, block);
  detail::parallel_for(n / block, std::max<int64_t>(1, 16384 / block), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) fp8_state_dequantize_block(codes + b * block, scales[b], block, out + b * block);
  });
}

void pack_nibbles_high_first(const uint8_t* codes, uint8_t* packed, int64_t n) {
  LOWBIT_CHECK(n % 2 == 0, "pack_nibbles_high_first: an even count is needed, got {}", n);
  int64_t k = 0;
#if LOWBIT_CODEBOOK_SIMD
  // per 16-bit lane: code[2k] * 16 + code[2k + 1], then narrowed to bytes
  const __m128i lo4 = _mm_set1_epi8(0x0f), w = _mm_set1_epi16(0x0110);
  for (; 2 * k + 16 <= n; k += 8) {
    const __m128i c = _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 2 * k)), lo4);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(packed + k), _mm_packus_epi16(_mm_maddubs_epi16(c, w), c));
  }
#endif
  for (; k < n / 2; ++k) packed[k] = static_cast<uint8_t>(((codes[2 * k] & 0x0f) << 4) | (codes[2 * k + 1] & 0x0f));
}

void unpack_nibbles_high_first(const uint8_t* packed, uint8_t* codes, int64_t n) {
  LOWBIT_CHECK(n % 2 == 0, "unpack_nibbles_high_first: an even count is needed, got {}", n);
  int64_t k = 0;
#if LOWBIT_CODEBOOK_SIMD
  const __m128i lo4 = _mm_set1_epi8(0x0f);
  for (; 2 * k + 16 <= n; k += 8) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed + k));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), lo4), lo = _mm_and_si128(b, lo4);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + 2 * k), _mm_unpacklo_epi8(hi, lo));
  }
#endif
  for (; k < n / 2; ++k) {
    codes[2 * k] = packed[k] >> 4;
    codes[2 * k + 1] = packed[k] & 0x0f;
  }
}

}  // namespace lowbit::core
