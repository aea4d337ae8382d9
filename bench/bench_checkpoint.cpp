// Checkpoint save and load throughput against the disk's own limit: a training checkpoint of a
// 16.8M-parameter model with AdamW state (3 x 67 MB of float32) saved and loaded, next to a
// plain write(2) + fsync of the same number of bytes and a read(2) of them (the peer: what the
// file system itself does, with no format at all).
//   ./build/bench/bench_checkpoint [--dir=/path] [--threads=N]
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <vector>

#include <lowbit/lowbit.h>

#include "bench_util.h"

using namespace lowbit;

namespace {
std::string g_dir = "/tmp";

struct Fixture {
  std::shared_ptr<nn::Sequential> model;
  std::unique_ptr<optim::AdamW> opt;
  uint64_t bytes = 0;  // of tensors in the checkpoint
  Fixture() {
    manual_seed(0);
    std::vector<std::shared_ptr<nn::Module>> layers;
    for (int i = 0; i < 4; ++i) layers.push_back(std::make_shared<nn::Linear>(2048, 2048));
    model = std::make_shared<nn::Sequential>(layers);
    opt = std::make_unique<optim::AdamW>(model->parameters());
    for (auto& p : model->parameters()) p.set_grad(randn(p.shape()));
    opt->step();  // creates exp_avg / exp_avg_sq
    bytes = 3 * static_cast<uint64_t>(model->num_parameters()) * 4;
  }
};
Fixture& fixture() {
  static Fixture f;
  return f;
}

void BM_SaveCheckpoint(benchmark::State& st) {
  auto& f = fixture();
  const std::string path = g_dir + "/lowbit_bench_ckpt.h5";
  for (auto _ : st) io::save_checkpoint(path, *f.model, f.opt.get(), nullptr, nullptr, {});
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * f.bytes));
}
void BM_LoadCheckpoint(benchmark::State& st) {
  auto& f = fixture();
  const std::string path = g_dir + "/lowbit_bench_ckpt.h5";
  io::save_checkpoint(path, *f.model, f.opt.get(), nullptr, nullptr, {});
  for (auto _ : st) io::load_checkpoint(path, *f.model, f.opt.get());
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * f.bytes));
}
void BM_PeerWriteFsync(benchmark::State& st) {
  auto& f = fixture();
  const std::string path = g_dir + "/lowbit_bench_raw.bin";
  std::vector<char> buf(f.bytes, 1);
  for (auto _ : st) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (size_t done = 0; done < buf.size();)
      done += static_cast<size_t>(::write(fd, buf.data() + done, buf.size() - done));
    ::fsync(fd);
    ::close(fd);
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * f.bytes));
}
void BM_PeerRead(benchmark::State& st) {
  auto& f = fixture();
  const std::string path = g_dir + "/lowbit_bench_raw.bin";
  std::vector<char> buf(f.bytes);
  for (auto _ : st) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    for (size_t done = 0; done < buf.size();) {
      const ssize_t n = ::read(fd, buf.data() + done, buf.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    ::close(fd);
    benchmark::DoNotOptimize(buf.data());
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * f.bytes));
}
BENCHMARK(BM_SaveCheckpoint)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_PeerWriteFsync)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_LoadCheckpoint)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_PeerRead)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--dir=", 0) == 0)
      g_dir = a.substr(6);
    else
      rest.push_back(argv[i]);
  }
  int n = static_cast<int>(rest.size());
  auto rep = bench::run_all(n, rest.data(), [](int t) { set_num_threads(t); });
  const double mb = static_cast<double>(fixture().bytes) / 1e6;
  const double save = rep.seconds("BM_SaveCheckpoint"), write = rep.seconds("BM_PeerWriteFsync");
  const double load = rep.seconds("BM_LoadCheckpoint"), read = rep.seconds("BM_PeerRead");
  std::printf("\n%.0f MB of tensors in %s\n", mb, g_dir.c_str());
  std::printf("save (CRC, fsync, rename): %7.0f MB/s   write(2)+fsync: %7.0f MB/s   ratio %.2f\n", mb / save,
              mb / write, write / save);
  std::printf("load (CRC, validation):    %7.0f MB/s   read(2):        %7.0f MB/s   ratio %.2f\n", mb / load, mb / read,
              read / load);
  std::filesystem::remove(g_dir + "/lowbit_bench_ckpt.h5");
  std::filesystem::remove(g_dir + "/lowbit_bench_raw.bin");
  return 0;
}
