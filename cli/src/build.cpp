// The model, optimizer and scheduler a run config describes.
#include "lowbit/cli/train.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "lowbit/autograd/autograd.h"
#include "lowbit/optim/lowbit.h"
#include "lowbit/optim/table.h"
#include "lowbit/autograd/generator.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/autograd/parallel.h"
#include "lowbit/data/dataset.h"
#include "lowbit/io/checkpoint.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/transformer.h"
#include "lowbit/qat/quantized_linear.h"
#include "lowbit/qat/recipes.h"

#include "internal.h"

namespace lowbit::cli {

namespace {
std::shared_ptr<nn::Module> activation(const std::string& name) {
  if (name == "relu") return std::make_shared<nn::ReLU>();
  if (name == "gelu") return std::make_shared<nn::GELU>();
  if (name == "silu") return std::make_shared<nn::SiLU>();
  if (name == "tanh") return std::make_shared<nn::Tanh>();
  throw Error(fmt::format("model.activation: unknown activation '{}' (relu, gelu, silu, tanh)", name));
}

}  // namespace

std::shared_ptr<nn::Module> build_model(const RunConfig& cfg, int64_t vocab_size) {
  const std::string type = cfg.get_string("model.type");
  if (type == "mlp") {
    auto seq = std::make_shared<nn::Sequential>();
    int64_t in = cfg.get_int("model.input_dim");
    for (int64_t h : cfg.get_int_list("model.hidden")) {
      LOWBIT_CHECK(h > 0, "model.hidden: layer widths must be positive, got {}", h);
      seq->push_back(std::make_shared<nn::Linear>(in, h));
      seq->push_back(activation(cfg.get_string("model.activation")));
      if (cfg.get_float("model.dropout") > 0)
        seq->push_back(std::make_shared<nn::Dropout>(cfg.get_float("model.dropout")));
      in = h;
    }
    seq->push_back(std::make_shared<nn::Linear>(in, cfg.get_int("model.num_classes")));
    return seq;
  }
  if (type == "gpt") {
    nn::GPTConfig g;
    g.vocab_size = vocab_size > 0 ? vocab_size : 256;
    g.context = cfg.get_int("model.context");
    g.d_model = cfg.get_int("model.d_model");
    g.n_heads = cfg.get_int("model.n_heads");
    g.n_layers = cfg.get_int("model.n_layers");
    g.d_ff = cfg.get_int("model.d_ff");
    g.dropout = cfg.get_float("model.dropout");
    g.tie_weights = cfg.get_bool("model.tie_weights");
    return std::make_shared<nn::GPT>(g);
  }
  throw Error(fmt::format("model.type: unknown model '{}' (mlp, gpt)", type));
}

optim::OptimizerSettings optimizer_settings(const RunConfig& cfg) {
  optim::OptimizerSettings s;
  s.lr = cfg.get_float("optimizer.lr");
  s.beta1 = cfg.get_float("optimizer.beta1");
  s.beta2 = cfg.get_float("optimizer.beta2");
  s.eps = cfg.get_float("optimizer.eps");
  s.weight_decay = cfg.get_float("optimizer.weight_decay");
  s.amsgrad = cfg.get_bool("optimizer.amsgrad");
  s.momentum = cfg.get_float("optimizer.momentum");
  s.dampening = cfg.get_float("optimizer.dampening");
  s.nesterov = cfg.get_bool("optimizer.nesterov");
  s.block_size = cfg.get_int("optimizer.block_size");
  s.bf16_stochastic_round = cfg.get_bool("optimizer.bf16_stochastic_round");
  s.second_moment_floor = cfg.get_bool("optimizer.second_moment_floor");
  return s;
}

std::unique_ptr<optim::Optimizer> build_optimizer(const RunConfig& cfg, const nn::Module& model) {
  const std::string name = cfg.get_string("optimizer.name");
  const auto named = model.named_parameters();
  std::vector<Tensor> params;
  for (const auto& [n, p] : named) params.push_back(p);
  auto opt = optim::make_optimizer(name, {{params, {}}}, optimizer_settings(cfg));
  const auto& keep = cfg.get_string_list("optimizer.full_precision_state");
  if (!keep.empty()) {
    auto* lb = dynamic_cast<optim::LowBitOptimizer*>(opt.get());
    LOWBIT_CHECK(lb, "optimizer.full_precision_state applies to the low-bit optimizers; '{}' keeps float32 states",
                 name);
    for (const auto& f : keep) {
      bool hit = false;
      for (const auto& [n, p] : named)
        if (n.find(f) != std::string::npos) {
          lb->keep_full_precision(p);
          hit = true;
        }
      if (hit) continue;
      std::string names;
      for (const auto& [n, p] : named) names += (names.empty() ? "" : ", ") + n;
      throw Error(
          fmt::format("optimizer.full_precision_state: '{}' is in no parameter name (parameters: {})", f, names));
    }
  }
  return opt;
}

std::shared_ptr<qat::QuantConfigBase> build_quantize_config(const RunConfig& cfg) {
  const std::string recipe = cfg.get_string("quantize.recipe");
  auto q = qat::recipe_config(recipe, cfg.get_string("quantize.weight_dtype"), cfg.get_int("quantize.group_size"));
  const std::string bw = cfg.get_string("quantize.float8_qat_backward");
  LOWBIT_CHECK(bw == "straight_through" || bw == "torchao_parity",
               "quantize.float8_qat_backward must be 'straight_through' or 'torchao_parity', got '{}'", bw);
  const auto backward = bw == "torchao_parity" ? qat::Float8FakeQuantizeConfig::Backward::TorchaoParity
                                               : qat::Float8FakeQuantizeConfig::Backward::StraightThrough;
  const bool guard = cfg.get_bool("quantize.float8_guard_zero_blocks");
  if (auto* f = dynamic_cast<qat::Float8DynamicActivationFloat8WeightConfig*>(q.get())) {
    f->qat_backward = backward;
    f->qat_guard_zero_blocks = guard;
  } else if (auto* w = dynamic_cast<qat::Float8WeightOnlyConfig*>(q.get())) {
    w->qat_backward = backward;
    w->qat_guard_zero_blocks = guard;
  } else {
    LOWBIT_CHECK(bw == "straight_through" && !guard,
                 "quantize.float8_qat_backward / float8_guard_zero_blocks apply to the float8 recipes only "
                 "(float8-dyn, float8-dyn-row, float8-weight-only), not to quantize.recipe '{}'",
                 recipe);
  }
  return q;
}

std::unique_ptr<optim::LRScheduler> build_scheduler(const RunConfig& cfg, optim::Optimizer& opt, int64_t total) {
  const std::string name = cfg.get_string("lr_scheduler.name");
  if (name == "none") return nullptr;
  if (name == "step")
    return std::make_unique<optim::StepLR>(opt, cfg.get_int("lr_scheduler.step_size"),
                                           cfg.get_float("lr_scheduler.gamma"));
  if (name == "cosine")
    return std::make_unique<optim::CosineAnnealingLR>(opt, total, cfg.get_float("lr_scheduler.min_lr"));
  if (name == "warmup_cosine")
    return std::make_unique<optim::WarmupCosineLR>(opt, cfg.get_int("lr_scheduler.warmup_steps"), total,
                                                   cfg.get_float("lr_scheduler.min_lr"));
  if (name == "onecycle") return std::make_unique<optim::OneCycleLR>(opt, cfg.get_float("lr_scheduler.max_lr"), total);
  throw Error(
      fmt::format("lr_scheduler.name: unknown scheduler '{}' (none, step, cosine, warmup_cosine, onecycle)", name));
}

int64_t model_bytes(const nn::Module& m) { return m.num_bytes(); }

}  // namespace lowbit::cli
