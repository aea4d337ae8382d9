// Datasets and the DataLoader: batching, seeded shuffling (the order depends only on the seed
// and the epoch), drop_last, and a background thread that prepares the next batch.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "lowbit/autograd/tensor.h"

namespace lowbit::data {

struct Batch {
  Tensor data;
  Tensor target;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  /// The examples at the given indices, stacked along a new first dim.
  virtual Batch get_batch(const std::vector<int64_t>& indices) const = 0;
};

/// Rows of two tensors with the same first dimension.
class TensorDataset : public Dataset {
 public:
  TensorDataset(Tensor data, Tensor target);
  int64_t size() const override { return data_.size(0); }
  Batch get_batch(const std::vector<int64_t>& indices) const override;
  const Tensor& data() const { return data_; }
  const Tensor& target() const { return target_; }

 private:
  Tensor data_, target_;
};

struct DataLoaderOptions {
  int64_t batch_size = 64;
  bool shuffle = true;
  uint64_t seed = 0;
  bool drop_last = false;
  bool prefetch = true;  // prepare the next batch on a background thread
  /// Data parallelism: the batches are the global ones (batch_size, order, drop_last as in one
  /// process) and this loader returns rank's contiguous share of each: examples
  /// [len*rank/num_replicas, len*(rank+1)/num_replicas) of a batch of len.
  int64_t num_replicas = 1;
  int64_t rank = 0;
};

/// Iterates epochs of batches:  while (auto b = loader.next()) { ... }  — next() returns
/// nullopt once at the end of each epoch, then starts the following epoch.
class DataLoader {
 public:
  DataLoader(std::shared_ptr<const Dataset> dataset, DataLoaderOptions options);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  std::optional<Batch> next();
  int64_t num_batches() const;
  /// Examples in global batch b of an epoch (all ranks' shares together).
  int64_t global_batch_size(int64_t b) const;
  int64_t epoch() const { return epoch_; }
  /// Batches already returned in the current epoch.
  int64_t position() const { return position_; }
  /// Jumps to (epoch, position): the next batch is the one an uninterrupted run would get.
  void seek(int64_t epoch, int64_t position);
  const DataLoaderOptions& options() const { return opts_; }
  /// The sample order of an epoch (identity when not shuffling).
  std::vector<int64_t> order(int64_t epoch) const;

 private:
  std::vector<int64_t> batch_indices(int64_t b) const;
  void start_epoch();
  void worker_loop();
  void stop_worker();
  std::shared_ptr<const Dataset> dataset_;
  DataLoaderOptions opts_;
  int64_t epoch_ = 0, position_ = 0;
  std::vector<int64_t> order_;
  // prefetch
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Batch> ready_;
  int64_t ready_index_ = -1, wanted_index_ = -1;
  uint64_t generation_ = 0;  // bumped when the order changes; stale batches are dropped
  std::string worker_error_;
  bool stop_ = false;
};

/// Fashion-MNIST from the gzip'd IDX files (Debian package dataset-fashion-mnist installs them
/// under /usr/share/datasets/fashion-mnist). Images are (N, 784) float32 normalized with the
/// training set's mean 0.2860 and std 0.3530; labels int64.
struct FashionMNIST {
  /// dir: "" = $LOWBIT_FASHION_MNIST_DIR or the Debian path.
  static std::shared_ptr<TensorDataset> load(const std::string& dir, bool train);
  static std::string default_dir();
};

/// Reads an IDX file (optionally gzip'd); errors name the file and what was wrong.
Tensor read_idx(const std::string& path, uint8_t expected_type, int expected_dims);

/// Character-level language-modelling corpus: x is a window of `context` tokens, y the same
/// window shifted by one. Vocabulary = the bytes present in the text, sorted.
class CharDataset : public Dataset {
 public:
  CharDataset(std::vector<int64_t> tokens, int64_t context);
  int64_t size() const override;
  Batch get_batch(const std::vector<int64_t>& starts) const override;
  int64_t context() const { return context_; }

 private:
  std::vector<int64_t> tokens_;
  int64_t context_;
};

struct CharCorpus {
  /// At most this many bytes of text are read (a corpus is read whole and held as int64 token
  /// ids, 8 bytes each); a larger corpus, or an endless file such as /dev/zero, is an error.
  static constexpr size_t kMaxBytes = size_t{64} << 20;
  std::vector<unsigned char> vocab;  // id -> byte
  std::vector<int64_t> train_tokens, val_tokens;
  /// Loads text from a file or from every plain-text file of a directory (the fortunes
  /// package's /usr/share/games/fortunes by default; $LOWBIT_TEXT_CORPUS overrides), splits the
  /// first (1 - val_fraction) for training.
  static CharCorpus load(const std::string& path, double val_fraction = 0.1);
  static std::string default_path();
  std::string decode(const std::vector<int64_t>& ids) const;
  std::vector<int64_t> encode(const std::string& text) const;
};

}  // namespace lowbit::data
