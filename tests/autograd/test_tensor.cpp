#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include <lowbit/lowbit.h>

using namespace lowbit;

TEST(Tensor, FactoriesShapesAndDtypes) {
  Tensor z = zeros({2, 3});
  EXPECT_EQ(z.shape(), (Shape{2, 3}));
  EXPECT_EQ(z.dtype(), kFloat32);
  EXPECT_EQ(z.numel(), 6);
  EXPECT_EQ(z.size(-1), 3);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(z.data_ptr<float>()[i], 0.0f);
  Tensor o = ones({4}, kInt32);
  EXPECT_EQ(o.data_ptr<int32_t>()[3], 1);
  Tensor f = full({2}, 2.5, kFloat64);
  EXPECT_EQ(f.data_ptr<double>()[1], 2.5);
  Tensor a = arange(5);
  EXPECT_EQ(a.dtype(), kInt64);
  EXPECT_EQ(a.data_ptr<int64_t>()[4], 4);
  Tensor af = arange(0.0, 1.0, 0.25, kFloat32);
  EXPECT_EQ(af.numel(), 4);
  EXPECT_FLOAT_EQ(af.data_ptr<float>()[3], 0.75f);
  Tensor s = scalar_tensor(3.0);
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.item<float>(), 3.0f);
  Tensor e = empty({0, 4});
  EXPECT_EQ(e.numel(), 0);
  for (DType d : {kFloat32, kBFloat16, kFloat64, kInt8, kUInt8, kInt32, kInt64, kBool}) {
    Tensor t = ones({3}, d);
    EXPECT_EQ(t.dtype(), d);
    EXPECT_EQ(t.narrow(0, 2, 1).item<double>(), 1.0);
    EXPECT_EQ(dtype_from_name(dtype_name(d)), d);
  }
}

TEST(Tensor, StorageIs64ByteAligned) {
  for (int n : {1, 3, 17, 1000}) {
    Tensor t = empty({n});
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u);
  }
}

TEST(Tensor, FromVectorAndBlob) {
  Tensor t = from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  EXPECT_EQ(t.data_ptr<float>()[5], 6.0f);
  std::vector<double> buf = {1, 2, 3};
  bool freed = false;
  {
    Tensor b = from_blob(buf.data(), {3}, kFloat64, [&](void*) { freed = true; });
    EXPECT_EQ(b.data_ptr<double>(), buf.data());  // no copy
    b.data_ptr<double>()[0] = 9;
    EXPECT_EQ(buf[0], 9);
  }
  EXPECT_TRUE(freed);
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = arange(0.0, 24.0, 1.0, kFloat32).reshape({2, 3, 4});
  Tensor v = t.view({6, 4});
  EXPECT_TRUE(v.is_alias_of(t));
  EXPECT_TRUE(t.flatten().is_alias_of(t));
  EXPECT_TRUE(t.unsqueeze(0).is_alias_of(t));
  EXPECT_EQ(t.unsqueeze(0).shape(), (Shape{1, 2, 3, 4}));
  EXPECT_TRUE(t.unsqueeze(1).squeeze(1).is_alias_of(t));
  EXPECT_EQ(ones({1, 3, 1}).squeeze().shape(), (Shape{3}));
  Tensor n = t.narrow(0, 1, 1);  // contiguous slice: a view
  EXPECT_TRUE(n.is_alias_of(t));
  EXPECT_EQ(n.data_ptr<float>()[0], 12.0f);
  Tensor s = t.select(0, 1);
  EXPECT_TRUE(s.is_alias_of(t));
  EXPECT_EQ(s.shape(), (Shape{3, 4}));
  v.data_ptr<float>()[0] = -1.0f;  // writes are visible through every view
  EXPECT_EQ(t.data_ptr<float>()[0], -1.0f);
  Tensor c = t.narrow(2, 1, 2);  // non-contiguous slice: copied
  EXPECT_FALSE(c.is_alias_of(t));
  EXPECT_EQ(c.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(c.data_ptr<float>()[0], 1.0f);
  EXPECT_EQ(c.data_ptr<float>()[2], 5.0f);
}

TEST(Tensor, BFloat16RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties go to even (1.0)
  EXPECT_EQ(BFloat16::from_float(1.0f + 0x1p-8f), 0x3f80);
  // 1 + 3*2^-8 is halfway between 1.0078125 (odd mantissa) and 1.015625: rounds up to even
  EXPECT_EQ(BFloat16::from_float(1.0f + 3 * 0x1p-8f), 0x3f82);
  EXPECT_EQ(BFloat16::from_float(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // above half: up
  EXPECT_EQ(BFloat16::from_float(-2.0f), 0xc000);
  EXPECT_EQ(BFloat16::from_float(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_TRUE(std::isnan(BFloat16::to_float(BFloat16::from_float(std::nanf("")))));
  EXPECT_EQ(BFloat16::from_float(3.4e38f), 0x7f80);  // overflow to inf like torch
  Tensor t = from_vector<float>({1.0f + 0x1p-8f, 3.14159f}).to(kBFloat16);
  EXPECT_EQ(t.dtype(), kBFloat16);
  Tensor back = t.to(kFloat32);
  EXPECT_EQ(back.data_ptr<float>()[0], 1.0f);
  EXPECT_EQ(back.data_ptr<float>()[1], 3.140625f);
  // math on bfloat16 upcasts to float32 and rounds back
  Tensor s = add(t, t);
  EXPECT_EQ(s.dtype(), kBFloat16);
  EXPECT_EQ(s.to(kFloat32).data_ptr<float>()[1], 6.28125f);
}

TEST(Tensor, ConversionsAndItem) {
  Tensor t = from_vector<float>({1.7f, -2.5f, 300.0f});
  Tensor i = t.to(kInt32);
  EXPECT_EQ(i.data_ptr<int32_t>()[0], 1);
  EXPECT_EQ(i.data_ptr<int32_t>()[1], -2);
  EXPECT_EQ(t.to(kFloat64).data_ptr<double>()[2], 300.0);
  EXPECT_EQ(t.narrow(0, 2, 1).item<int64_t>(), 300);
  EXPECT_TRUE(t.to(kBool).data_ptr<bool>()[0]);
}

TEST(Tensor, SeededRandomIsThreadCountIndependent) {
  const int saved = get_num_threads();
  std::vector<Tensor> draws;
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    Generator g(123);
    Tensor u = empty({300000});
    u.uniform_(-1, 1, &g);
    Tensor n = empty({300000});
    n.normal_(0, 1, &g);
    draws.push_back(cat({u, n}));
  }
  set_num_threads(saved);
  EXPECT_EQ(std::memcmp(draws[0].raw_data(), draws[1].raw_data(), draws[0].nbytes()), 0);
  // same seed, same bits; different seed, different bits
  Generator a(5), b(5), c(6);
  EXPECT_EQ(rand({4}, &a).data_ptr<float>()[3], rand({4}, &b).data_ptr<float>()[3]);
  EXPECT_NE(rand({4}, &a).data_ptr<float>()[0], rand({4}, &c).data_ptr<float>()[0]);
}

TEST(Tensor, RandomDistributions) {
  Generator g(42);
  Tensor n = randn({200000}, &g);
  EXPECT_NEAR(mean(n).item<double>(), 0.0, 0.01);
  EXPECT_NEAR(var(n).item<double>(), 1.0, 0.02);
  Tensor u = rand({200000}, &g);
  EXPECT_NEAR(mean(u).item<double>(), 0.5, 0.01);
  EXPECT_GE(amin(u).item<float>(), 0.0f);
  EXPECT_LT(amax(u).item<float>(), 1.0f);
  Tensor r = randint(3, 7, {10000}, &g);
  int64_t lo = 100, hi = -100;
  for (int64_t i = 0; i < r.numel(); ++i) {
    lo = std::min(lo, r.data_ptr<int64_t>()[i]);
    hi = std::max(hi, r.data_ptr<int64_t>()[i]);
  }
  EXPECT_EQ(lo, 3);
  EXPECT_EQ(hi, 6);
}

TEST(Tensor, PrintsLikePyTorch) {
  EXPECT_EQ(from_vector<float>({1, 2, 3, 4}, {2, 2}).to_string(),
            "tensor([[1., 2.],\n        [3., 4.]], dtype=float32)");
  EXPECT_EQ(from_vector<float>({1.5f, -0.25f}).to_string(), "tensor([ 1.5000, -0.2500], dtype=float32)");
  EXPECT_EQ(from_vector<int64_t>({1, 20, 3}).to_string(), "tensor([ 1, 20,  3], dtype=int64)");
  EXPECT_EQ(scalar_tensor(2.0).to_string(), "tensor(2., dtype=float32)");
  Tensor w = ones({2});
  w.requires_grad_();
  EXPECT_EQ(w.to_string(), "tensor([1., 1.], dtype=float32, requires_grad=True)");
  EXPECT_EQ(mul(w, 2.0).to_string(), "tensor([2., 2.], dtype=float32, grad_fn=<MulBackward0>)");
  const std::string big = arange(0.0, 2000.0, 1.0, kFloat32).to_string();
  EXPECT_EQ(big, "tensor([   0.,    1.,    2.,  ..., 1997., 1998., 1999.], dtype=float32)");
  const std::string big2 = zeros({100, 100}).to_string();
  EXPECT_NE(big2.find("...,"), std::string::npos);
  EXPECT_LT(big2.size(), 400u);
  EXPECT_EQ(from_vector<float>({1e-6f, 1.0f}).to_string(), "tensor([1.0000e-06, 1.0000e+00], dtype=float32)");
}

TEST(Tensor, InPlaceFillCopy) {
  Tensor t = empty({3});
  t.fill_(2.0);
  EXPECT_EQ(t.data_ptr<float>()[2], 2.0f);
  Tensor src = from_vector<double>({1, 2, 3});
  t.copy_(src);
  EXPECT_EQ(t.data_ptr<float>()[1], 2.0f);
  EXPECT_THROW(t.copy_(ones({4})), Error);
}

TEST(Tensor, ThreadSettingValidated) {
  EXPECT_THROW(set_num_threads(0), Error);
  const int n = get_num_threads();
  set_num_threads(1);
  EXPECT_EQ(get_num_threads(), 1);
  set_num_threads(n);
}
