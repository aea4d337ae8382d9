// Data-parallel training in C++: the Fashion-MNIST MLP on N processes with
// DistributedDataParallel (gradients summed in buckets during the backward pass; optional ZeRO-1
// optimizer-state sharding). Every rank reads its share of each global batch of 256.
//   mpirun -np 2 ./build/examples/ddp_mlp [epochs] [optimizer] [zero1: 0|1]
//   ./build/examples/ddp_mlp            (without mpirun: one process, the same loop)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <lowbit/lowbit.h>
#include <lowbit/train/trainer.h>

using namespace lowbit;

int main(int argc, char** argv) {
  const int epochs = argc > 1 ? std::atoi(argv[1]) : 1;
  const std::string opt_name = argc > 2 ? argv[2] : "adamw";
  const bool zero1 = argc > 3 && std::atoi(argv[3]) != 0;
  dist::Comm& comm = dist::Comm::world();  // MPI when started by mpirun, else a group of one
  if (comm.size() > 1) set_num_threads(dist::default_threads_per_rank(comm));
  const bool root = comm.is_root();
  try {
    manual_seed(0);  // the same initial weights everywhere (DDP also broadcasts rank 0's)
    auto train_set = data::FashionMNIST::load("", /*train=*/true);
    auto test_set = data::FashionMNIST::load("", /*train=*/false);
    const int64_t global_batch = 256;
    data::DataLoader loader(
        train_set,
        {.batch_size = global_batch, .shuffle = true, .seed = 0, .num_replicas = comm.size(), .rank = comm.rank()});
    auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(784, 1024), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(1024, 1024),
        std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(1024, 10)});
    auto opt = optim::make_optimizer(opt_name, {{model->parameters(), {}}}, {.lr = 1e-3, .weight_decay = 1e-2});
    dist::DistributedDataParallel ddp(*model, comm, {.shard_optimizer_state = zero1});
    const train::Task task = train::classification_task(test_set);
    if (root)
      std::printf("%d rank(s) x %d thread(s), %s%s\n", comm.size(), get_num_threads(), opt->name().c_str(),
                  zero1 ? ", ZeRO-1" : "");
    const auto t0 = std::chrono::steady_clock::now();
    for (int epoch = 0; epoch < epochs; ++epoch) {
      double total = 0;
      int64_t steps = 0;
      while (auto batch = loader.next()) {
        // this rank's examples of global batch (position - 1): gradients are weighted by them
        ddp.begin_step(batch->data.size(0), loader.global_batch_size(loader.position() - 1));
        Tensor loss = cross_entropy(model->forward(batch->data), batch->target);
        opt->zero_grad();
        loss.backward();             // buckets are sent as their gradients become final
        ddp.finish_gradient_sync();  // the global batch's gradients (ZeRO-1: on their owners)
        opt->step();
        ddp.after_optimizer_step();  // ZeRO-1: the updated parameters from their owners
        total += ddp.global_loss(loss.item<double>());
        ++steps;
      }
      // the library's classification evaluation (eval mode, no gradients), on every rank
      const double accuracy = train::evaluate(*model, task)[1].second;
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (root)
        std::printf(
            "epoch %d  train loss %.4f  test accuracy %.2f%%  (%.1f s; optimizer state on this rank %lld "
            "bytes)\n",
            epoch + 1, total / static_cast<double>(steps), 100.0 * accuracy, secs,
            static_cast<long long>(dist::DistributedDataParallel::state_bytes(*opt)));
    }
  } catch (const std::exception& e) {
    if (comm.size() > 1) comm.abort(std::string("ddp_mlp: ") + e.what(), 1);
    std::fprintf(stderr, "ddp_mlp: %s\n", e.what());
    return 1;
  }
  return 0;
}
