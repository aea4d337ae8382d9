// Data parallelism over dist::Comm, as torch's DistributedDataParallel plus ZeRO stage 1:
// every rank holds the whole model and trains on its shard of each global batch; gradients are
// summed across ranks in buckets that start while the backward pass is still running (a bucket
// is sent as soon as the last of its gradients is final, buckets in a fixed order, so runs
// are deterministic); with shard_optimizer_state, each parameter's gradient goes only to the
// rank that owns its optimizer state, that rank updates it, and the updated parameters are
// all-gathered (optimizer memory per rank ~ 1/N).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/dist/comm.h"
#include "lowbit/nn/module.h"
#include "lowbit/optim/optimizer.h"

namespace lowbit::dist {

struct DDPOptions {
  /// Bucket size: gradients are sent in buckets of about this many MiB of float32.
  double bucket_cap_mb = 4.0;
  /// ZeRO-1: partition optimizer state across ranks (whole parameters; contiguous in backward
  /// order, balanced by size).
  bool shard_optimizer_state = false;
};

class DistributedDataParallel {
 public:
  /// Registers gradient hooks on the module's parameters, checks that every rank holds the same
  /// parameter names, shapes and dtypes, and broadcasts rank 0's parameter values.
  DistributedDataParallel(nn::Module& module, Comm& comm, DDPOptions options = {});
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  Comm& comm() { return comm_; }
  const DDPOptions& options() const { return opts_; }

  /// Before the step's backward: this rank's examples and the global batch's. Gradients are
  /// weighted local/global, so their sum over ranks is the gradient of the global batch's mean
  /// loss (ranks with unequal shards included). Picks up parameters added since (a QAT prepare
  /// keeps them; a module swap that adds some re-buckets).
  void begin_step(int64_t local_examples, int64_t global_examples);
  /// After backward: sends what is left, waits for every bucket and writes the summed gradients
  /// back (with ZeRO-1 only the owner's; other ranks' gradients are cleared, so their optimizer
  /// skips those parameters). A parameter no rank produced a gradient for gets zeros.
  void finish_gradient_sync();
  /// The global batch's mean loss from this rank's mean (weighted as the gradients).
  double global_loss(double local_mean_loss);
  /// clip_grad_norm_ over the global gradients (under ZeRO-1 each rank holds a part; the norm is
  /// assembled from per-parameter terms, so it equals the single-process norm exactly).
  double clip_grad_norm(double max_norm);
  /// After optimizer.step(): with ZeRO-1, all-gathers the updated parameters from their owners.
  void after_optimizer_step();

  /// ZeRO-1: does this rank own p's optimizer state (always true without sharding)?
  bool owns(const Tensor& p) const;
  /// The owner rank of each parameter, in module.parameters() order.
  std::vector<int> owners() const;
  /// ZeRO-1 checkpoints: every rank's optimizer state for the parameters it owns is sent to rank
  /// 0, which adds it to its optimizer (so a checkpoint written there is complete); other ranks
  /// are unchanged. Call on all ranks. drop_unowned_state() undoes it (and trims a state loaded
  /// from a checkpoint to this rank's share).
  void gather_optimizer_state(optim::Optimizer& optimizer);
  void drop_unowned_state(optim::Optimizer& optimizer);
  /// Optimizer state bytes this rank holds.
  static int64_t state_bytes(const optim::Optimizer& optimizer);
  /// A checksum of the parameters, equal on all ranks when replicas agree (tests, checkpoints).
  uint64_t parameter_checksum() const;
  /// Seconds this rank has waited for gradient buckets in finish_gradient_sync() (the exposed
  /// part of the gradient all-reduce / reduce), and in the ZeRO-1 parameter all-gather.
  double gradient_wait_seconds() const { return gradient_wait_s_; }
  double gather_wait_seconds() const { return gather_wait_s_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  nn::Module& module_;
  Comm& comm_;
  DDPOptions opts_;
  double gradient_wait_s_ = 0, gather_wait_s_ = 0;
};

}  // namespace lowbit::dist
