// Side by side with libtorch (Debian's libtorch 1.13; install libopenblas0-openmp so its GEMMs
// use OpenBLAS rather than the reference BLAS). Same models, same initial weights, the identical
// batch of real Fashion-MNIST images; median ms per training step (forward, backward, AdamW)
// over >= 50 steps at 1 and 2 threads, and the ratio lowbit / libtorch.
//   ./build/bench/peer_libtorch [mlp|transformer|adamw|lowbit_adam|fmnist]...   (default: the first three)
// "fmnist" runs the whole protocol of configs/fmnist_mlp.toml (5 epochs, AdamW 1e-3 with cosine
// annealing, batch 256) in both, 3 seeds, and prints accuracy and training wall time.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <lowbit/lowbit.h>

namespace lb = lowbit;
using clk = std::chrono::steady_clock;

namespace {
torch::Tensor to_torch(const lb::Tensor& t) {
  std::vector<int64_t> s(t.shape().begin(), t.shape().end());
  if (t.dtype() == lb::kInt64) return torch::from_blob(t.data_ptr<int64_t>(), s, torch::kInt64).clone();
  return torch::from_blob(t.data_ptr<float>(), s, torch::kFloat32).clone();
}
double median_ms(const std::function<void()>& step, int warmup = 5, int steps = 50) {
  for (int i = 0; i < warmup; ++i) step();
  std::vector<double> t;
  for (int i = 0; i < steps; ++i) {
    auto a = clk::now();
    step();
    t.push_back(std::chrono::duration<double, std::milli>(clk::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}
void set_threads(int n) {
  lb::set_num_threads(n);
  torch::set_num_threads(n);
}
void row(const char* name, int threads, double ours, double peer) {
  std::printf("%-34s %7d %11.2f %11.2f %8.2fx\n", name, threads, ours, peer, ours / peer);
  std::fflush(stdout);
}

// ---- MLP 784-1024-1024-10 ----
struct LbMlp {
  std::shared_ptr<lb::nn::Sequential> net =
      std::make_shared<lb::nn::Sequential>(std::vector<std::shared_ptr<lb::nn::Module>>{
          std::make_shared<lb::nn::Linear>(784, 1024), std::make_shared<lb::nn::ReLU>(),
          std::make_shared<lb::nn::Linear>(1024, 1024), std::make_shared<lb::nn::ReLU>(),
          std::make_shared<lb::nn::Linear>(1024, 10)});
};
struct TorchMlp : torch::nn::Module {
  torch::nn::Linear l1{784, 1024}, l2{1024, 1024}, l3{1024, 10};
  explicit TorchMlp(const LbMlp& m) {
    register_module("l1", l1);
    register_module("l2", l2);
    register_module("l3", l3);
    torch::NoGradGuard ng;
    auto sd = m.net->state_dict();
    std::vector<torch::Tensor> ps = {l1->weight, l1->bias, l2->weight, l2->bias, l3->weight, l3->bias};
    for (size_t i = 0; i < ps.size(); ++i) ps[i].copy_(to_torch(sd[i].second));
  }
  torch::Tensor forward(const torch::Tensor& x) { return l3(torch::relu(l2(torch::relu(l1(x))))); }
};

void bench_mlp(const lb::data::Batch& batch) {
  const torch::Tensor tx = to_torch(batch.data), ty = to_torch(batch.target);
  for (int threads : {1, 2}) {
    set_threads(threads);
    LbMlp m;
    lb::optim::AdamW opt(m.net->parameters(), {.lr = 1e-3, .weight_decay = 1e-2});
    const double ours = median_ms([&] {
      lb::Tensor loss = lb::cross_entropy(m.net->forward(batch.data), batch.target);
      opt.zero_grad();
      loss.backward();
      opt.step();
    });
    auto tm = std::make_shared<TorchMlp>(m);
    torch::optim::AdamW topt(tm->parameters(), torch::optim::AdamWOptions(1e-3).weight_decay(1e-2));
    const double peer = median_ms([&] {
      auto loss = torch::nn::functional::cross_entropy(tm->forward(tx), ty);
      topt.zero_grad();
      loss.backward();
      topt.step();
    });
    row("MLP step (fwd+bwd+AdamW), b=256", threads, ours, peer);
  }
}

// ---- 2-layer pre-norm transformer encoder: B=32, T=128, C=256, 4 heads, ff 1024 ----
struct TorchBlock : torch::nn::Module {
  torch::nn::LayerNorm ln1{torch::nn::LayerNormOptions({256})}, ln2{torch::nn::LayerNormOptions({256})};
  torch::nn::Linear qkv{256, 768}, proj{256, 256}, fc1{256, 1024}, fc2{1024, 256};
  TorchBlock() {
    register_module("ln1", ln1);
    register_module("qkv", qkv);
    register_module("proj", proj);
    register_module("ln2", ln2);
    register_module("fc1", fc1);
    register_module("fc2", fc2);
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const int64_t B = x.size(0), T = x.size(1), C = 256, H = 4, D = 64;
    auto h = qkv(ln1(x)).reshape({B, T, 3, H, D}).permute({2, 0, 3, 1, 4});
    auto q = h[0], k = h[1], v = h[2];
    auto att = torch::softmax(torch::matmul(q, k.transpose(-2, -1)) * (1.0 / 8.0), -1);
    auto y = torch::matmul(att, v).permute({0, 2, 1, 3}).reshape({B, T, C});
    auto r = x + proj(y);
    return r + fc2(torch::gelu(fc1(ln2(r))));
  }
};

void bench_transformer() {
  lb::Generator g(3);
  const lb::Tensor x = lb::randn({32, 128, 256}, &g);
  const torch::Tensor tx = to_torch(x);
  for (int threads : {1, 2}) {
    set_threads(threads);
    auto enc = std::make_shared<lb::nn::Sequential>(std::vector<std::shared_ptr<lb::nn::Module>>{
        std::make_shared<lb::nn::TransformerBlock>(256, 4, 1024, 0.0, false),
        std::make_shared<lb::nn::TransformerBlock>(256, 4, 1024, 0.0, false)});
    lb::optim::AdamW opt(enc->parameters(), {.lr = 1e-4});
    const double ours = median_ms(
        [&] {
          lb::Tensor loss = lb::mean(lb::square(enc->forward(x)));
          opt.zero_grad();
          loss.backward();
          opt.step();
        },
        3, 50);
    auto tb = torch::nn::Sequential(TorchBlock(), TorchBlock());
    {  // identical initial weights (same parameter order: ln1, qkv, proj, ln2, fc1, fc2)
      torch::NoGradGuard ng;
      auto ours_p = enc->parameters();
      auto theirs = tb->parameters();
      for (size_t i = 0; i < theirs.size(); ++i) theirs[i].copy_(to_torch(ours_p[i]));
    }
    torch::optim::AdamW topt(tb->parameters(), torch::optim::AdamWOptions(1e-4));
    const double peer = median_ms(
        [&] {
          auto loss = tb->forward(tx).square().mean();
          topt.zero_grad();
          loss.backward();
          topt.step();
        },
        3, 50);
    row("Transformer enc step, 2 layers", threads, ours, peer);
  }
}

// libtorch copies of parameters with their gradients
std::vector<torch::Tensor> torch_params(const std::vector<lb::Tensor>& ps) {
  std::vector<torch::Tensor> tps;
  for (const auto& p : ps) {
    auto t = to_torch(p).requires_grad_();
    t.mutable_grad() = to_torch(p.grad());
    tps.push_back(t);
  }
  return tps;
}

// ---- AdamW over 10M parameters (10 tensors of 1M) ----
void bench_adamw() {
  for (int threads : {1, 2}) {
    set_threads(threads);
    std::vector<lb::Tensor> ps;
    for (int i = 0; i < 10; ++i) {
      lb::Tensor p = lb::randn({1000, 1000}).requires_grad_();
      p.set_grad(lb::randn({1000, 1000}));
      ps.push_back(p);
    }
    lb::optim::AdamW opt(ps, {.lr = 1e-3, .weight_decay = 1e-2});
    const double ours = median_ms([&] { opt.step(); });
    std::vector<torch::Tensor> tps = torch_params(ps);
    torch::optim::AdamW topt(tps, torch::optim::AdamWOptions(1e-3).weight_decay(1e-2));
    const double peer_optim = median_ms([&] { topt.step(); });
    // the same update written with in-place tensor ops (torch.optim's single-tensor path)
    std::vector<torch::Tensor> m, v;
    for (auto& t : tps) {
      m.push_back(torch::zeros_like(t));
      v.push_back(torch::zeros_like(t));
    }
    int64_t step = 0;
    const double peer_ops = median_ms([&] {
      torch::NoGradGuard ng;
      ++step;
      const double bc1 = 1 - std::pow(0.9, step), bc2s = std::sqrt(1 - std::pow(0.999, step));
      for (size_t i = 0; i < tps.size(); ++i) {
        tps[i].mul_(1 - 1e-3 * 1e-2);
        m[i].lerp_(tps[i].grad(), 0.1);
        v[i].mul_(0.999).addcmul_(tps[i].grad(), tps[i].grad(), 0.001);
        auto denom = (v[i].sqrt() / bc2s).add_(1e-8);
        tps[i].addcdiv_(m[i], denom, -1e-3 / bc1);
      }
    });
    row("AdamW step, 10M params", threads, ours, std::min(peer_optim, peer_ops));
  }
}

// ---- the low-bit Adams (issue #13) next to lowbit's and libtorch's fp32 AdamW, 10.5M params ----
// the parameters of bench_optim: 40 matrices of 512 x 512, all with quantized states
void bench_lowbit_adam() {
  for (int threads : {1, 2}) {
    set_threads(threads);
    std::vector<lb::Tensor> ps;
    for (int i = 0; i < 40; ++i) {
      lb::Tensor p = lb::mul(lb::randn({512, 512}), lb::full({1}, 0.1f)).requires_grad_();
      p.set_grad(lb::mul(lb::randn({512, 512}), lb::full({1}, 0.01f)));
      ps.push_back(p);
    }
    std::vector<torch::Tensor> tps = torch_params(ps);
    torch::optim::AdamW topt(tps, torch::optim::AdamWOptions(1e-3).weight_decay(1e-2));
    topt.step();
    const double peer = median_ms([&] { topt.step(); });
    lb::optim::AdamW fp32(ps, {.lr = 1e-3, .weight_decay = 1e-2});
    fp32.step();
    const double ours32 = median_ms([&] { fp32.step(); });
    row("AdamW (fp32) step, 10.5M params", threads, ours32, peer);
    for (const char* name : {"AdamW8bit", "AdamW4bit", "AdamWFp8"}) {
      auto opt = lb::optim::make_low_bit_adam(name, {{ps, {}}});
      opt->step();
      const std::string label = std::string(name) + " step, 10.5M params";
      row(label.c_str(), threads, median_ms([&] { opt->step(); }), peer);
    }
  }
}

// ---- the whole Fashion-MNIST protocol ----
void fmnist_protocol() {
  auto train_set = lb::data::FashionMNIST::load("", true);
  auto test_set = lb::data::FashionMNIST::load("", false);
  const torch::Tensor test_x = to_torch(test_set->data()), test_y = to_torch(test_set->target());
  set_threads(2);
  double acc_ours = 0, acc_peer = 0, t_ours = 0, t_peer = 0;
  for (uint64_t seed : {0, 1, 2}) {
    lb::manual_seed(seed);
    LbMlp m;
    auto tm = std::make_shared<TorchMlp>(m);
    {
      lb::data::DataLoader loader(train_set, {.batch_size = 256, .shuffle = true, .seed = seed});
      lb::optim::AdamW opt(m.net->parameters(), {.lr = 1e-3, .weight_decay = 1e-2});
      lb::optim::CosineAnnealingLR sched(opt, 5 * loader.num_batches());
      auto a = clk::now();
      for (int e = 0; e < 5; ++e)
        while (auto b = loader.next()) {
          lb::Tensor loss = lb::cross_entropy(m.net->forward(b->data), b->target);
          opt.zero_grad();
          loss.backward();
          opt.step();
          sched.step();
        }
      t_ours += std::chrono::duration<double>(clk::now() - a).count();
      lb::NoGradGuard ng;
      auto pred = lb::argmax(m.net->forward(test_set->data()), 1);
      acc_ours += lb::mean(lb::eq(pred, test_set->target()).to(lb::kFloat32)).item<double>();
    }
    {
      // same batches in the same order
      lb::data::DataLoader loader(train_set, {.batch_size = 256, .shuffle = true, .seed = seed, .prefetch = false});
      torch::optim::AdamW topt(tm->parameters(), torch::optim::AdamWOptions(1e-3).weight_decay(1e-2));
      std::vector<std::pair<torch::Tensor, torch::Tensor>> batches;
      for (int e = 0; e < 5; ++e)
        while (auto b = loader.next()) batches.emplace_back(to_torch(b->data), to_torch(b->target));
      auto a = clk::now();
      int64_t step = 0;
      for (auto& [x, y] : batches) {
        auto loss = torch::nn::functional::cross_entropy(tm->forward(x), y);
        topt.zero_grad();
        loss.backward();
        topt.step();
        // the same cosine annealing (to 0 over the run) as configs/fmnist_mlp.toml
        const double lr =
            1e-3 * (1 + std::cos(M_PI * static_cast<double>(++step) / static_cast<double>(batches.size()))) / 2;
        for (auto& g : topt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
      }
      t_peer += std::chrono::duration<double>(clk::now() - a).count();
      torch::NoGradGuard ng;
      acc_peer += tm->forward(test_x).argmax(1).eq(test_y).to(torch::kFloat32).mean().item<double>();
    }
  }
  std::printf("Fashion-MNIST MLP, 5 epochs, 2 threads, mean of 3 seeds:\n");
  std::printf("  lowbit:   test accuracy %.2f%%  training wall time %.1f s\n", acc_ours / 3 * 100, t_ours / 3);
  std::printf("  libtorch: test accuracy %.2f%%  training wall time %.1f s (batches pre-converted, not timed)\n",
              acc_peer / 3 * 100, t_peer / 3);
  std::printf("  time ratio lowbit / libtorch: %.2fx\n", t_ours / t_peer);
}
}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> what;
  for (int i = 1; i < argc; ++i) what.push_back(argv[i]);
  if (what.empty()) what = {"mlp", "transformer", "adamw"};
  std::printf("%-34s %7s %11s %11s %9s\n", "case", "threads", "lowbit ms", "libtorch ms", "ratio");
  for (auto& w : what) {
    if (w == "mlp") {
      auto test_set = lb::data::FashionMNIST::load("", false);
      std::vector<int64_t> idx(256);
      for (int i = 0; i < 256; ++i) idx[i] = i;
      bench_mlp(test_set->get_batch(idx));
    } else if (w == "transformer") {
      bench_transformer();
    } else if (w == "adamw") {
      bench_adamw();
    } else if (w == "lowbit_adam") {
      bench_lowbit_adam();
    } else if (w == "fmnist") {
      fmnist_protocol();
    } else {
      std::fprintf(stderr, "unknown case '%s' (mlp, transformer, adamw, lowbit_adam, fmnist)\n", w.c_str());
      return 2;
    }
  }
  return 0;
}
