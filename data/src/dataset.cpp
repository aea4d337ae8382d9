#include "lowbit/data/dataset.h"

#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "lowbit/autograd/generator.h"
#include "lowbit/autograd/ops.h"

namespace lowbit::data {

// ---------------- TensorDataset ----------------
TensorDataset::TensorDataset(Tensor data, Tensor target) : data_(std::move(data)), target_(std::move(target)) {
  LOWBIT_CHECK(data_.defined() && target_.defined() && data_.dim() >= 1 && target_.dim() >= 1 &&
                   data_.size(0) == target_.size(0),
               "TensorDataset: data {} and target {} must have the same first dimension",
               data_.defined() ? shape_str(data_.shape()) : "undefined",
               target_.defined() ? shape_str(target_.shape()) : "undefined");
}
namespace {
Tensor gather_rows(const Tensor& t, const std::vector<int64_t>& idx) {
  Shape s = t.shape();
  s[0] = static_cast<int64_t>(idx.size());
  Tensor out = empty(s, t.dtype());
  const size_t row = t.nbytes() / static_cast<size_t>(std::max<int64_t>(t.size(0), 1));
  for (size_t i = 0; i < idx.size(); ++i) {
    LOWBIT_CHECK(idx[i] >= 0 && idx[i] < t.size(0), "Dataset: index {} is out of range for {} examples", idx[i],
                 t.size(0));
    std::memcpy(static_cast<char*>(out.raw_data()) + i * row, static_cast<const char*>(t.raw_data()) + idx[i] * row,
                row);
  }
  return out;
}
}  // namespace
Batch TensorDataset::get_batch(const std::vector<int64_t>& idx) const {
  return {gather_rows(data_, idx), gather_rows(target_, idx)};
}

// ---------------- DataLoader ----------------
DataLoader::DataLoader(std::shared_ptr<const Dataset> ds, DataLoaderOptions o) : dataset_(std::move(ds)), opts_(o) {
  LOWBIT_CHECK(dataset_ != nullptr, "DataLoader: dataset is null");
  LOWBIT_CHECK(opts_.batch_size > 0, "DataLoader: batch_size must be positive, got {}", opts_.batch_size);
  LOWBIT_CHECK(opts_.num_replicas >= 1 && opts_.rank >= 0 && opts_.rank < opts_.num_replicas,
               "DataLoader: rank {} of {} replicas is out of range", opts_.rank, opts_.num_replicas);
  if (opts_.num_replicas > 1) {
    const int64_t n = dataset_->size(), tail = opts_.drop_last ? 0 : n % opts_.batch_size;
    LOWBIT_CHECK(opts_.batch_size >= opts_.num_replicas,
                 "DataLoader: a batch of {} examples cannot be shared by {} ranks (batch_size is the global batch)",
                 opts_.batch_size, opts_.num_replicas);
    LOWBIT_CHECK(tail == 0 || tail >= opts_.num_replicas,
                 "DataLoader: the last batch of an epoch has {} examples ({} % {}), fewer than the {} ranks: set "
                 "drop_last or change the batch size",
                 tail, n, opts_.batch_size, opts_.num_replicas);
  }
  start_epoch();
  if (opts_.prefetch) worker_ = std::thread([this] { worker_loop(); });
}
DataLoader::~DataLoader() { stop_worker(); }
void DataLoader::stop_worker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

int64_t DataLoader::num_batches() const {
  const int64_t n = dataset_->size(), b = opts_.batch_size;
  return opts_.drop_last ? n / b : (n + b - 1) / b;
}
std::vector<int64_t> DataLoader::order(int64_t epoch) const {
  std::vector<int64_t> o(static_cast<size_t>(dataset_->size()));
  std::iota(o.begin(), o.end(), 0);
  if (!opts_.shuffle) return o;
  // Fisher-Yates driven by the counter-based generator keyed by (seed, epoch)
  const uint64_t key = Generator::bits(opts_.seed, 0x5eed0000ULL + static_cast<uint64_t>(epoch));
  for (int64_t i = static_cast<int64_t>(o.size()) - 1; i > 0; --i) {
    const uint64_t r = Generator::bits(key, static_cast<uint64_t>(i)) % static_cast<uint64_t>(i + 1);
    std::swap(o[i], o[r]);
  }
  return o;
}
void DataLoader::start_epoch() { order_ = order(epoch_); }
int64_t DataLoader::global_batch_size(int64_t b) const {
  const int64_t begin = b * opts_.batch_size;
  return std::max<int64_t>(0, std::min<int64_t>(opts_.batch_size, dataset_->size() - begin));
}
std::vector<int64_t> DataLoader::batch_indices(int64_t b) const {
  int64_t begin = b * opts_.batch_size,
          end = std::min<int64_t>(begin + opts_.batch_size, static_cast<int64_t>(order_.size()));
  if (opts_.num_replicas > 1) {  // this rank's contiguous share
    const int64_t len = end - begin, r = opts_.rank, n = opts_.num_replicas;
    end = begin + len * (r + 1) / n;
    begin = begin + len * r / n;
  }
  return std::vector<int64_t>(order_.begin() + begin, order_.begin() + end);
}
void DataLoader::worker_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || (wanted_index_ >= 0 && wanted_index_ != ready_index_); });
    if (stop_) return;
    const int64_t b = wanted_index_;
    const uint64_t gen = generation_;
    std::vector<int64_t> idx = batch_indices(b);
    lock.unlock();
    std::optional<Batch> result;
    std::string err;
    try {
      result = dataset_->get_batch(idx);
    } catch (const std::exception& e) {
      err = e.what();
    }
    lock.lock();
    if (wanted_index_ == b && generation_ == gen) {
      ready_ = std::move(result);
      ready_index_ = b;
      worker_error_ = err;
      cv_.notify_all();
    }
  }
}
std::optional<Batch> DataLoader::next() {
  if (position_ >= num_batches()) {
    ++epoch_;
    position_ = 0;
    if (opts_.prefetch) {
      std::lock_guard<std::mutex> lock(mu_);
      wanted_index_ = -1;
      ready_index_ = -1;
      ready_.reset();
      ++generation_;
      start_epoch();
    } else {
      start_epoch();
    }
    return std::nullopt;
  }
  const int64_t b = position_++;
  if (!opts_.prefetch) return dataset_->get_batch(batch_indices(b));
  std::unique_lock<std::mutex> lock(mu_);
  if (wanted_index_ != b) {
    wanted_index_ = b;
    cv_.notify_all();
  }
  cv_.wait(lock, [&] { return ready_index_ == b; });
  if (!worker_error_.empty()) {
    std::string e = worker_error_;
    worker_error_.clear();
    ready_index_ = -1;
    throw Error(e);
  }
  Batch out = std::move(*ready_);
  ready_.reset();
  // ask for the following batch right away
  if (position_ < num_batches()) {
    wanted_index_ = position_;
    cv_.notify_all();
  }
  return out;
}
void DataLoader::seek(int64_t epoch, int64_t position) {
  LOWBIT_CHECK(epoch >= 0 && position >= 0 && position <= num_batches(),
               "DataLoader::seek: position ({}, {}) is out of range ({} batches per epoch)", epoch, position,
               num_batches());
  std::lock_guard<std::mutex> lock(mu_);
  epoch_ = epoch;
  position_ = position;
  wanted_index_ = -1;
  ready_index_ = -1;
  ready_.reset();
  ++generation_;
  start_epoch();
}

// ---------------- IDX files ----------------
namespace {
// Fashion-MNIST's largest file is 47 MB uncompressed; more than this is not an IDX file of it
// (a gzip bomb is refused instead of filling memory).
constexpr size_t kMaxIdxBytes = size_t{256} << 20;

std::vector<unsigned char> read_maybe_gz(const std::string& path) {
  LOWBIT_CHECK(std::filesystem::exists(path), "cannot open '{}': no such file (is the dataset installed? see README)",
               path);
  gzFile f = gzopen(path.c_str(), "rb");
  LOWBIT_CHECK(f != nullptr, "cannot open '{}' for reading", path);
  std::vector<unsigned char> out;
  unsigned char buf[1 << 16];
  while (true) {
    const int n = gzread(f, buf, sizeof(buf));
    if (n < 0) {
      int errnum = 0;
      std::string msg = gzerror(f, &errnum);
      gzclose(f);
      throw Error(fmt::format("'{}': corrupt gzip data ({})", path, msg));
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > kMaxIdxBytes) {
      gzclose(f);
      throw Error(
          fmt::format("'{}': more than {} MiB of data; not a Fashion-MNIST IDX file", path, kMaxIdxBytes >> 20));
    }
    out.insert(out.end(), buf, buf + n);
  }
  // a truncated gzip stream reads short without an error code from gzread on some zlibs
  int errnum = 0;
  const char* msg = gzerror(f, &errnum);
  const std::string m = msg ? msg : "";
  gzclose(f);
  LOWBIT_CHECK(errnum == Z_OK || errnum == Z_STREAM_END, "'{}': corrupt gzip data ({})", path, m);
  return out;
}
uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
}  // namespace

Tensor read_idx(const std::string& path, uint8_t expected_type, int expected_dims) {
  const auto bytes = read_maybe_gz(path);
  LOWBIT_CHECK(bytes.size() >= 4, "'{}': file is truncated ({} bytes; an IDX header needs at least 4)", path,
               bytes.size());
  const uint32_t magic = be32(bytes.data());
  const uint32_t expected_magic = (uint32_t{expected_type} << 8) | static_cast<uint32_t>(expected_dims);
  LOWBIT_CHECK(magic == expected_magic,
               "'{}': wrong magic number 0x{:08x} (expected 0x{:08x}: IDX type 0x{:02x} with {} dims)", path, magic,
               expected_magic, expected_type, expected_dims);
  const size_t header = 4 + 4 * static_cast<size_t>(expected_dims);
  LOWBIT_CHECK(bytes.size() >= header, "'{}': file is truncated in its header ({} bytes, need {})", path, bytes.size(),
               header);
  Shape shape;
  for (int d = 0; d < expected_dims; ++d) shape.push_back(be32(bytes.data() + 4 + 4 * d));
  const size_t n = static_cast<size_t>(detail::numel_of(shape));
  LOWBIT_CHECK(bytes.size() - header >= n, "'{}': file is truncated: shape {} needs {} data bytes, found {}", path,
               shape_str(shape), n, bytes.size() - header);
  LOWBIT_CHECK(bytes.size() - header == n, "'{}': {} unexpected trailing bytes after the data for shape {}", path,
               bytes.size() - header - n, shape_str(shape));
  Tensor t = empty(shape, kUInt8);
  if (n > 0) std::memcpy(t.raw_data(), bytes.data() + header, n);  // an empty tensor has no storage
  return t;
}

std::string FashionMNIST::default_dir() {
  const char* env = std::getenv("LOWBIT_FASHION_MNIST_DIR");
  return env && *env ? env : "/usr/share/datasets/fashion-mnist";
}
std::shared_ptr<TensorDataset> FashionMNIST::load(const std::string& dir_in, bool train) {
  const std::string dir = dir_in.empty() ? default_dir() : dir_in;
  const std::string prefix = dir + "/" + (train ? "train" : "t10k");
  Tensor images = read_idx(prefix + "-images-idx3-ubyte.gz", 0x08, 3);
  Tensor labels = read_idx(prefix + "-labels-idx1-ubyte.gz", 0x08, 1);
  LOWBIT_CHECK(images.size(0) == labels.size(0), "Fashion-MNIST in '{}': {} images but {} labels", dir, images.size(0),
               labels.size(0));
  LOWBIT_CHECK(images.size(1) == 28 && images.size(2) == 28, "Fashion-MNIST in '{}': images are {}x{}, expected 28x28",
               dir, images.size(1), images.size(2));
  const int64_t n = images.size(0);
  LOWBIT_CHECK(n > 0, "Fashion-MNIST in '{}': the {} set has no images", dir, train ? "training" : "test");
  Tensor x = empty({n, 784});
  const uint8_t* src = images.data_ptr<uint8_t>();
  float* dst = x.data_ptr<float>();
  constexpr float kMean = 0.2860f, kStd = 0.3530f;
  for (int64_t i = 0; i < n * 784; ++i) dst[i] = (static_cast<float>(src[i]) / 255.0f - kMean) / kStd;
  Tensor y = labels.to(kInt64);
  for (int64_t i = 0; i < n; ++i)
    LOWBIT_CHECK(y.data_ptr<int64_t>()[i] < 10, "Fashion-MNIST in '{}': label {} at position {} is not a class in 0..9",
                 dir, y.data_ptr<int64_t>()[i], i);
  return std::make_shared<TensorDataset>(x, y);
}

// ---------------- text ----------------
CharDataset::CharDataset(std::vector<int64_t> tokens, int64_t context) : tokens_(std::move(tokens)), context_(context) {
  LOWBIT_CHECK(context > 0, "CharDataset: context must be positive, got {}", context);
  LOWBIT_CHECK(static_cast<int64_t>(tokens_.size()) > context,
               "CharDataset: corpus of {} tokens is shorter than context + 1 = {}", tokens_.size(), context + 1);
}
int64_t CharDataset::size() const { return static_cast<int64_t>(tokens_.size()) - context_; }
Batch CharDataset::get_batch(const std::vector<int64_t>& starts) const {
  const int64_t b = static_cast<int64_t>(starts.size());
  Tensor x = empty({b, context_}, kInt64), y = empty({b, context_}, kInt64);
  for (int64_t i = 0; i < b; ++i) {
    LOWBIT_CHECK(starts[i] >= 0 && starts[i] < size(), "CharDataset: start {} is out of range ({} windows)", starts[i],
                 size());
    std::copy_n(tokens_.begin() + starts[i], context_, x.data_ptr<int64_t>() + i * context_);
    std::copy_n(tokens_.begin() + starts[i] + 1, context_, y.data_ptr<int64_t>() + i * context_);
  }
  return {x, y};
}

std::string CharCorpus::default_path() {
  const char* env = std::getenv("LOWBIT_TEXT_CORPUS");
  return env && *env ? env : "/usr/share/games/fortunes";
}
CharCorpus CharCorpus::load(const std::string& path_in, double val_fraction) {
  namespace fs = std::filesystem;
  const std::string path = path_in.empty() ? default_path() : path_in;
  LOWBIT_CHECK(fs::exists(path),
               "text corpus '{}' does not exist (install Debian's 'fortunes' package or set LOWBIT_TEXT_CORPUS)", path);
  LOWBIT_CHECK(val_fraction > 0 && val_fraction < 1, "CharCorpus: val_fraction must be in (0, 1), got {}",
               val_fraction);
  std::vector<fs::path> files;
  if (fs::is_directory(path)) {
    for (auto& e : fs::directory_iterator(path)) {
      const auto ext = e.path().extension().string();
      if (e.is_regular_file() && ext != ".dat" && ext != ".u8") files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  std::string text;
  std::vector<char> buf(1 << 20);
  for (auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    LOWBIT_CHECK(in.good(), "cannot read '{}'", f.string());
    while (in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      const auto n = static_cast<size_t>(in.gcount());
      LOWBIT_CHECK(
          text.size() + n <= kMaxBytes,
          "text corpus '{}' is larger than {} MiB (reading stopped at '{}'); lowbit reads at most {} MiB of text", path,
          kMaxBytes >> 20, f.string(), kMaxBytes >> 20);
      text.append(buf.data(), n);
    }
    LOWBIT_CHECK(in.eof(), "cannot read '{}'", f.string());
  }
  LOWBIT_CHECK(text.size() >= 100, "text corpus '{}' holds only {} bytes", path, text.size());
  CharCorpus c;
  bool present[256] = {false};
  for (unsigned char ch : text) present[ch] = true;
  int64_t id_of[256];
  for (int b = 0; b < 256; ++b)
    if (present[b]) {
      id_of[b] = static_cast<int64_t>(c.vocab.size());
      c.vocab.push_back(static_cast<unsigned char>(b));
    }
  const size_t split = static_cast<size_t>(static_cast<double>(text.size()) * (1.0 - val_fraction));
  for (size_t i = 0; i < text.size(); ++i)
    (i < split ? c.train_tokens : c.val_tokens).push_back(id_of[static_cast<unsigned char>(text[i])]);
  return c;
}
std::string CharCorpus::decode(const std::vector<int64_t>& ids) const {
  std::string s;
  for (int64_t id : ids) s += (id >= 0 && id < static_cast<int64_t>(vocab.size())) ? static_cast<char>(vocab[id]) : '?';
  return s;
}
std::vector<int64_t> CharCorpus::encode(const std::string& text) const {
  std::vector<int64_t> out;
  for (unsigned char ch : text) {
    auto it = std::find(vocab.begin(), vocab.end(), ch);
    LOWBIT_CHECK(it != vocab.end(), "CharCorpus::encode: byte 0x{:02x} is not in the vocabulary", ch);
    out.push_back(it - vocab.begin());
  }
  return out;
}

}  // namespace lowbit::data
