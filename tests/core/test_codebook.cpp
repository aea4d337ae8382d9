// Code-book formats (torchao's low-bit optimizer states): the generated tables against the spec's
// shipped tables and the golden files' qmaps; the encoder's search, ties and NaN rule; and the
// block quantizers against torchao's first optimizer step (optim_cpu_a/b.h5): after step 1 the
// states are m = (1 - b1) g and v = (1 - b2) g^2 of the golden gradient, so their codes and scales
// must equal torchao's bit for bit.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "golden.h"
#include "test_util.h"
#include "lowbit/core/codebook.h"
#include "lowbit/core/format.h"

using namespace lowbit;
using namespace lowbit::core;
namespace t = lowbit::testing;

namespace {
// the spec file's four tables, in file order (hex IEEE-754 words after each '#' header)
std::vector<std::vector<float>> read_spec_tables(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::vector<float>> tables;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      tables.emplace_back();
      continue;
    }
    std::istringstream words(line);
    std::string w;
    while (words >> w) {
      const uint32_t u = static_cast<uint32_t>(std::stoul(w, nullptr, 16));
      float f;
      std::memcpy(&f, &u, 4);
      tables.back().push_back(f);
    }
  }
  return tables;
}
int64_t bit_mismatches(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return static_cast<int64_t>(std::max(a.size(), b.size()));
  int64_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], 4) != 0;
  return n;
}
std::vector<float> values_of(const Tensor& x) { return {x.data_ptr<float>(), x.data_ptr<float>() + x.numel()}; }
}  // namespace

TEST(Codebook, TablesEqualTheSpecFile) {
  LOWBIT_GOLDEN_FILE(path, "../spec/optim-codebooks.txt");
  const auto tables = read_spec_tables(path);
  ASSERT_EQ(tables.size(), 4u);
  const CodebookId ids[4] = {CodebookId::Dynamic8Signed, CodebookId::Dynamic8Unsigned, CodebookId::Dynamic4Signed,
                             CodebookId::Linear4Unsigned};
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(codebook(ids[i]).name);
    EXPECT_EQ(bit_mismatches(codebook(ids[i]).values, tables[static_cast<size_t>(i)]), 0);
  }
  // the spec's landmarks
  EXPECT_EQ(codebook(CodebookId::Dynamic8Signed).values.front(), -0.99296874f);
  EXPECT_EQ(codebook(CodebookId::Dynamic8Signed).values.back(), 1.0f);
  EXPECT_EQ(codebook(CodebookId::Linear4Unsigned).values.front(), 1.0f / 16);  // no zero
  EXPECT_EQ(&codebook_by_name("dynamic4_signed"), &codebook(CodebookId::Dynamic4Signed));
  t::expect_error([] { codebook_by_name("dynamic9"); }, {"code book 'dynamic9'", "linear4_unsigned"});
}

TEST(Codebook, TablesEqualTheGoldenQmaps) {
  LOWBIT_GOLDEN_FILE(a_path, "optim_cpu_a.h5");
  LOWBIT_GOLDEN_FILE(b_path, "optim_cpu_b.h5");
  for (const auto& [path, group, s, u] :
       {std::tuple{a_path, "AdamW8bit", CodebookId::Dynamic8Signed, CodebookId::Dynamic8Unsigned},
        std::tuple{b_path, "AdamW4bit", CodebookId::Dynamic4Signed, CodebookId::Linear4Unsigned}}) {
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    hid_t g = H5Gopen2(f, group, H5P_DEFAULT);
    EXPECT_EQ(bit_mismatches(codebook(s).values, values_of(t::dataset(g, "qmap_signed", kFloat32))), 0) << group;
    EXPECT_EQ(bit_mismatches(codebook(u).values, values_of(t::dataset(g, "qmap_unsigned", kFloat32))), 0) << group;
    H5Gclose(g);
    H5Fclose(f);
  }
}

TEST(Codebook, EncoderSearchesTiesUpAndNaNGivesZero) {
  for (const CodebookId id : {CodebookId::Dynamic8Signed, CodebookId::Dynamic8Unsigned, CodebookId::Dynamic4Signed,
                              CodebookId::Linear4Unsigned}) {
    const Codebook& cb = codebook(id);
    SCOPED_TRACE(cb.name);
    const auto& q = cb.values;
    std::vector<float> xs;
    for (size_t i = 0; i < q.size(); ++i) {
      xs.push_back(q[i]);
      if (i + 1 < q.size()) {
        xs.push_back(q[i] + (q[i + 1] - q[i]) * 0.5f);  // the tie: goes up
        xs.push_back(std::nextafter(q[i] + (q[i + 1] - q[i]) * 0.5f, -2.0f));
      }
    }
    xs.push_back(-5.0f);
    xs.push_back(5.0f);
    std::vector<uint8_t> codes(xs.size());
    codebook_encode(cb, xs.data(), codes.data(), static_cast<int64_t>(xs.size()));
    int64_t bad = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      // the reference: nearest entry by linear scan, ties up; below the first entry -> 0
      size_t best = 0;
      for (size_t j = 0; j < q.size(); ++j)
        if (q[j] <= xs[i]) best = j;
      if (best + 1 < q.size() && xs[i] - q[best] >= (q[best + 1] - q[best]) * 0.5f) ++best;
      bad += codes[i] != best;
    }
    EXPECT_EQ(bad, 0);
    const float nan = NAN;
    uint8_t c = 99;
    codebook_encode(cb, &nan, &c, 1);
    EXPECT_EQ(c, 0);
  }
  // blocks: a NaN makes its block's scale NaN and dequantizes to NaN; an all-zero block gets
  // the 1e-12 floor; 4-bit unsigned has no zero, so a zero state dequantizes to scale / 16
  std::vector<float> x(512, 0.0f);
  x[300] = NAN;
  std::vector<uint8_t> codes(512);
  std::vector<float> scales(2), back(512);
  const Codebook& lin = codebook(CodebookId::Linear4Unsigned);
  codebook_quantize_blocks(lin, x.data(), 512, 256, codes.data(), scales.data());
  EXPECT_EQ(scales[0], 1e-12f);
  EXPECT_TRUE(std::isnan(scales[1]));
  codebook_dequantize_blocks(lin, codes.data(), scales.data(), 512, 256, back.data());
  EXPECT_EQ(back[0], 1e-12f / 16);
  EXPECT_TRUE(std::isnan(back[256]));
  t::expect_error([&] { codebook_quantize_blocks(lin, x.data(), 500, 256, codes.data(), scales.data()); },
                  {"500 values do not split into blocks of 256"});
  std::vector<uint8_t> p(2), u(4);
  const uint8_t four[4] = {1, 2, 3, 15};
  pack_nibbles_high_first(four, p.data(), 4);
  EXPECT_EQ(p[0], 0x12);
  EXPECT_EQ(p[1], 0x3f);
  unpack_nibbles_high_first(p.data(), u.data(), 4);
  EXPECT_EQ(std::memcmp(u.data(), four, 4), 0);
}

// codebook_encode's bucket table (AVX-512 builds) against the search it is built from: a sweep of
// every 251st float of [-2.5, 2.5] (both signs, subnormals and zero included), every float within
// 300 ulps of each gap's midpoint and of each entry, and the special values. Lanes of 16 go
// through the table; the comparison runs on whole arrays so every value is in a 16-lane group.
TEST(Codebook, FastEncoderEqualsTheSearchEverywhere) {
  for (const CodebookId id : {CodebookId::Dynamic8Signed, CodebookId::Dynamic8Unsigned, CodebookId::Dynamic4Signed,
                              CodebookId::Linear4Unsigned}) {
    const Codebook& cb = codebook(id);
    SCOPED_TRACE(cb.name);
    EXPECT_TRUE(codebook_has_fast_encode(cb));
    std::vector<float> xs;
    const uint32_t top = std::bit_cast<uint32_t>(2.5f);
    for (uint32_t u = 0; u <= top; u += 251) {
      xs.push_back(std::bit_cast<float>(u));
      xs.push_back(-std::bit_cast<float>(u));
    }
    const auto& q = cb.values;
    auto around = [&](float c) {
      uint32_t u = std::bit_cast<uint32_t>(c);
      for (int d = -300; d <= 300; ++d) xs.push_back(std::bit_cast<float>(u + static_cast<uint32_t>(d)));
    };
    for (size_t i = 0; i < q.size(); ++i) {
      if (q[i] != 0.0f) around(q[i]);
      if (i + 1 < q.size()) around(q[i] + (q[i + 1] - q[i]) * 0.5f);
    }
    for (const float v :
         {0.0f, -0.0f, 1.0f, -1.0f, 1e-30f, -1e-30f, 1e-45f, -1e-45f, INFINITY, -INFINITY, NAN, -NAN, 3e38f, -3e38f})
      xs.push_back(v);
    while (xs.size() % 16) xs.push_back(0.5f);
    std::vector<uint8_t> fast(xs.size()), ref(xs.size());
    codebook_encode(cb, xs.data(), fast.data(), static_cast<int64_t>(xs.size()));
    codebook_encode_reference(cb, xs.data(), ref.data(), static_cast<int64_t>(xs.size()));
    int64_t bad = 0;
    for (size_t i = 0; i < xs.size(); ++i)
      if (fast[i] != ref[i] && bad++ < 5)
        ADD_FAILURE() << "x = " << xs[i] << " (0x" << std::hex << std::bit_cast<uint32_t>(xs[i]) << std::dec
                      << "): " << int(fast[i]) << " vs the search's " << int(ref[i]);
    EXPECT_EQ(bad, 0) << "of " << xs.size();
  }
  // dequantization in bulk (byte-plane lookups of 64 codes, permutes for 4-bit): every code, in
  // a shuffled order, against entry * scale
  std::vector<uint8_t> all(256);
  for (int i = 0; i < 256; ++i) all[static_cast<size_t>(i)] = static_cast<uint8_t>((i * 89 + 7) & 255);
  std::vector<float> got(256);
  const float s = 0.37f;
  for (const CodebookId id : {CodebookId::Dynamic8Signed, CodebookId::Dynamic8Unsigned, CodebookId::Dynamic4Signed,
                              CodebookId::Linear4Unsigned}) {
    const Codebook& cb = codebook(id);
    codebook_dequantize_block(cb, all.data(), s, 256, got.data());
    for (size_t i = 0; i < 256; ++i)
      ASSERT_EQ(got[i], cb.values[all[i] & ((1u << cb.bits) - 1)] * s) << cb.name << " code " << int(all[i]);
  }
  fp8_state_dequantize_block(all.data(), s, 256, got.data());
  for (size_t i = 0; i < 256; ++i) {
    const float want = decode(format(FormatId::Float8E4M3FN), all[i]) * s;
    if (std::isnan(want))
      ASSERT_TRUE(std::isnan(got[i])) << int(all[i]);
    else
      ASSERT_EQ(got[i], want) << "fp8 code " << int(all[i]);
  }
  // nibble packing in bulk (the vector path) against the formula
  std::vector<uint8_t> codes(256), packed(128), back(256);
  for (int i = 0; i < 256; ++i) codes[static_cast<size_t>(i)] = static_cast<uint8_t>((i * 7 + i / 16) & 15);
  pack_nibbles_high_first(codes.data(), packed.data(), 256);
  for (int k = 0; k < 128; ++k)
    ASSERT_EQ(packed[static_cast<size_t>(k)],
              (codes[2 * static_cast<size_t>(k)] << 4) | codes[2 * static_cast<size_t>(k) + 1])
        << k;
  unpack_nibbles_high_first(packed.data(), back.data(), 256);
  EXPECT_EQ(back, codes);
}

// torchao's states after its first step, from the golden gradient: m = lerp(0, g, 1 - b1) =
// 0.1f * g, v = lerp(0, g*g, 1 - b2) = 0.001f * (g*g) (the weights are computed in double and
// used as float32). Every code and scale of `big` (262144 values) and `mid` (4096, plus its
// dequantized states) must equal torchao's.
TEST(Codebook, FirstStepStatesEqualTorchao) {
  LOWBIT_GOLDEN_FILE(in_path, "optim_inputs.h5");
  LOWBIT_GOLDEN_FILE(a_path, "optim_cpu_a.h5");
  LOWBIT_GOLDEN_FILE(b_path, "optim_cpu_b.h5");
  hid_t in = H5Fopen(in_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(in, 0);
  const float w1 = static_cast<float>(1.0 - 0.9), w2 = static_cast<float>(1.0 - 0.999);
  int64_t compared = 0;
  for (const auto& [path, group, kind, block] :
       {std::tuple{a_path, "AdamW8bit", 8, int64_t{256}}, std::tuple{b_path, "AdamW4bit", 4, int64_t{128}},
        std::tuple{b_path, "AdamWFp8", 0, int64_t{256}}}) {
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    const std::string step = std::string(group) + "/step_01";
    hid_t g = H5Gopen2(f, step.c_str(), H5P_DEFAULT);
    for (const char* p : {"big", "mid"}) {
      const Tensor grad = t::dataset(in, std::string("grads/step_01/") + p, kFloat32);
      const int64_t n = grad.numel();
      std::vector<float> m(static_cast<size_t>(n)), v(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        const float gi = grad.data_ptr<float>()[i];
        m[i] = 0.0f + w1 * (gi - 0.0f);
        v[i] = 0.0f + w2 * (gi * gi - 0.0f);
      }
      for (const auto& [state, x, cb] :
           {std::tuple{"exp_avg", &m, kind == 8 ? CodebookId::Dynamic8Signed : CodebookId::Dynamic4Signed},
            std::tuple{"exp_avg_sq", &v, kind == 8 ? CodebookId::Dynamic8Unsigned : CodebookId::Linear4Unsigned}}) {
        SCOPED_TRACE(fmt::format("{} {} {}", group, p, state));
        std::vector<uint8_t> codes(static_cast<size_t>(n));
        std::vector<float> scales(static_cast<size_t>(n / block)), deq(static_cast<size_t>(n));
        if (kind == 0) {
          fp8_state_quantize_blocks(x->data(), n, block, codes.data(), scales.data());
          fp8_state_dequantize_blocks(codes.data(), scales.data(), n, block, deq.data());
        } else {
          codebook_quantize_blocks(codebook(cb), x->data(), n, block, codes.data(), scales.data());
          codebook_dequantize_blocks(codebook(cb), codes.data(), scales.data(), n, block, deq.data());
        }
        if (kind == 4) {  // stored two per byte, high nibble first
          std::vector<uint8_t> packed(static_cast<size_t>(n / 2));
          pack_nibbles_high_first(codes.data(), packed.data(), n);
          codes = packed;
        }
        const std::string base = fmt::format("state_{}_{}", p, state);
        const Tensor want_codes = t::dataset(g, base + "_codes", kUInt8),
                     want_scale = t::dataset(g, base + "_scale", kFloat32);
        ASSERT_EQ(want_codes.numel(), static_cast<int64_t>(codes.size()));
        int64_t bad_codes = 0;
        for (size_t i = 0; i < codes.size(); ++i) bad_codes += codes[i] != want_codes.data_ptr<uint8_t>()[i];
        EXPECT_EQ(bad_codes, 0);
        EXPECT_EQ(bit_mismatches(scales, values_of(want_scale)), 0);
        if (std::string(p) == "mid")
          EXPECT_EQ(bit_mismatches(deq, values_of(t::dataset(g, base + "_dequant", kFloat32))), 0);
        compared += static_cast<int64_t>(codes.size());
      }
    }
    H5Gclose(g);
    H5Fclose(f);
  }
  H5Fclose(in);
  EXPECT_GT(compared, 1000000);
}

// The 8-bit maps are encoded by arithmetic (runs of equal spacing), the bucket table taking only
// values within the margin of a threshold; FastEncoderEqualsTheSearchEverywhere covers its codes
// (+-300 ulps around every entry and midpoint reach far past the margin: 2^-16 of a spacing is a
// few ulps), the golden trajectories its use inside the optimizers.
TEST(Codebook, EightBitMapsUseTheSegmentEncoder) {
  for (const CodebookId id : {CodebookId::Dynamic8Signed, CodebookId::Dynamic8Unsigned}) {
    const float m = codebook_segment_margin(codebook(id));
    EXPECT_GT(m, 0.0f) << codebook(id).name;
    EXPECT_LE(m, 1.0f / 1024) << codebook(id).name;
    std::cout << codebook(id).name << ": margin " << m << " of a spacing\n";
  }
  for (const CodebookId id : {CodebookId::Dynamic4Signed, CodebookId::Linear4Unsigned})
    EXPECT_EQ(codebook_segment_margin(codebook(id)), 0.0f) << codebook(id).name;
}
