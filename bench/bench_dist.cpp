// Gradient synchronization under mpirun: lowbit's bucketed DDP sync (and the ZeRO-1 reduce +
// parameter all-gather) against MPI's own blocking MPI_Allreduce of the same bytes (the peer and
// the floor), per message size; fits the latency/bandwidth model T(S) = a + S / B to the peer's
// times for docs/distributed.md's cost model.
//   mpirun -np 2 ./build/bench/bench_dist        (mpirun --oversubscribe -np 4 ... for N = 4)
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include <lowbit/lowbit.h>

using namespace lowbit;

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
// best of `reps` synchronized runs of f (seconds, the slowest rank's)
template <typename F>
double best_of(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = now();
    f();
    double t = now() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    best = std::min(best, t);
  }
  return best;
}
}  // namespace

int main() {
  dist::Comm& comm = dist::Comm::world();
  if (comm.size() < 2) {
    std::fprintf(stderr, "bench_dist: run under mpirun -np 2 (or more)\n");
    return 2;
  }
  set_num_threads(1);
  const bool root = comm.is_root();
  if (root)
    std::printf(
        "N = %d ranks; sizes are float32 gradient bytes; times: best of 15, the slowest rank\n"
        "%10s %12s %12s %8s %14s %8s\n",
        comm.size(), "MB", "MPI_Allred", "lowbit DDP", "ratio", "ZeRO-1 (r+ag)", "ratio");
  std::vector<double> xs, ys;
  for (int64_t kb : {256, 1024, 4096, 16384}) {
    const int64_t n = kb * 256;  // floats
    // parameters in 1 MiB tensors, as a model's layers
    const int64_t per = std::min<int64_t>(n, 262144);
    auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{});
    std::vector<Tensor> ps;
    for (int64_t at = 0; at < n; at += per) ps.push_back(zeros({std::min(per, n - at)}).requires_grad_());
    std::vector<float> raw(static_cast<size_t>(n), 1.0f);
    const double t_raw = best_of(
        15, [&] { MPI_Allreduce(MPI_IN_PLACE, raw.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); });
    // a module holding the tensors, so DDP sees them as parameters
    struct Holder : nn::Module {
      explicit Holder(const std::vector<Tensor>& ps) {
        for (size_t i = 0; i < ps.size(); ++i) register_parameter("p" + std::to_string(i), ps[i]);
      }
      std::string type_name() const override { return "Holder"; }
      Tensor forward(const Tensor& x) override { return x; }
    } holder(ps);
    auto sync = [&](bool zero) {
      dist::DistributedDataParallel ddp(holder, comm, {.bucket_cap_mb = 4, .shard_optimizer_state = zero});
      // the gradients as a backward would leave them (ones), then the sync alone is timed
      Tensor loss;
      for (auto& p : ps) loss = loss.defined() ? add(loss, sum(p)) : sum(p);
      const double t_bwd = best_of(15, [&] {
        for (auto& p : ps) p.set_grad(Tensor());
        Tensor l;
        for (auto& p : ps) l = l.defined() ? add(l, sum(p)) : sum(p);
        l.backward();
      });
      const double t_all = best_of(15, [&] {
        ddp.begin_step(1, comm.size());
        for (auto& p : ps) p.set_grad(Tensor());
        Tensor l;
        for (auto& p : ps) l = l.defined() ? add(l, sum(p)) : sum(p);
        l.backward();
        ddp.finish_gradient_sync();
        ddp.after_optimizer_step();
      });
      return std::max(0.0, t_all - t_bwd);
    };
    const double t_ddp = sync(false), t_zero = sync(true);
    const double mb = static_cast<double>(n) * 4 / 1e6;
    if (root)
      std::printf("%10.2f %10.3f ms %10.3f ms %7.2fx %12.3f ms %7.2fx\n", mb, t_raw * 1e3, t_ddp * 1e3, t_ddp / t_raw,
                  t_zero * 1e3, t_zero / t_raw);
    xs.push_back(static_cast<double>(n) * 4);
    ys.push_back(t_raw);
  }
  // least squares T = a + S * b over the peer's times
  const double k = static_cast<double>(xs.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    sx += xs[i];
    sy += ys[i];
    sxx += xs[i] * xs[i];
    sxy += xs[i] * ys[i];
  }
  const double b = (k * sxy - sx * sy) / (k * sxx - sx * sx), a = (sy - b * sx) / k;
  if (root)
    std::printf(
        "fit of MPI_Allreduce: T(S) = %.1f us + S / %.2f GB/s (a ring moves 2(N-1)/N S per rank: link %.2f "
        "GB/s)\n",
        a * 1e6, 1e-9 / b, 1e-9 / b * 2.0 * (comm.size() - 1) / comm.size());
  return 0;
}
