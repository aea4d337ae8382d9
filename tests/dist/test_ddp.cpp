// Data parallelism under `mpirun -np 2` (ctest runs this binary that way; alone it is a group of
// one and every test skips, saying so). Each rank also computes the one-process reference itself
// (the whole global batch, no MPI), so every check compares against what one process does.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <sstream>

#include <fmt/format.h>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/generator.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/dist/ddp.h"
#include "lowbit/nn/layers.h"
#include "lowbit/optim/table.h"
#include "test_util.h"

using namespace lowbit;

namespace {
dist::Comm& comm() { return dist::Comm::world(); }

#define NEED_RANKS() \
  if (comm().size() < 2) LOWBIT_SKIP_OR_FAIL("needs mpirun -np 2 (or more): run by ctest as test dist_mpi")

// a small MLP whose first layer is large enough for 8-bit optimizer states (>= 4096 elements)
std::shared_ptr<nn::Module> make_mlp(uint64_t seed) {
  manual_seed(seed);
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(64, 96), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(96, 48),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(48, 10)});
}
// global batch `step` of `batch` examples (the same on every rank)
std::pair<Tensor, Tensor> global_batch(int64_t step, int64_t batch) {
  Generator g(1000 + static_cast<uint64_t>(step));
  Tensor x = randn({batch, 64}, &g);
  Tensor y = randint(0, 10, {batch}, &g);
  return {x, y};
}
// this rank's contiguous share, as the DataLoader cuts it
std::pair<Tensor, Tensor> shard(const std::pair<Tensor, Tensor>& b, int rank, int n) {
  const int64_t len = b.first.size(0), lo = len * rank / n, hi = len * (rank + 1) / n;
  return {narrow(b.first, 0, lo, hi - lo).clone(), narrow(b.second, 0, lo, hi - lo).clone()};
}
std::vector<std::vector<float>> values(const nn::Module& m) {
  std::vector<std::vector<float>> out;
  for (auto& [n, p] : m.named_parameters()) {
    const float* d = p.data_ptr<float>();
    out.emplace_back(d, d + p.numel());
  }
  return out;
}
std::unique_ptr<optim::Optimizer> make_opt(const std::string& name, nn::Module& m) {
  optim::OptimizerSettings s;
  s.lr = 1e-2;
  return optim::make_optimizer(name, {{m.parameters(), {}}}, s);
}
// `steps` data-parallel steps (this rank's shards), optionally with ZeRO-1 and clipping
void run_parallel(nn::Module& m, optim::Optimizer& opt, int steps, int64_t batch, bool zero, double clip = 0,
                  int64_t* state_bytes = nullptr) {
  dist::DistributedDataParallel ddp(m, comm(), {.bucket_cap_mb = 0.01, .shard_optimizer_state = zero});
  for (int s = 0; s < steps; ++s) {
    const auto [x, y] = shard(global_batch(s, batch), comm().rank(), comm().size());
    ddp.begin_step(x.size(0), batch);
    Tensor loss = cross_entropy(m.forward(x), y);
    opt.zero_grad();
    loss.backward();
    ddp.finish_gradient_sync();
    if (clip > 0) ddp.clip_grad_norm(clip);
    opt.step();
    ddp.after_optimizer_step();
  }
  if (state_bytes) *state_bytes = dist::DistributedDataParallel::state_bytes(opt);
}
void run_single(nn::Module& m, optim::Optimizer& opt, int steps, int64_t batch, double clip = 0) {
  for (int s = 0; s < steps; ++s) {
    const auto [x, y] = global_batch(s, batch);
    Tensor loss = cross_entropy(m.forward(x), y);
    opt.zero_grad();
    loss.backward();
    if (clip > 0) optim::clip_grad_norm_(m.parameters(), clip);
    opt.step();
  }
}
float max_rel_diff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  float worst = 0;
  for (size_t t = 0; t < a.size(); ++t) {
    float scale = 0;
    for (float v : a[t]) scale = std::max(scale, std::fabs(v));
    for (size_t i = 0; i < a[t].size(); ++i) worst = std::max(worst, std::fabs(a[t][i] - b[t][i]) / scale);
  }
  return worst;
}
}  // namespace

// The first step's summed gradients equal the one-process gradients of the global batch up to the
// summation order (a few float32 ulps of each tensor's scale).
TEST(DistributedDataParallel, FirstStepGradientsEqualOneProcess) {
  NEED_RANKS();
  auto ref = make_mlp(3), par = make_mlp(3);
  const int64_t batch = 32;
  const auto b = global_batch(0, batch);
  cross_entropy(ref->forward(b.first), b.second).backward();
  dist::DistributedDataParallel ddp(*par, comm(), {.bucket_cap_mb = 0.01});
  const auto [x, y] = shard(b, comm().rank(), comm().size());
  ddp.begin_step(x.size(0), batch);
  cross_entropy(par->forward(x), y).backward();
  ddp.finish_gradient_sync();
  const auto rp = ref->parameters(), pp = par->parameters();
  ASSERT_EQ(rp.size(), pp.size());
  for (size_t t = 0; t < rp.size(); ++t) {
    const float* g1 = rp[t].grad().data_ptr<float>();
    const float* g2 = pp[t].grad().data_ptr<float>();
    float scale = 0, worst = 0;
    for (int64_t i = 0; i < rp[t].numel(); ++i) scale = std::max(scale, std::fabs(g1[i]));
    for (int64_t i = 0; i < rp[t].numel(); ++i) worst = std::max(worst, std::fabs(g1[i] - g2[i]));
    EXPECT_LE(worst, 8 * 1.2e-7f * scale) << "parameter " << t << " gradient differs beyond summation order";
    EXPECT_GT(scale, 0.0f);
  }
}

// Same N twice: bit-identical weights, on every rank; and within float32 rounding of one process.
TEST(DistributedDataParallel, DeterministicAndReplicasAgree) {
  NEED_RANKS();
  auto a = make_mlp(5), b = make_mlp(5), ref = make_mlp(5);
  auto oa = make_opt("adamw", *a), ob = make_opt("adamw", *b), oref = make_opt("adamw", *ref);
  run_parallel(*a, *oa, 8, 32, false);
  run_parallel(*b, *ob, 8, 32, false);
  run_single(*ref, *oref, 8, 32);
  EXPECT_EQ(values(*a), values(*b)) << "two runs with the same N differ";
  dist::DistributedDataParallel check(*a, comm());  // its constructor broadcasts rank 0's values: compare first
  const auto sums = comm().allgather(check.parameter_checksum(), "test checksum");
  for (size_t r = 1; r < sums.size(); ++r) EXPECT_EQ(sums[r], sums[0]) << "rank " << r << " diverged";
  const float rel = max_rel_diff(values(*ref), values(*a));
  EXPECT_LT(rel, 1e-4f) << "8 data-parallel AdamW steps drifted from one process";
  EXPECT_GT(rel, 0.0f) << "bitwise equal to one process: the test would not see a missing all-reduce";
}

// ZeRO-1 gives the same weights as plain data parallelism, for fp32 AdamW, AdamW8bit and with
// gradient clipping (the norm assembled from per-parameter terms), with each rank holding only
// its share of the optimizer state.
TEST(DistributedDataParallel, ZeroOneMatchesPlainDataParallel) {
  NEED_RANKS();
  for (const std::string name : {"adamw", "adamw8bit"}) {
    for (double clip : {0.0, 0.05}) {
      auto plain = make_mlp(7), zero = make_mlp(7);
      auto op = make_opt(name, *plain), oz = make_opt(name, *zero);
      int64_t full = 0, mine = 0;
      run_parallel(*plain, *op, 6, 32, false, clip, &full);
      run_parallel(*zero, *oz, 6, 32, true, clip, &mine);
      if (comm().size() == 2) {  // a sum of two floats does not depend on the order: exact
        EXPECT_EQ(values(*plain), values(*zero)) << name << " clip " << clip;
      } else {
        EXPECT_LT(max_rel_diff(values(*plain), values(*zero)), 1e-5f) << name << " clip " << clip;
      }
      double total = static_cast<double>(mine);
      comm().allreduce_sum(&total, 1, "test state bytes");
      EXPECT_EQ(static_cast<int64_t>(total), full) << name << ": the shards do not add up to the whole state";
      EXPECT_LT(mine, full) << name << ": rank " << comm().rank() << " holds the whole state";
    }
  }
}

// The ZeRO-1 state gather puts every parameter's state on rank 0, equal to a plain run's state;
// dropping it again leaves this rank's share.
TEST(DistributedDataParallel, ZeroOneStateGatherForCheckpoints) {
  NEED_RANKS();
  auto plain = make_mlp(9), zero = make_mlp(9);
  auto op = make_opt("adamw8bit", *plain), oz = make_opt("adamw8bit", *zero);
  run_parallel(*plain, *op, 3, 32, false);
  run_parallel(*zero, *oz, 3, 32, true);
  dist::DistributedDataParallel ddp(*zero, comm(), {.bucket_cap_mb = 0.01, .shard_optimizer_state = true});
  const int64_t before = dist::DistributedDataParallel::state_bytes(*oz);
  // what each owner holds: "index key hash" lines, sent to rank 0 to check the gathered copies
  auto state_hash = [](const Tensor& t) { return dist::fnv1a(dist::kFnvBasis, t.raw_data(), t.nbytes()); };
  std::string mine;
  for (const auto& [index, st] : oz->state_dict().state)
    for (const auto& [key, t] : st.tensors) mine += fmt::format("{} {} {} {}\n", index, key, st.step, state_hash(t));
  const auto owned = comm().gather_bytes(mine, 0, "test owned states");
  ddp.gather_optimizer_state(*oz);
  if (comm().is_root()) {
    const auto want = op->state_dict(), got = oz->state_dict();
    ASSERT_EQ(want.state.size(), got.state.size()) << "rank 0 lacks some parameter's state after the gather";
    std::string all;
    for (const auto& o : owned) all += o;
    std::istringstream in(all);
    int64_t index, step, lines = 0;
    std::string key;
    uint64_t hash;
    while (in >> index >> key >> step >> hash) {
      const auto& g = got.state.at(index);
      EXPECT_EQ(g.step, step);
      EXPECT_EQ(state_hash(g.tensors.at(key)), hash) << "parameter " << index << " " << key << ": not the owner's";
      ++lines;
    }
    int64_t tensors = 0;
    for (const auto& [i, st] : got.state) tensors += static_cast<int64_t>(st.tensors.size());
    EXPECT_EQ(lines, tensors);
    for (const auto& [i, st] : want.state) {  // the same state tensors as a plain run's (bitwise at N = 2)
      const auto& g = got.state.at(i);
      ASSERT_EQ(st.tensors.size(), g.tensors.size());
      for (const auto& [key, t] : st.tensors) {
        const Tensor& u = g.tensors.at(key);
        ASSERT_EQ(t.nbytes(), u.nbytes()) << key;
        if (comm().size() == 2)
          EXPECT_EQ(std::memcmp(t.raw_data(), u.raw_data(), t.nbytes()), 0) << "parameter " << i << " " << key;
      }
    }
  }
  ddp.drop_unowned_state(*oz);
  EXPECT_EQ(dist::DistributedDataParallel::state_bytes(*oz), before);
}

// Unequal shards (a global batch of 33 over 2 ranks: 16 + 17) weigh each rank's gradient by its
// examples, so the sum is the global batch's mean gradient.
TEST(DistributedDataParallel, UnequalShardsAreWeighted) {
  NEED_RANKS();
  auto ref = make_mlp(11), par = make_mlp(11);
  auto oref = make_opt("sgd", *ref), opar = make_opt("sgd", *par);
  run_single(*ref, *oref, 3, 33);
  run_parallel(*par, *opar, 3, 33, false);
  EXPECT_LT(max_rel_diff(values(*ref), values(*par)), 1e-5f);
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (dist::launched_by_mpi()) comm().set_timeout(120);
  if (comm().rank() != 0) {  // one rank's report is enough; failures still set every rank's exit code
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  return rc;
}
