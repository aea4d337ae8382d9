// Code-book formats (core/codebook.h).
#include "lowbit/core/codebook.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "lowbit/autograd/kernel.h"
#include "lowbit/core/blocks.h"
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

void codebook_encode(const Codebook& cb, const float* x, uint8_t* codes, int64_t n) {
  const float* q = cb.values.data();
  const int top = (1 << cb.bits) - 1;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    int c = 0;
    for (int step = (top + 1) / 2; step >= 1; step /= 2) c += v >= q[c + step] ? step : 0;
    const int up = std::min(c + 1, top);
    // residual >= half the gap: ties go up; NaN compares false everywhere and stays at 0
    c = v - q[c] >= (q[up] - q[c]) * 0.5f ? up : c;
    codes[i] = static_cast<uint8_t>(c);
  }
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
void check_blocks(const char* op, int64_t n, int64_t block) {
  LOWBIT_CHECK(block > 0 && n >= 0 && n % block == 0, "{}: {} values do not split into blocks of {}", op, n, block);
}
}  // namespace

void codebook_quantize_blocks(const Codebook& cb, const float* x, int64_t n, int64_t block, uint8_t* codes,
                              float* scales) {
  check_blocks("codebook_quantize_blocks", n, block);
  const int64_t nb = n / block;
  detail::parallel_for(nb, std::max<int64_t>(1, 16384 / block), [&](int64_t b0, int64_t b1) {
    ScratchBlock xn(block);
    for (int64_t b = b0; b < b1; ++b) {
      const float* xb = x + b * block;
      const float amax = amax_of_run(xb, block);
      const float s = std::isnan(amax) ? amax : std::max(amax, 1e-12f);
      scales[b] = s;
      for (int64_t i = 0; i < block; ++i) xn.p[i] = xb[i] / s;
      codebook_encode(cb, xn.p, codes + b * block, block);
    }
  });
}

void codebook_dequantize_blocks(const Codebook& cb, const uint8_t* codes, const float* scales, int64_t n, int64_t block,
                                float* out) {
  check_blocks("codebook_dequantize_blocks", n, block);
  const float* q = cb.values.data();
  const int top = (1 << cb.bits) - 1;
  detail::parallel_for(n / block, std::max<int64_t>(1, 16384 / block), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t i = b * block; i < (b + 1) * block; ++i) out[i] = q[codes[i] & top] * scales[b];
  });
}

void fp8_state_quantize_blocks(const float* x, int64_t n, int64_t block, uint8_t* codes, float* scales) {
  check_blocks("fp8_state_quantize_blocks", n, block);
  const Format& e4m3 = format(FormatId::Float8E4M3FN);
  detail::parallel_for(n / block, std::max<int64_t>(1, 16384 / block), [&](int64_t b0, int64_t b1) {
    ScratchBlock xn(block);
    for (int64_t b = b0; b < b1; ++b) {
      const float* xb = x + b * block;
      const float amax = amax_of_run(xb, block);
      const float s = (std::isnan(amax) ? amax : std::max(amax, 1e-12f)) / 448.0f;
      scales[b] = s;
      for (int64_t i = 0; i < block; ++i) xn.p[i] = xb[i] / s;
      encode_n(e4m3, xn.p, codes + b * block, block, true);
    }
  });
}

void fp8_state_dequantize_blocks(const uint8_t* codes, const float* scales, int64_t n, int64_t block, float* out) {
  check_blocks("fp8_state_dequantize_blocks", n, block);
  const Format& e4m3 = format(FormatId::Float8E4M3FN);
  float value[256];
  for (uint32_t c = 0; c < 256; ++c) value[c] = decode(e4m3, c);
  detail::parallel_for(n / block, std::max<int64_t>(1, 16384 / block), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t i = b * block; i < (b + 1) * block; ++i) out[i] = value[codes[i]] * scales[b];
  });
}

void pack_nibbles_high_first(const uint8_t* codes, uint8_t* packed, int64_t n) {
  LOWBIT_CHECK(n % 2 == 0, "pack_nibbles_high_first: an even count is needed, got {}", n);
  for (int64_t k = 0; k < n / 2; ++k)
    packed[k] = static_cast<uint8_t>(((codes[2 * k] & 0x0f) << 4) | (codes[2 * k + 1] & 0x0f));
}

void unpack_nibbles_high_first(const uint8_t* packed, uint8_t* codes, int64_t n) {
  LOWBIT_CHECK(n % 2 == 0, "unpack_nibbles_high_first: an even count is needed, got {}", n);
  for (int64_t k = 0; k < n / 2; ++k) {
    codes[2 * k] = packed[k] >> 4;
    codes[2 * k + 1] = packed[k] & 0x0f;
  }
}

}  // namespace lowbit::core
