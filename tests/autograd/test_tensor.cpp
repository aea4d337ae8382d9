#include <gtest/gtest.h>

#include <lowbit/lowbit.h>

using namespace lowbit;

TEST(Tensor, Smoke) {
  Tensor a = ones({2, 3});
  EXPECT_EQ(a.numel(), 6);
}
