#include <gtest/gtest.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <lowbit/lowbit.h>

#include "test_util.h"

using namespace lowbit;
using lowbit::testing::expect_error;
using namespace lowbit::data;

namespace {
std::shared_ptr<TensorDataset> toy(int64_t n) {
  Tensor x = arange(0.0, static_cast<double>(n * 2), 1.0, kFloat32).reshape({n, 2});
  return std::make_shared<TensorDataset>(x, arange(static_cast<double>(n)));
}
std::vector<int64_t> epoch_targets(DataLoader& l) {
  std::vector<int64_t> out;
  while (auto b = l.next())
    for (int64_t i = 0; i < b->target.numel(); ++i) out.push_back(b->target.data_ptr<int64_t>()[i]);
  return out;
}
std::string tmp(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("lowbit_test_" + name)).string();
}
void write_gz(const std::string& path, const std::vector<unsigned char>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}
std::vector<unsigned char> idx_bytes(uint8_t dims, std::vector<uint32_t> shape, size_t data_bytes,
                                     uint32_t magic_override = 0) {
  std::vector<unsigned char> b = {0, 0, 0x08, dims};
  if (magic_override)
    b = {static_cast<unsigned char>(magic_override >> 24), static_cast<unsigned char>(magic_override >> 16),
         static_cast<unsigned char>(magic_override >> 8), static_cast<unsigned char>(magic_override)};
  for (uint32_t s : shape)
    for (int k = 3; k >= 0; --k) b.push_back(static_cast<unsigned char>(s >> (8 * k)));
  for (size_t i = 0; i < data_bytes; ++i) b.push_back(static_cast<unsigned char>(i % 10));
  return b;
}
}  // namespace

TEST(DataLoader, DeterministicShuffleBySeedAndEpoch) {
  auto ds = toy(103);
  DataLoader a(ds, {.batch_size = 10, .shuffle = true, .seed = 7}),
      b(ds, {.batch_size = 10, .shuffle = true, .seed = 7});
  const auto e0 = epoch_targets(a), e0b = epoch_targets(b);
  EXPECT_EQ(e0, e0b);
  EXPECT_EQ(e0.size(), 103u);
  auto sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 103; ++i) EXPECT_EQ(sorted[i], i);  // a permutation
  const auto e1 = epoch_targets(a);
  EXPECT_NE(e0, e1);  // a new order each epoch
  DataLoader c(ds, {.batch_size = 10, .shuffle = true, .seed = 8});
  EXPECT_NE(epoch_targets(c), e0);
  DataLoader sync(ds, {.batch_size = 10, .shuffle = true, .seed = 7, .prefetch = false});
  EXPECT_EQ(epoch_targets(sync), e0);  // prefetching does not change the order
}

// Data-parallel shards: each rank's batches, concatenated in rank order, are the one-process
// batches (same order, same global batch sizes, the last partial batch split too); shares that
// some rank would get empty are refused at construction.
TEST(DataLoader, ShardsConcatenateToTheGlobalBatch) {
  auto ds = toy(103);
  for (int64_t n : {2, 3}) {
    DataLoader whole(ds, {.batch_size = 10, .shuffle = true, .seed = 3});
    std::vector<std::unique_ptr<DataLoader>> ranks;
    for (int64_t r = 0; r < n; ++r)
      ranks.push_back(std::make_unique<DataLoader>(
          ds, DataLoaderOptions{.batch_size = 10, .shuffle = true, .seed = 3, .num_replicas = n, .rank = r}));
    for (int epoch = 0; epoch < 2; ++epoch) {
      int64_t b = 0;
      while (auto g = whole.next()) {
        std::vector<int64_t> joined;
        for (auto& l : ranks) {
          auto part = l->next();
          ASSERT_TRUE(part.has_value());
          EXPECT_GE(part->target.numel(), g->target.numel() / n);
          for (int64_t i = 0; i < part->target.numel(); ++i) joined.push_back(part->target.data_ptr<int64_t>()[i]);
        }
        const std::vector<int64_t> want(g->target.data_ptr<int64_t>(),
                                        g->target.data_ptr<int64_t>() + g->target.numel());
        EXPECT_EQ(joined, want) << n << " ranks, batch " << b;
        EXPECT_EQ(ranks[0]->global_batch_size(b), g->target.numel());
        ++b;
      }
      for (auto& l : ranks) EXPECT_FALSE(l->next().has_value());  // the epoch ends on every rank together
    }
  }
  expect_error([&] { DataLoader bad(ds, {.batch_size = 10, .num_replicas = 4, .rank = 4}); }, {"rank 4 of 4"});
  expect_error([&] { DataLoader bad(ds, {.batch_size = 2, .num_replicas = 3, .rank = 0}); },
               {"cannot be shared by 3 ranks"});
  // 103 % 10 = 3 examples in the last batch: not enough for 4 ranks unless it is dropped
  expect_error([&] { DataLoader bad(ds, {.batch_size = 10, .num_replicas = 4, .rank = 0}); },
               {"fewer than the 4 ranks"});
  DataLoader dropped(ds, {.batch_size = 10, .drop_last = true, .num_replicas = 4, .rank = 0});
  EXPECT_EQ(dropped.num_batches(), 10);
}

TEST(DataLoader, DropLastAndSeek) {
  auto ds = toy(25);
  DataLoader keep(ds, {.batch_size = 10, .shuffle = false});
  EXPECT_EQ(keep.num_batches(), 3);
  DataLoader drop(ds, {.batch_size = 10, .shuffle = false, .drop_last = true});
  EXPECT_EQ(drop.num_batches(), 2);
  EXPECT_EQ(epoch_targets(drop).size(), 20u);
  auto b = keep.next();
  EXPECT_EQ(b->data.shape(), (Shape{10, 2}));
  EXPECT_EQ(b->data.data_ptr<float>()[3], 3.0f);
  // seek reproduces the uninterrupted stream
  DataLoader full(ds, {.batch_size = 4, .shuffle = true, .seed = 3});
  epoch_targets(full);
  full.next();
  auto expected = full.next();
  DataLoader resumed(ds, {.batch_size = 4, .shuffle = true, .seed = 3});
  resumed.seek(1, 1);
  auto got = resumed.next();
  EXPECT_EQ(std::memcmp(got->target.raw_data(), expected->target.raw_data(), expected->target.nbytes()), 0);
  EXPECT_THROW(resumed.seek(0, 99), Error);
  EXPECT_THROW(DataLoader(ds, {.batch_size = 0}), Error);
}

TEST(IdxReader, CorruptFilesGiveClearErrors) {
  const std::string good = tmp("good.gz"), magic = tmp("magic.gz"), trunc = tmp("trunc.gz"), header = tmp("header.gz"),
                    notgz = tmp("notgz.gz");
  write_gz(good, idx_bytes(3, {2, 3, 4}, 24));
  Tensor t = read_idx(good, 0x08, 3);
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(t.data_ptr<uint8_t>()[13], 3);
  write_gz(magic, idx_bytes(3, {2, 3, 4}, 24, 0x00000999));
  expect_error([&] { read_idx(magic, 0x08, 3); }, {magic, "wrong magic number 0x00000999", "expected 0x00000803"});
  write_gz(trunc, idx_bytes(3, {2, 3, 4}, 20));
  expect_error([&] { read_idx(trunc, 0x08, 3); }, {trunc, "truncated", "[2, 3, 4]", "needs 24 data bytes, found 20"});
  write_gz(header, idx_bytes(3, {2}, 0));
  expect_error([&] { read_idx(header, 0x08, 3); }, {header, "truncated in its header"});
  expect_error([&] { read_idx(tmp("does_not_exist.gz"), 0x08, 3); }, {"does_not_exist.gz", "no such file"});
  // a gzip stream cut in half
  {
    write_gz(notgz, idx_bytes(3, {20, 30, 40}, 24000));
    const auto size = std::filesystem::file_size(notgz);
    std::filesystem::resize_file(notgz, size / 2);
    expect_error([&] { read_idx(notgz, 0x08, 3); }, {notgz});
  }
}

TEST(FashionMNIST, LoadsTheDebianPackage) {
  if (!std::filesystem::exists(FashionMNIST::default_dir() + "/t10k-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto test = FashionMNIST::load("", false);
  EXPECT_EQ(test->size(), 10000);
  EXPECT_EQ(test->data().shape(), (Shape{10000, 784}));
  EXPECT_EQ(test->target().dtype(), kInt64);
  EXPECT_NEAR(mean(test->data()).item<double>(), 0.0, 0.05);  // normalized
  EXPECT_EQ(test->target().data_ptr<int64_t>()[0], 9);        // the first test image is an ankle boot
  expect_error([] { FashionMNIST::load("/nonexistent/dir", true); },
               {"/nonexistent/dir/train-images-idx3-ubyte.gz", "no such file"});
}

TEST(CharData, WindowsAreShiftedByOne) {
  const std::string path = tmp("corpus.txt");
  {
    std::ofstream f(path);
    for (int i = 0; i < 20; ++i) f << "hello lowbit world\n";
  }
  auto c = CharCorpus::load(path, 0.25);
  EXPECT_EQ(c.decode(c.encode("hello")), "hello");
  EXPECT_EQ(c.train_tokens.size() + c.val_tokens.size(), 20u * 19u);
  CharDataset ds(c.train_tokens, 8);
  auto b = ds.get_batch({0, 5});
  EXPECT_EQ(b.data.shape(), (Shape{2, 8}));
  for (int j = 0; j < 7; ++j) EXPECT_EQ(b.data.data_ptr<int64_t>()[8 + j + 1], b.target.data_ptr<int64_t>()[8 + j]);
  EXPECT_THROW(ds.get_batch({ds.size()}), Error);
  expect_error([] { CharCorpus::load("/nonexistent/corpus"); }, {"/nonexistent/corpus", "does not exist"});
}
