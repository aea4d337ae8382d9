// MPI behind dist::Comm. Every collective is started non-blocking and polled against the
// timeout: MPI itself waits forever for a rank that hangs.
#include "lowbit/dist/comm.h"

#include <mpi.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "lowbit/autograd/error.h"

namespace lowbit::dist {

namespace {
bool g_finalize_registered = false;
void finalize_at_exit() { Comm::finalize(); }
void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(fmt::format("MPI {} failed: {}", what, std::string(msg, static_cast<size_t>(len))));
}
}  // namespace

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

Comm& Comm::world() {
  static Comm* c = [] {
    Comm* w = new Comm();
    if (!launched_by_mpi()) return w;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      if (!g_finalize_registered) {
        std::atexit(finalize_at_exit);
        g_finalize_registered = true;
      }
    }
    // errors come back as codes (and become exceptions) instead of aborting inside MPI
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    w->mpi_ = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &w->rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &w->size_);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w->rank_, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &w->local_rank_);
    MPI_Comm_size(local, &w->local_size_);
    MPI_Comm_free(&local);
    return w;
  }();
  return *c;
}

void Comm::finalize() {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (inited && !finalized) MPI_Finalize();
}

void Comm::set_timeout(double seconds) {
  LOWBIT_CHECK(seconds > 0 && seconds <= 1e6, "distributed timeout must be in (0, 1e6] seconds, got {}", seconds);
  timeout_s_ = seconds;
}

void Comm::abort(const std::string& message, int code) {
  std::fprintf(stderr, "lowbit: rank %d of %d: %s\n", rank_, size_, message.c_str());
  std::fflush(stderr);
  if (mpi_) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

bool Comm::test(void* request) {
  int done = 0;
  check_mpi(MPI_Test(static_cast<MPI_Request*>(request), &done, MPI_STATUS_IGNORE), "MPI_Test");
  return done != 0;
}

void Comm::wait(void* request, const char* what) {
  using clk = std::chrono::steady_clock;
  const auto t0 = clk::now();
  int64_t polls = 0;
  while (!test(request)) {
    // MPI's non-blocking collectives advance only inside MPI calls (a multi-round schedule
    // needs a test per round: a sleep between tests costs a sleep per round), so poll without
    // sleeping, yielding the core to other runnable processes (oversubscribed ranks)
    if (++polls > 1000) sched_yield();
    if (polls % 64 == 0 && std::chrono::duration<double>(clk::now() - t0).count() > timeout_s_)
      abort(
          fmt::format("{} did not complete within {:g} s: another rank died, hangs, or is at a different "
                      "step (distributed.timeout_s)",
                      what, timeout_s_));
  }
  comm_seconds += std::chrono::duration<double>(clk::now() - t0).count();
}

namespace {
int reduce_in_place(void* values, int64_t n, MPI_Datatype type, MPI_Op op, MPI_Request* r) {
  return MPI_Iallreduce(MPI_IN_PLACE, values, static_cast<int>(n), type, op, MPI_COMM_WORLD, r);
}
}  // namespace

void Comm::allreduce_sum(double* values, int64_t n, const char* what) {
  if (!mpi_ || n == 0) return;
  MPI_Request r;
  check_mpi(reduce_in_place(values, n, MPI_DOUBLE, MPI_SUM, &r), what);
  comm_bytes += n * 8;
  wait(&r, what);
}
void Comm::allreduce_sum(float* values, int64_t n, const char* what) {
  if (!mpi_ || n == 0) return;
  MPI_Request r;
  check_mpi(reduce_in_place(values, n, MPI_FLOAT, MPI_SUM, &r), what);
  comm_bytes += n * 4;
  wait(&r, what);
}
void Comm::allreduce_max(double* values, int64_t n, const char* what) {
  if (!mpi_ || n == 0) return;
  MPI_Request r;
  check_mpi(reduce_in_place(values, n, MPI_DOUBLE, MPI_MAX, &r), what);
  comm_bytes += n * 8;
  wait(&r, what);
}
void Comm::broadcast(void* data, int64_t bytes, int root, const char* what) {
  if (!mpi_ || bytes == 0) return;
  LOWBIT_CHECK(bytes < (int64_t{1} << 31), "{}: {} bytes exceed one MPI message", what, bytes);
  MPI_Request r;
  check_mpi(MPI_Ibcast(data, static_cast<int>(bytes), MPI_BYTE, root, MPI_COMM_WORLD, &r), what);
  comm_bytes += bytes;
  wait(&r, what);
}
std::vector<uint64_t> Comm::allgather(uint64_t value, const char* what) {
  std::vector<uint64_t> all(static_cast<size_t>(size_), value);
  if (!mpi_) return all;
  MPI_Request r;
  check_mpi(MPI_Iallgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD, &r), what);
  wait(&r, what);
  return all;
}
std::string Comm::ranks_differing_from_root(uint64_t value, const char* what) {
  const std::vector<uint64_t> all = allgather(value, what);
  std::string differ;
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differ += (differ.empty() ? "" : ", ") + std::to_string(r);
  return differ;
}
void Comm::allgatherv_inplace(void* all, const std::vector<int64_t>& counts, const char* what) {
  LOWBIT_CHECK(static_cast<int>(counts.size()) == size_, "{}: {} counts for {} ranks", what, counts.size(), size_);
  if (!mpi_) return;
  std::vector<int> c(counts.size()), d(counts.size());
  int64_t off = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    LOWBIT_CHECK(counts[i] >= 0 && off + counts[i] < (int64_t{1} << 31), "{}: {} bytes exceed one MPI message", what,
                 off + counts[i]);
    c[i] = static_cast<int>(counts[i]);
    d[i] = static_cast<int>(off);
    off += counts[i];
  }
  MPI_Request r;
  check_mpi(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, all, c.data(), d.data(), MPI_BYTE, MPI_COMM_WORLD, &r),
            what);
  comm_bytes += off;
  wait(&r, what);
}
std::vector<std::string> Comm::gather_bytes(const std::string& mine, int root, const char* what) {
  if (!mpi_) return {mine};
  LOWBIT_CHECK(mine.size() < (size_t{1} << 31), "{}: {} bytes exceed one MPI message", what, mine.size());
  const std::vector<uint64_t> sizes = allgather(mine.size(), what);
  std::vector<int> c(sizes.size()), d(sizes.size());
  int64_t total = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    LOWBIT_CHECK(total + static_cast<int64_t>(sizes[i]) < (int64_t{1} << 31), "{}: {} bytes exceed one MPI message",
                 what, total + static_cast<int64_t>(sizes[i]));
    c[i] = static_cast<int>(sizes[i]);
    d[i] = static_cast<int>(total);
    total += static_cast<int64_t>(sizes[i]);
  }
  std::string all(rank_ == root ? static_cast<size_t>(total) : 0, '\0');
  MPI_Request r;
  check_mpi(MPI_Igatherv(mine.data(), static_cast<int>(mine.size()), MPI_BYTE, all.data(), c.data(), d.data(), MPI_BYTE,
                         root, MPI_COMM_WORLD, &r),
            what);
  comm_bytes += static_cast<int64_t>(mine.size());
  wait(&r, what);
  std::vector<std::string> out;
  if (rank_ == root)
    for (size_t i = 0; i < sizes.size(); ++i) out.push_back(all.substr(static_cast<size_t>(d[i]), sizes[i]));
  return out;
}
void Comm::on_root(const std::string& what, const std::function<void()>& fn) {
  if (!mpi_) return fn();
  std::string error;
  if (is_root()) {
    try {
      fn();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  int64_t len = static_cast<int64_t>(error.size());
  broadcast(&len, sizeof len, 0, what.c_str());
  error.resize(static_cast<size_t>(len));
  broadcast(error.data(), len, 0, what.c_str());
  if (!error.empty()) throw Error(is_root() ? error : fmt::format("rank 0 failed ({}): {}", what, error));
}

void Comm::barrier(const char* what) {
  if (!mpi_) return;
  MPI_Request r;
  check_mpi(MPI_Ibarrier(MPI_COMM_WORLD, &r), what);
  wait(&r, what);
}

int default_threads_per_rank(const Comm& comm) {
  cpu_set_t set;
  CPU_ZERO(&set);
  const int host = static_cast<int>(std::thread::hardware_concurrency());
  int allowed = host;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) allowed = CPU_COUNT(&set);
  if (allowed < host) return std::max(1, allowed);  // bound by the launcher: its CPUs are ours
  return std::max(1, allowed / std::max(1, comm.local_size()));
}

void maybe_inject_fault(const Comm& comm, int64_t step) {
  const char* f = std::getenv("LOWBIT_DIST_FAULT");
  if (!f || !*f) return;
  char kind[8] = {0};
  int rank = -1;
  long long at = -1;
  if (std::sscanf(f, "%7[a-z]:%d:%lld", kind, &rank, &at) != 3 || rank != comm.rank() || at != step) return;
  std::fprintf(stderr, "lowbit: rank %d: LOWBIT_DIST_FAULT=%s at step %lld\n", rank, f, at);
  std::fflush(stderr);
  if (std::strcmp(kind, "kill") == 0) ::kill(::getpid(), SIGKILL);
  if (std::strcmp(kind, "hang") == 0)
    while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
}

}  // namespace lowbit::dist
