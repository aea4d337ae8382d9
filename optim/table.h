// Every optimizer lowbit has, by its run-config name: one table that the CLI builds, validates and
// lists from (`lowbit optimizers`, `lowbit train --list-keys`), so a new optimizer is one row.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/optim/optimizer.h"

namespace lowbit::optim {

/// The settings a run config gives (the `optimizer.*` keys); each optimizer reads the ones its row
/// lists. weight_decay NaN = the class default (AdamW*: 1e-2, Adam*: 0).
struct OptimizerSettings {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 1e-2;
  double momentum = 0.0, dampening = 0.0;
  bool amsgrad = false, nesterov = false;
  int64_t block_size = 0;  // low-bit states: 0 = the format's default
  bool bf16_stochastic_round = false;
  bool second_moment_floor = true;  // 8-bit / fp8 Adams (LowBitAdamOptions::second_moment_floor)
};

struct OptimizerRow {
  const char* name;     // run-config spelling: "adamw8bit"
  const char* cls;      // the class: "AdamW8bit"
  const char* summary;  // one line for listings
  /// Optimizer state bytes per parameter for a float32 parameter whose states are quantized
  /// (blocks' scales included at the default block size); 0 for plain SGD.
  double state_bytes_per_param;
  bool low_bit;                   // a LowBitOptimizer (block_size, full-precision overrides apply)
  std::vector<const char*> keys;  // the optimizer.* keys it reads (besides name)
  std::unique_ptr<Optimizer> (*make)(std::vector<ParamGroup> groups, const OptimizerSettings& s);
};

const std::vector<OptimizerRow>& optimizer_table();
/// The row of a run-config name; throws listing every name.
const OptimizerRow& optimizer_row(std::string_view name);
/// The same, or nullptr for an unknown name.
const OptimizerRow* find_optimizer_row(std::string_view name);
/// "adamw | adam | sgd | ..." in table order.
std::string optimizer_names(const char* sep = " | ");
/// Builds the named optimizer (the constructors check the settings: a bad value throws naming it).
std::unique_ptr<Optimizer> make_optimizer(std::string_view name, std::vector<ParamGroup> groups,
                                          const OptimizerSettings& s);

}  // namespace lowbit::optim
