// The optimizer table (optim/table.h).
#include "lowbit/optim/table.h"

#include <fmt/format.h>

#include "lowbit/autograd/kernel.h"
#include "lowbit/optim/lowbit.h"

namespace lowbit::optim {

namespace {
AdamOptions adam_options(const OptimizerSettings& s, double default_wd) {
  AdamOptions o;
  o.lr = s.lr;
  o.beta1 = s.beta1;
  o.beta2 = s.beta2;
  o.eps = s.eps;
  o.weight_decay = std::isnan(s.weight_decay) ? default_wd : s.weight_decay;
  o.amsgrad = s.amsgrad;
  return o;
}
LowBitAdamOptions low_bit_adam_options(const OptimizerSettings& s) {
  LowBitAdamOptions o;
  o.lr = s.lr;
  o.beta1 = s.beta1;
  o.beta2 = s.beta2;
  o.eps = s.eps;
  o.weight_decay = s.weight_decay;
  o.amsgrad = s.amsgrad;
  o.block_size = s.block_size;
  o.bf16_stochastic_round = s.bf16_stochastic_round;
  o.second_moment_floor = s.second_moment_floor;
  return o;
}
template <StateFormat F, bool W>
std::unique_ptr<Optimizer> make_low_bit_adam_row(std::vector<ParamGroup> g, const OptimizerSettings& s) {
  return std::make_unique<LowBitAdam>(std::move(g), low_bit_adam_options(s), F, W);
}
template <StateFormat F>
std::unique_ptr<Optimizer> make_lion_row(std::vector<ParamGroup> g, const OptimizerSettings& s) {
  LionOptions o;
  o.lr = s.lr;
  o.beta1 = s.beta1;
  o.beta2 = s.beta2;
  o.weight_decay = std::isnan(s.weight_decay) ? 0.0 : s.weight_decay;
  o.block_size = s.block_size;
  o.bf16_stochastic_round = s.bf16_stochastic_round;
  return std::make_unique<Lion>(std::move(g), o, F);
}

const std::vector<const char*> kAdamKeys = {"lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad"};
const std::vector<const char*> kLowBitAdamKeys = {"lr",           "beta1",   "beta2",      "eps",
                                                  "weight_decay", "amsgrad", "block_size", "full_precision_state"};
// 8-bit and fp8 states: their second moments can round to zero (LowBitAdamOptions::second_moment_floor)
const std::vector<const char*> kLowBitAdam8Keys = [] {
  auto k = kLowBitAdamKeys;
  k.push_back("second_moment_floor");
  return k;
}();
const std::vector<const char*> kLionKeys = {"lr",           "beta1",      "beta2",
                                            "weight_decay", "block_size", "full_precision_state"};
}  // namespace

const std::vector<OptimizerRow>& optimizer_table() {
  static const std::vector<OptimizerRow> rows = {
      {"adamw", "AdamW", "Adam with decoupled weight decay, float32 states", 8.0, false, kAdamKeys,
       [](std::vector<ParamGroup> g, const OptimizerSettings& s) -> std::unique_ptr<Optimizer> {
         return std::make_unique<AdamW>(std::move(g), adam_options(s, 1e-2));
       }},
      {"adam", "Adam", "Adam with L2 weight decay, float32 states", 8.0, false, kAdamKeys,
       [](std::vector<ParamGroup> g, const OptimizerSettings& s) -> std::unique_ptr<Optimizer> {
         return std::make_unique<Adam>(std::move(g), adam_options(s, 0.0));
       }},
      {"sgd",
       "SGD",
       "SGD, optional momentum (float32 buffer) and nesterov",
       4.0,
       false,
       {"lr", "momentum", "nesterov", "weight_decay"},
       [](std::vector<ParamGroup> g, const OptimizerSettings& s) -> std::unique_ptr<Optimizer> {
         SGDOptions o;
         o.lr = s.lr;
         o.momentum = s.momentum;
         o.nesterov = s.nesterov;
         o.weight_decay = std::isnan(s.weight_decay) ? 0.0 : s.weight_decay;
         return std::make_unique<SGD>(std::move(g), o);
       }},
      {"adamw8bit", "AdamW8bit", "torchao: AdamW, states in 8-bit dynamic-map blocks of 256", 2.0 + 8.0 / 256, true,
       kLowBitAdam8Keys, make_low_bit_adam_row<StateFormat::Int8, true>},
      {"adam8bit", "Adam8bit", "torchao: Adam (L2), states in 8-bit dynamic-map blocks of 256", 2.0 + 8.0 / 256, true,
       kLowBitAdam8Keys, make_low_bit_adam_row<StateFormat::Int8, false>},
      {"adamw4bit", "AdamW4bit", "torchao: AdamW, states in 4-bit blocks of 128", 1.0 + 8.0 / 128, true,
       kLowBitAdamKeys, make_low_bit_adam_row<StateFormat::Int4, true>},
      {"adam4bit", "Adam4bit", "torchao: Adam (L2), states in 4-bit blocks of 128", 1.0 + 8.0 / 128, true,
       kLowBitAdamKeys, make_low_bit_adam_row<StateFormat::Int4, false>},
      {"adamwfp8", "AdamWFp8", "torchao: AdamW, states as float8 e4m3 in blocks of 256", 2.0 + 8.0 / 256, true,
       kLowBitAdam8Keys, make_low_bit_adam_row<StateFormat::Fp8, true>},
      {"adamfp8", "AdamFp8", "torchao: Adam (L2), states as float8 e4m3 in blocks of 256", 2.0 + 8.0 / 256, true,
       kLowBitAdam8Keys, make_low_bit_adam_row<StateFormat::Fp8, false>},
      {"sgd8bit",
       "SGD8bit",
       "bitsandbytes-style SGD with momentum, buffer in 8-bit blocks of 256",
       1.0 + 4.0 / 256,
       true,
       {"lr", "momentum", "dampening", "nesterov", "weight_decay", "block_size", "full_precision_state"},
       [](std::vector<ParamGroup> g, const OptimizerSettings& s) -> std::unique_ptr<Optimizer> {
         SGD8bitOptions o;
         o.lr = s.lr;
         o.momentum = s.momentum;
         o.dampening = s.dampening;
         o.nesterov = s.nesterov;
         o.weight_decay = std::isnan(s.weight_decay) ? 0.0 : s.weight_decay;
         o.block_size = s.block_size;
         o.bf16_stochastic_round = s.bf16_stochastic_round;
         return std::make_unique<SGD8bit>(std::move(g), o);
       }},
      {"lion",
       "Lion",
       "Lion (sign of an interpolated momentum), float32 state",
       4.0,
       false,
       {"lr", "beta1", "beta2", "weight_decay"},
       make_lion_row<StateFormat::Fp32>},
      {"lion8bit", "Lion8bit", "bitsandbytes-style Lion, momentum in 8-bit blocks of 256", 1.0 + 4.0 / 256, true,
       kLionKeys, make_lion_row<StateFormat::Int8>},
  };
  return rows;
}

std::string optimizer_names(const char* sep) {
  std::string s;
  for (const auto& r : optimizer_table()) s += (s.empty() ? "" : sep) + std::string(r.name);
  return s;
}

const OptimizerRow* find_optimizer_row(std::string_view name) {
  for (const auto& r : optimizer_table())
    if (name == r.name) return &r;
  return nullptr;
}

const OptimizerRow& optimizer_row(std::string_view name) {
  if (const OptimizerRow* r = find_optimizer_row(name)) return *r;
  throw Error(fmt::format("unknown optimizer '{}' ({})", name, optimizer_names(", ")));
}

std::unique_ptr<Optimizer> make_optimizer(std::string_view name, std::vector<ParamGroup> groups,
                                          const OptimizerSettings& s) {
  return optimizer_row(name).make(std::move(groups), s);
}

}  // namespace lowbit::optim
