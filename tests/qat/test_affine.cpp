// Affine primitives against every case of torchao's affine.h5 (bit for bit: scale, zero_point,
// q, dq, fq), iterating over whatever cases the file holds; plus API error cases and the
// straight-through gradient.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "golden.h"
#include "test_util.h"

using namespace lowbit;
using namespace lowbit::qat;
using lowbit::testing::count_mismatches;

namespace {
MappingType parse_mapping(const std::string& s) {
  if (s == "MappingType.SYMMETRIC") return MappingType::SYMMETRIC;
  if (s == "MappingType.SYMMETRIC_NO_CLIPPING_ERR") return MappingType::SYMMETRIC_NO_CLIPPING_ERR;
  if (s == "MappingType.ASYMMETRIC") return MappingType::ASYMMETRIC;
  throw Error("unknown mapping type " + s);
}
}  // namespace

TEST(AffineGolden, EveryCaseBitExact) {
  namespace t = lowbit::testing;
  LOWBIT_GOLDEN_FILE(path, "affine.h5");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  const auto cases = t::golden_cases(f);
  ASSERT_FALSE(cases.empty());
  int checked = 0;
  for (const auto& name : cases) {
    SCOPED_TRACE(name);
    hid_t g = H5Gopen2(f, name.c_str(), H5P_DEFAULT);
    const int64_t qmin = t::attr_ints(g, "quant_min")[0], qmax = t::attr_ints(g, "quant_max")[0];
    const auto bs = t::attr_ints(g, "block_size");
    const Shape block(bs.begin(), bs.end());
    hid_t qd = H5Dopen2(g, "q", H5P_DEFAULT);
    const DType container = t::attr_string(qd, "torch_dtype") == "torch.uint8" ? kUInt8 : kInt8;
    H5Dclose(qd);
    const Tensor x = t::dataset(g, "input", kFloat32);
    const Tensor g_scale = t::dataset(g, "scale", kFloat32), g_zp = t::dataset(g, "zero_point", kInt32);
    Tensor scale = g_scale.reshape(blocks_shape(x.shape(), block, "golden")), zp = g_zp.reshape(scale.shape());
    std::string where;
    if (t::has_attr(g, "mapping_type")) {
      const std::optional<double> eps =
          t::has_attr(g, "eps_effective") ? std::optional<double>(t::attr_double(g, "eps_effective")) : std::nullopt;
      auto [s, z] = choose_qparams_affine(x, parse_mapping(t::attr_string(g, "mapping_type")), block, qmin, qmax, eps);
      EXPECT_EQ(count_mismatches(s.flatten(), g_scale.flatten(), &where), 0) << "scale: " << where;
      EXPECT_EQ(count_mismatches(z.flatten(), g_zp.flatten(), &where), 0) << "zero_point: " << where;
      scale = s;
      zp = z;
    }
    const Tensor q = quantize_affine(x, block, scale, zp, container, qmin, qmax);
    EXPECT_EQ(count_mismatches(q, t::dataset(g, "q", container), &where), 0) << "q: " << where;
    const Tensor dq = dequantize_affine(q, block, scale, zp, qmin, qmax);
    EXPECT_EQ(count_mismatches(dq, t::dataset(g, "dq", kFloat32), &where), 0) << "dq: " << where;
    const Tensor fq = fake_quantize_affine(x, block, scale, zp, qmin, qmax);
    EXPECT_EQ(count_mismatches(fq, t::dataset(g, "fq", kFloat32), &where), 0) << "fq: " << where;
    H5Gclose(g);
    ++checked;
  }
  H5Fclose(f);
  EXPECT_EQ(checked, static_cast<int>(cases.size()));
  std::printf("checked %d affine.h5 cases\n", checked);
}

TEST(Affine, RangesAndErrors) {
  EXPECT_EQ(quant_range("int4"), (std::pair<int64_t, int64_t>{-8, 7}));
  EXPECT_EQ(quant_range("uint4"), (std::pair<int64_t, int64_t>{0, 15}));
  EXPECT_EQ(quant_range("int1"), (std::pair<int64_t, int64_t>{-1, 0}));
  EXPECT_EQ(quant_range("uint8"), (std::pair<int64_t, int64_t>{0, 255}));
  lowbit::testing::expect_error([] { quant_range("int9"); }, {"unknown target dtype 'int9'"});
  const Tensor x = randn({4, 64});
  lowbit::testing::expect_error(
      [&] {
        choose_qparams_affine(x, MappingType::SYMMETRIC, {1, 0}, -8, 7);
      },
      {"choose_qparams_affine", "block_size [1, 0]", "[4, 64]"});
  lowbit::testing::expect_error([&] { choose_qparams_affine(x, MappingType::SYMMETRIC, {1, 32, 1}, -8, 7); }, {"rank"});
  auto [s, z] = choose_qparams_affine(x, MappingType::SYMMETRIC, {1, 32}, -8, 7);
  EXPECT_EQ(s.shape(), (Shape{4, 2}));
  lowbit::testing::expect_error(
      [&] {
        quantize_affine(x, {1, 32}, s, z, kUInt8, -8, 7);
      },
      {"quantize_affine", "[-8, 7]", "uint8"});
  lowbit::testing::expect_error(
      [&] {
        quantize_affine(x, {1, 16}, s, z, kInt8, -8, 7);
      },
      {"scale must be float32 or bfloat16 with one value per block", "16 blocks", "[4, 2]"});
  lowbit::testing::expect_error(
      [&] {
        quantize_affine(x.to(kFloat64), {1, 32}, s, z, kInt8, -8, 7);
      },
      {"input must be float32 or bfloat16", "float64"});
}

TEST(Affine, StraightThroughGradientWithClampMask) {
  // scale 1, zero point 0, int4: codes outside [-8, 7] are clamped and get no gradient
  Tensor x = from_vector<float>({0.4f, -3.6f, 7.4f, 7.6f, -8.4f, -8.6f, 100.0f}, {1, 7}).requires_grad_();
  Tensor scale = from_vector<float>({1.0f}, {1, 1});
  Tensor zp = from_vector<int32_t>({0}, {1, 1});
  Tensor y = fake_quantize_affine(x, {1, 7}, scale, zp, -8, 7);
  EXPECT_EQ(y.to_string(),
            "tensor([[ 0., -4.,  7.,  7., -8., -8.,  7.]], dtype=float32, grad_fn=<FakeQuantizeAffineBackward0>)");
  y.backward(ones({1, 7}));
  const float* g = x.grad().data_ptr<float>();
  const std::vector<float> expect = {1, 1, 1, 0, 1, 0, 0};  // 7.6 rounds to 8 (clamped); -8.4 rounds to -8 (kept)
  for (int i = 0; i < 7; ++i) EXPECT_EQ(g[i], expect[i]) << i;
}

// The contiguous-run kernels (blocks along the last dim) against the generic strided path on the
// transposed tensor (blocks along dim 0), which must agree bit for bit — values, codes, qparams and
// gradients — including NaN, infinities, zeros and rounding ties; and the fused dynamic fake
// quantizer against choose_qparams_affine + fake_quantize_affine.
TEST(Affine, RunKernelsMatchStridedPathAndFusedDynamic) {
  namespace t = lowbit::testing;
  manual_seed(3);
  const int64_t rows = 37, cols = 96;
  // 32 and 48: whole 16-lane steps; 20: a step and a 4-lane tail (ragged last block of 16);
  // 7: tails only (ragged last block of 5)
  for (const int64_t group : {32, 48, 20, 7}) {
    SCOPED_TRACE(fmt::format("group {}", group));
    Tensor base = mul(randn({rows, cols}), 3.0);
    float* p = base.data_ptr<float>();
    const float specials[] = {std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity(),
                              0.0f,
                              -0.0f,
                              0.5f,
                              2.5f,
                              -1.5f,
                              1e-39f};
    for (int i = 0; i < 9; ++i) p[(i * 131) % (rows * cols)] = specials[i];
    for (int64_t c = 0; c < group; ++c) p[5 * cols + c] = 0.0f;  // an all-zero block
    const Tensor gout = randn({rows, cols});
    struct Case {
      MappingType mapping;
      ZeroPointDomain domain;
      DType zp_dtype;
      int64_t qmin, qmax;
    };
    const std::vector<Case> cases = {{MappingType::SYMMETRIC, ZeroPointDomain::INT, kInt32, -8, 7},
                                     {MappingType::ASYMMETRIC, ZeroPointDomain::INT, kFloat32, -128, 127},
                                     {MappingType::SYMMETRIC_NO_CLIPPING_ERR, ZeroPointDomain::INT, kInt32, -2, 1},
                                     {MappingType::SYMMETRIC, ZeroPointDomain::NONE, kInt32, -8, 7},
                                     {MappingType::ASYMMETRIC, ZeroPointDomain::FLOAT, kFloat32, 0, 15}};
    for (const auto& c : cases) {
      SCOPED_TRACE(fmt::format("{} {} [{}, {}]", to_string(c.mapping), to_string(c.domain), c.qmin, c.qmax));
      std::string where;
      Tensor x = base.detach().requires_grad_();
      Tensor xt = base.t().detach().requires_grad_();  // (cols, rows): the same blocks along dim 0
      const Shape blk{1, group}, blk_t{group, 1};
      auto [s, z] = choose_qparams_affine(x.detach(), c.mapping, blk, c.qmin, c.qmax, 1e-6, c.domain, c.zp_dtype);
      auto [st, zt] = choose_qparams_affine(xt.detach(), c.mapping, blk_t, c.qmin, c.qmax, 1e-6, c.domain, c.zp_dtype);
      EXPECT_EQ(t::count_mismatches(s, st.t(), &where), 0) << "scale " << where;
      EXPECT_EQ(t::count_mismatches(z, zt.t(), &where), 0) << "zero_point " << where;
      const DType container = c.qmin < 0 ? kInt8 : kUInt8;
      const Tensor q = quantize_affine(x.detach(), blk, s, z, container, c.qmin, c.qmax, c.domain);
      EXPECT_EQ(t::count_mismatches(
                    q, quantize_affine(xt.detach(), blk_t, st, zt, container, c.qmin, c.qmax, c.domain).t(), &where),
                0)
          << "q " << where;
      EXPECT_EQ(t::count_mismatches(dequantize_affine(q, blk, s, z, c.qmin, c.qmax, c.domain),
                                    dequantize_affine(q.t(), blk_t, st, zt, c.qmin, c.qmax, c.domain).t(), &where),
                0)
          << "dq " << where;
      Tensor y = fake_quantize_affine(x, blk, s, z, c.qmin, c.qmax, c.domain);
      Tensor yt = fake_quantize_affine(xt, blk_t, st, zt, c.qmin, c.qmax, c.domain);
      EXPECT_EQ(t::count_mismatches(y, yt.t(), &where), 0) << "fq " << where;
      y.backward(gout);
      yt.backward(gout.t());
      EXPECT_EQ(t::count_mismatches(x.grad(), xt.grad().t(), &where), 0) << "grad " << where;
      // fused dynamic == the two calls, gradient included
      Tensor x2 = base.detach().requires_grad_();
      auto r = fake_quantize_affine_dynamic(x2, c.mapping, blk, c.qmin, c.qmax, 1e-6, c.domain, c.zp_dtype);
      EXPECT_EQ(t::count_mismatches(r.scale, s, &where), 0) << "fused scale " << where;
      EXPECT_EQ(t::count_mismatches(r.zero_point, z, &where), 0) << "fused zero_point " << where;
      EXPECT_EQ(t::count_mismatches(r.y, y, &where), 0) << "fused fq " << where;
      r.y.backward(gout);
      EXPECT_EQ(t::count_mismatches(x2.grad(), x.grad(), &where), 0) << "fused grad " << where;
      if (c.domain == ZeroPointDomain::INT) {  // fused dynamic quantization == the two calls
        auto qd = quantize_affine_dynamic(base, c.mapping, blk, container, c.qmin, c.qmax, 1e-6, c.zp_dtype);
        EXPECT_EQ(t::count_mismatches(qd.q, q, &where), 0) << "fused q " << where;
        EXPECT_EQ(t::count_mismatches(qd.scale, s, &where), 0) << "fused q scale " << where;
        EXPECT_EQ(t::count_mismatches(qd.zero_point, z, &where), 0) << "fused q zero_point " << where;
      }
    }
    // a strided block structure through the fused entry point falls back to the two-pass path
    auto r = fake_quantize_affine_dynamic(base, MappingType::SYMMETRIC, {rows, 1}, -8, 7);
    EXPECT_EQ(r.scale.shape(), (Shape{1, cols}));
  }
}

// A block size that does not divide the input ends in a shorter (ragged) block. For the INT and
// NONE zero-point domains that is exactly the result of zero-padding the input to whole blocks
// (a zero changes neither min(x, 0) nor max(x, 0)) and cutting the padding off again -- on the
// run path (blocks along the last dim) and on the strided path (blocks along dim 0), forward,
// codes, dequantization and the straight-through gradient.
TEST(Affine, RaggedLastBlockEqualsZeroPadding) {
  Generator gen(11);
  struct Case {
    Shape shape, block;
    MappingType mapping;
    int64_t qmin, qmax;
  };
  const Case cases[] = {{{5, 50}, {1, 32}, MappingType::SYMMETRIC, -8, 7},
                        {{5, 50}, {1, 32}, MappingType::ASYMMETRIC, -8, 7},
                        {{3, 7}, {1, 4}, MappingType::ASYMMETRIC, 0, 15},
                        {{12, 6}, {8, 1}, MappingType::SYMMETRIC, -128, 127},
                        {{12, 6}, {5, 4}, MappingType::ASYMMETRIC, -8, 7},
                        {{4, 10}, {1, 64}, MappingType::SYMMETRIC, -8, 7}};  // one block, shorter than its size
  for (const auto& c : cases) {
    SCOPED_TRACE(shape_str(c.shape) + " block " + shape_str(c.block));
    const Tensor x = mul(randn(c.shape, &gen), 3.0);
    Shape padded = c.shape;
    for (size_t d = 0; d < padded.size(); ++d) padded[d] = (padded[d] + c.block[d] - 1) / c.block[d] * c.block[d];
    Tensor xp = zeros(padded);
    const int64_t cols = c.shape[1], pcols = padded[1];
    for (int64_t i = 0; i < c.shape[0]; ++i)
      for (int64_t j = 0; j < cols; ++j) xp.data_ptr<float>()[i * pcols + j] = x.data_ptr<float>()[i * cols + j];
    const auto cut = [&](const Tensor& t) { return t.narrow(0, 0, c.shape[0]).narrow(1, 0, c.shape[1]); };
    auto [s, z] = choose_qparams_affine(x, c.mapping, c.block, c.qmin, c.qmax);
    auto [sp, zp] = choose_qparams_affine(xp, c.mapping, c.block, c.qmin, c.qmax);
    std::string where;
    EXPECT_EQ(count_mismatches(s, sp, &where), 0) << "scale " << where;
    EXPECT_EQ(count_mismatches(z, zp, &where), 0) << "zero_point " << where;
    const Tensor q = quantize_affine(x, c.block, s, z, kInt32, c.qmin, c.qmax);
    const Tensor qp = quantize_affine(xp, c.block, sp, zp, kInt32, c.qmin, c.qmax);
    EXPECT_EQ(count_mismatches(q, cut(qp), &where), 0) << "codes " << where;
    EXPECT_EQ(count_mismatches(dequantize_affine(q, c.block, s, z, c.qmin, c.qmax),
                               cut(dequantize_affine(qp, c.block, sp, zp, c.qmin, c.qmax)), &where),
              0)
        << "dequantized " << where;
    Tensor xg = x.clone().requires_grad_(), xpg = xp.clone().requires_grad_();
    const auto r = fake_quantize_affine_dynamic(xg, c.mapping, c.block, c.qmin, c.qmax);
    const auto rp = fake_quantize_affine_dynamic(xpg, c.mapping, c.block, c.qmin, c.qmax);
    EXPECT_EQ(count_mismatches(r.y.detach(), cut(rp.y.detach()), &where), 0) << "fake quantized " << where;
    const Tensor g = randn(padded, &gen);
    r.y.backward(cut(g));
    rp.y.backward(g);
    EXPECT_EQ(count_mismatches(xg.grad(), cut(xpg.grad()), &where), 0) << "gradient " << where;
    EXPECT_EQ(
        count_mismatches(quantize_affine_dynamic(x, c.mapping, c.block, kInt8, c.qmin, c.qmax).q.to(kInt32), q, &where),
        0)
        << "fused codes " << where;
  }
}

// bfloat16 operands (x and/or scale): torchao's op sequences replayed with torch's own bf16/fp32
// tensors by scripts/gen_bf16_qat_reference.py (PyTorch 2.11; torchao itself is not installable
// here), compared bit for bit: scale, zero point, fake-quantized output and input gradient.
TEST(Affine, BFloat16MatchesTorchReference) {
  std::ifstream in(std::string(LOWBIT_SOURCE_DIR) + "/tests/qat/data/bf16_affine.json");
  ASSERT_TRUE(in.good());
  const auto doc = nlohmann::json::parse(in);
  auto tensor_from_bits = [](const nlohmann::json& v, const Shape& shape, DType dt) {
    Tensor t = empty(shape, dt);
    for (int64_t i = 0; i < t.numel(); ++i) {
      const uint32_t u = v[i].get<uint32_t>();
      if (dt == kBFloat16) {
        t.data_ptr<BFloat16>()[i].bits = static_cast<uint16_t>(u);
      } else {
        float f;
        std::memcpy(&f, &u, 4);
        t.data_ptr<float>()[i] = f;
      }
    }
    return t;
  };
  int checked = 0;
  for (const auto& c : doc["cases"]) {
    const DType xd = c["x_dtype"] == "bfloat16" ? kBFloat16 : kFloat32,
                sd = c["scale_dtype"] == "bfloat16" ? kBFloat16 : kFloat32;
    const Shape shape = c["shape"].get<std::vector<int64_t>>();
    const int64_t group = c["group"], qmin = c["quant_min"], qmax = c["quant_max"];
    const MappingType mapping = c["mapping"] == "SYMMETRIC" ? MappingType::SYMMETRIC : MappingType::ASYMMETRIC;
    SCOPED_TRACE(fmt::format("x {} scale {} {} [{}, {}] group {}", dtype_name(xd), dtype_name(sd),
                             c["mapping"].get<std::string>(), qmin, qmax, group));
    Tensor x = tensor_from_bits(c["x"], shape, xd).requires_grad_();
    const Shape blk{1, group};
    auto [s, z] =
        choose_qparams_affine(x.detach(), mapping, blk, qmin, qmax, std::nullopt, ZeroPointDomain::INT, kInt32, sd);
    ASSERT_EQ(s.dtype(), sd);
    std::string where;
    EXPECT_EQ(count_mismatches(s.flatten(), tensor_from_bits(c["scale"], {s.numel()}, sd), &where), 0)
        << "scale " << where;
    EXPECT_EQ(count_mismatches(z.flatten(),
                               from_vector<int32_t>(c["zero_point"].get<std::vector<int32_t>>(), {z.numel()}), &where),
              0)
        << "zp " << where;
    Tensor y = fake_quantize_affine(x, blk, s, z, qmin, qmax);
    ASSERT_EQ(y.dtype(), xd);
    EXPECT_EQ(count_mismatches(y, tensor_from_bits(c["fq"], shape, xd), &where), 0) << "fq " << where;
    y.backward(tensor_from_bits(c["grad_output"], shape, xd));
    EXPECT_EQ(count_mismatches(x.grad(), tensor_from_bits(c["grad_input"], shape, xd), &where), 0) << "grad " << where;
    // the quantizer module on the same input: same bits (dynamic qparams in the input's dtype)
    IntxFakeQuantizeConfig cfg(qmin == -8 ? "int4" : "int8", PerGroup{group}, std::nullopt, std::nullopt, mapping);
    cfg.scale_precision = sd;
    if (mapping == MappingType::SYMMETRIC) {
      EXPECT_EQ(count_mismatches(FakeQuantizer(cfg).forward(x.detach()), y.detach(), &where), 0)
          << "FakeQuantizer " << where;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 18);
  // bf16 codes dequantized to bf16
  const Tensor q = from_vector<int8_t>({-8, 3, 7, 0}, {1, 4});
  const Tensor dq = dequantize_affine(q, {1, 4}, full({1, 1}, 0.3, kBFloat16), zeros({1, 1}, kInt32), -8, 7,
                                      ZeroPointDomain::INT, kBFloat16);
  EXPECT_EQ(dq.dtype(), kBFloat16);
  EXPECT_EQ(static_cast<float>(dq.data_ptr<BFloat16>()[1]),
            static_cast<float>(BFloat16(3.0f * static_cast<float>(BFloat16(0.3f)))));
}
