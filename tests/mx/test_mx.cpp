// MX formats against torchao's golden vectors (mx.h5, mx_ext.h5) and their formulas: to_mx scale
// bytes, element codes and dequantized values bit-exact for every element format, scale mode,
// block size (16, 32, 64) and input (random fp32/bf16, edge blocks, non-finite blocks).
#include <gtest/gtest.h>

#include <cmath>

#include "golden.h"
#include "lowbit/mx/mx.h"
#include "test_util.h"

using namespace lowbit;
using namespace lowbit::mx;
namespace t = lowbit::testing;

namespace {
bool has_dataset(hid_t g, const std::string& name) { return H5Lexists(g, name.c_str(), H5P_DEFAULT) > 0; }
// the case's input in its dtype: bfloat16 from the raw bits where the case stores them
Tensor input_of(hid_t g) {
  if (!has_dataset(g, "input_bf16_bits")) return t::dataset(g, "input", kFloat32);
  return t::dataset(g, "input", kFloat32).to(kBFloat16);  // the float32 upcast is exact
}
E8M0Rounding mode_of(const std::string& s) {
  return s.find("RCEIL") != std::string::npos  ? E8M0Rounding::RCeil
         : s.find("CEIL") != std::string::npos ? E8M0Rounding::Ceil
         : s.find("EVEN") != std::string::npos ? E8M0Rounding::Even
                                               : E8M0Rounding::Floor;
}
const uint8_t* bytes(const Tensor& x) { return static_cast<const uint8_t*>(x.raw_data()); }
}  // namespace

TEST(MXGolden, EveryToMxCase) {
  int cases = 0;
  int64_t blocks = 0, nan_blocks = 0, codes = 0;
  for (const char* file : {"mx.h5", "mx_ext.h5"}) {
    LOWBIT_GOLDEN_FILE(path, file);
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0) << path;
    for (const auto& name : t::golden_cases(f)) {
      if (name.rfind("to_mx/", 0) != 0) continue;
      SCOPED_TRACE(std::string(file) + " " + name);
      hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
      const core::Format& e = mx_element(t::attr_string(g, "elem_format"));
      const int64_t bs = t::attr_ints(g, "block_size")[0];
      const Tensor x = input_of(g);
      const MXTensor m = to_mx(x, e.id, bs, mode_of(t::attr_string(g, "scaling_mode")));
      const Tensor sb = t::dataset(g, "scale_e8m0_bits", kUInt8), qb = t::dataset(g, "qdata_bits", kUInt8);
      ASSERT_EQ(m.scale.numel(), sb.numel());
      ASSERT_EQ(m.qdata.numel(), qb.numel());
      EXPECT_EQ(m.scale.dtype(), kFloat8_e8m0fnu);
      EXPECT_EQ(m.qdata.dtype(), e.per_byte == 2 ? kFloat4_e2m1fn_x2 : e.storage_dtype);
      // scale bytes everywhere; codes outside NaN blocks (torchao leaves fp6/fp4 codes of a NaN
      // block unspecified: its scale is NaN either way)
      const Tensor ours = m.codes();
      std::vector<uint8_t> theirs(static_cast<size_t>(ours.numel()));
      core::unpack(e, bytes(qb), theirs.data(), ours.numel());
      for (int64_t b = 0; b < sb.numel(); ++b) {
        ASSERT_EQ(bytes(m.scale)[b], bytes(sb)[b]) << "block " << b;
        ++blocks;
        if (bytes(sb)[b] == 255) {
          ++nan_blocks;
          continue;
        }
        for (int64_t i = b * bs; i < (b + 1) * bs; ++i) {
          ASSERT_EQ(bytes(ours)[i], theirs[static_cast<size_t>(i)]) << "element " << i;
          ++codes;
        }
      }
      // dequantized values (NaN equals NaN)
      EXPECT_EQ(t::count_mismatches(m.dequantize(kFloat32), t::dataset(g, "dequant_f32", kFloat32)), 0);
      if (has_dataset(g, "dequant_orig_dtype")) {
        const Tensor d = m.dequantize();
        EXPECT_EQ(d.dtype(), kBFloat16);
        EXPECT_EQ(t::count_mismatches(d.to(kFloat32), t::dataset(g, "dequant_orig_dtype", kFloat32)), 0);
      }
      H5Gclose(g);
      ++cases;
    }
    H5Fclose(f);
  }
  EXPECT_EQ(cases, 80 + 80);  // mx.h5: 5 elements x 4 modes x 4 inputs; mx_ext.h5: blocks 16/64 x 5 x 2 x 4
  std::printf("  %d to_mx cases: %lld scale bytes (%lld NaN blocks) and %lld element codes bit-exact\n", cases,
              static_cast<long long>(blocks), static_cast<long long>(nan_blocks), static_cast<long long>(codes));
}

// Shapes, dtypes and names are checked before any work.
TEST(MX, ToMxRefusesBadInputs) {
  const Tensor x = randn({4, 64});
  t::expect_error([&] { to_mx(x, FormatId::Int4); }, {"MX element format", "int4"});
  t::expect_error(
      [&] {
        to_mx(randn({4, 48}), FormatId::Float8E4M3FN, 32);
      },
      {"to_mx", "last dim (48)", "multiple of block_size 32"});
  t::expect_error([&] { to_mx(x, FormatId::Float8E4M3FN, 0); }, {"block_size must be in [1, 2^20], got 0"});
  t::expect_error([&] { to_mx(x.to(kFloat64), FormatId::Float8E4M3FN); }, {"to_mx", "float64"});
  t::expect_error([&] { to_mx(randn({2, 3}), FormatId::Float4E2M1FN, 3); }, {"two elements per byte", "got 3"});
  t::expect_error([] { mx_element("fp5_e2m2"); }, {"MX element format", "fp5_e2m2", "fp4_e2m1"});
  t::expect_error([] { parse_scale_mode("floor"); }, {"FLOOR, CEIL, EVEN or RCEIL", "'floor'"});
  EXPECT_EQ(parse_scale_mode("RCEIL"), E8M0Rounding::RCeil);
  // 3-D input, blocks along the last dim; the dequantized shape and dtype follow the input
  const MXTensor m = to_mx(randn({2, 3, 64}).to(kBFloat16), FormatId::Float4E2M1FN, 32, E8M0Rounding::RCeil);
  EXPECT_EQ(m.qdata.shape(), (Shape{2, 3, 32}));
  EXPECT_EQ(m.scale.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(m.dequantize().shape(), (Shape{2, 3, 64}));
  EXPECT_EQ(m.dequantize().dtype(), kBFloat16);
}
