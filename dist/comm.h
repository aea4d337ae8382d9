// The process group of a data-parallel run, on MPI (Debian's OpenMPI): which rank this process
// is, how many there are, and the collectives the trainer needs -- each bounded by a timeout, so
// that a rank which died or hangs ends the job with a message instead of a hang. A process not
// started by an MPI launcher is a group of one that never touches MPI: `lowbit train` without
// mpirun runs exactly as before.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace lowbit::dist {

/// True when an MPI launcher (mpirun/mpiexec: OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK) started
/// this process.
bool launched_by_mpi();

class Comm {
 public:
  /// The world group: initializes MPI on first use when launched_by_mpi() (MPI_THREAD_FUNNELED:
  /// only the main thread talks to MPI), else a group of one.
  static Comm& world();
  /// Finalizes MPI if it was initialized (idempotent; also run at exit).
  static void finalize();

  int rank() const { return rank_; }
  int size() const { return size_; }
  /// Ranks on this host and this rank's index among them (thread counts are divided by them).
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  bool is_root() const { return rank_ == 0; }
  /// Collectives give up after this many seconds (default 600): the message names the
  /// collective and the job is aborted (MPI_Abort), which mpirun turns into an exit of all ranks.
  void set_timeout(double seconds);
  double timeout() const { return timeout_s_; }

  // Blocking collectives over every rank; `what` names the operation in timeout messages.
  void allreduce_sum(double* values, int64_t n, const char* what);
  void allreduce_sum(float* values, int64_t n, const char* what);
  void allreduce_max(double* values, int64_t n, const char* what);
  void broadcast(void* data, int64_t bytes, int root, const char* what);
  /// Every rank's value, in rank order.
  std::vector<uint64_t> allgather(uint64_t value, const char* what);
  /// The ranks whose `value` differs from rank 0's ("1, 3"; "" when all agree): the start-up
  /// checks (same config, same parameters, replicas in step) compare hashes with it.
  std::string ranks_differing_from_root(uint64_t value, const char* what);
  /// Variable-size byte blocks: rank r contributes counts[r] bytes, which land at the offsets
  /// of the exclusive prefix sum of counts in `all` (the caller's own block must already be there).
  void allgatherv_inplace(void* all, const std::vector<int64_t>& counts, const char* what);
  /// Gathers every rank's bytes on root (empty elsewhere), in rank order.
  std::vector<std::string> gather_bytes(const std::string& mine, int root, const char* what);
  void barrier(const char* what);
  /// Runs fn on rank 0 only (everywhere in a group of one); then every rank learns whether it
  /// succeeded and throws if not -- rank 0 its own error, the others "rank 0 failed (what): ..."
  /// -- instead of waiting for rank 0 in the next collective.
  void on_root(const std::string& what, const std::function<void()>& fn);
  /// Ends every rank of the job: prints "lowbit: rank R: message" and calls MPI_Abort (exit(code)
  /// in a group of one).
  [[noreturn]] void abort(const std::string& message, int code = 3);

  /// Seconds this rank spent inside collectives (waiting included) and bytes it passed to them,
  /// since the last reset.
  double comm_seconds = 0;
  int64_t comm_bytes = 0;

  // internal: the MPI request waiting the trainer's bucket code shares (void* = MPI_Request*)
  void wait(void* request, const char* what);
  bool test(void* request);

 private:
  Comm() = default;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  bool mpi_ = false;
  double timeout_s_ = 600;
};

/// FNV-1a over bytes, continuing from h (start with kFnvBasis): the hashes those checks compare.
inline constexpr uint64_t kFnvBasis = 14695981039346656037ull;
inline uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

/// Threads a rank should use when the run does not set them: the CPUs this process may run on
/// (its affinity mask: mpirun binds ranks to cores when there are no more ranks than cores), or,
/// when unbound, the host's CPUs divided by the ranks on this host; at least 1.
int default_threads_per_rank(const Comm& comm);

/// Fault injection for tests of the failure paths (LOWBIT_DIST_FAULT="kill:RANK:STEP" or
/// "hang:RANK:STEP"): called by the trainer after each step; kills (SIGKILL) or stops this rank
/// when it matches. Does nothing when the variable is unset.
void maybe_inject_fault(const Comm& comm, int64_t step);

}  // namespace lowbit::dist
