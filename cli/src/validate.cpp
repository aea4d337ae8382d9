// Run-config validation before any work, and the parameter bound of a config's model.
#include "lowbit/cli/train.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/generator.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/float8/float8.h"
#include "lowbit/mx/linear.h"
#include "lowbit/autograd/parallel.h"
#include "lowbit/data/dataset.h"
#include "lowbit/io/checkpoint.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/transformer.h"
#include "lowbit/qat/quantized_linear.h"
#include "lowbit/qat/recipes.h"

#include "internal.h"
#include "lowbit/optim/table.h"

namespace lowbit::cli {

namespace {
void check_finite_positive(const RunConfig& cfg, const std::string& key, bool allow_zero = false) {
  const double v = cfg.get_float(key);
  LOWBIT_CHECK(std::isfinite(v) && (allow_zero ? v >= 0 : v > 0), "{} must be a finite number {} 0, got {}", key,
               allow_zero ? ">=" : ">", v);
}
void check_int(const RunConfig& cfg, const std::string& key, int64_t lo, const char* what) {
  LOWBIT_CHECK(cfg.get_int(key) >= lo, "{} must be {}, got {}", key, what, cfg.get_int(key));
}
void check_one_of(const RunConfig& cfg, const std::string& key, std::initializer_list<const char*> names) {
  const std::string& v = cfg.get_string(key);
  std::string list;
  for (const char* n : names) {
    if (v == n) return;
    list += (list.empty() ? "" : ", ") + std::string(n);
  }
  throw Error(fmt::format("{}: unknown value '{}' (one of: {})", key, v, list));
}
}  // namespace

void validate_config(const RunConfig& cfg) {
  // model
  check_one_of(cfg, "model.type", {"mlp", "gpt"});
  const double dropout = cfg.get_float("model.dropout");
  LOWBIT_CHECK(std::isfinite(dropout) && dropout >= 0 && dropout < 1, "model.dropout must be in [0, 1), got {}",
               dropout);
  if (cfg.get_string("model.type") == "mlp") {
    check_one_of(cfg, "model.activation", {"relu", "gelu", "silu", "tanh"});
    check_int(cfg, "model.input_dim", 1, "positive");
    check_int(cfg, "model.num_classes", 1, "positive");
    LOWBIT_CHECK(cfg.get_int_list("model.hidden").size() <= 64, "model.hidden: at most 64 hidden layers, got {}",
                 cfg.get_int_list("model.hidden").size());
    for (int64_t h : cfg.get_int_list("model.hidden"))
      LOWBIT_CHECK(h > 0, "model.hidden: layer widths must be positive, got {}", h);
  } else {
    for (const char* k : {"model.context", "model.d_model", "model.n_heads", "model.n_layers"})
      check_int(cfg, k, 1, "positive");
    check_int(cfg, "model.d_ff", 0, ">= 0 (0 = 4 * d_model)");
    LOWBIT_CHECK(cfg.get_int("model.d_model") % cfg.get_int("model.n_heads") == 0,
                 "model.d_model ({}) must be divisible by model.n_heads ({})", cfg.get_int("model.d_model"),
                 cfg.get_int("model.n_heads"));
  }
  // a model of more than 2^32 parameters (16 GiB of float32 weights) is not a run this CPU trains
  const int64_t params = min_parameters(cfg);
  LOWBIT_CHECK(params <= (int64_t{1} << 32),
               "the model described by [model] has at least {} parameters; lowbit refuses models above 2^32", params);
  // data
  check_one_of(cfg, "data.dataset", {"fashion_mnist", "chars"});
  check_int(cfg, "data.batch_size", 1, "positive");
  const double vf = cfg.get_float("data.val_fraction");
  LOWBIT_CHECK(vf > 0 && vf < 1, "data.val_fraction must be in (0, 1), got {}", vf);
  if (cfg.get_string("data.dataset") == "chars") {
    LOWBIT_CHECK(cfg.get_string("model.type") == "gpt", "data.dataset 'chars' needs model.type = \"gpt\", got \"{}\"",
                 cfg.get_string("model.type"));
    LOWBIT_CHECK(
        cfg.get_int("training.max_steps") > 0,
        "training.max_steps must be positive for data.dataset = 'chars' (an epoch covers every window of the corpus)");
    LOWBIT_CHECK(cfg.get_string("quantize.recipe") == "none" || cfg.get_string("quantize.mode") != "qat" ||
                     cfg.get_int("quantize.qat_steps") > 0,
                 "quantize.qat_steps must be positive for QAT with data.dataset = 'chars' (an epoch covers every "
                 "window of the corpus)");
  } else {
    LOWBIT_CHECK(cfg.get_string("model.type") == "mlp",
                 "data.dataset 'fashion_mnist' needs model.type = \"mlp\", got \"{}\"", cfg.get_string("model.type"));
    LOWBIT_CHECK(
        cfg.get_int("model.input_dim") == 784 && cfg.get_int("model.num_classes") == 10,
        "data.dataset 'fashion_mnist' has 784 inputs and 10 classes; model.input_dim is {} and model.num_classes {}",
        cfg.get_int("model.input_dim"), cfg.get_int("model.num_classes"));
  }
  // optimizer and schedule
  {
    // the optimizer table: the name, and its constructor's own checks of the settings (built
    // over a stand-in parameter, so a bad value fails here, before any data is read)
    const std::string name = cfg.get_string("optimizer.name");
    const optim::OptimizerRow* row = optim::find_optimizer_row(name);
    LOWBIT_CHECK(row, "optimizer.name: unknown value '{}' (one of: {})", name, optim::optimizer_names(", "));
    const int64_t bs = cfg.get_int("optimizer.block_size");
    const bool int4 = name.find("4bit") != std::string::npos;
    LOWBIT_CHECK(bs == 0 || (bs >= 1 && bs <= 256 && (!int4 || bs % 2 == 0)),
                 "optimizer.block_size must be 0 (the optimizer's default) or in [1, 256]{}, got {}",
                 int4 ? " and even" : "", bs);
    LOWBIT_CHECK(row->low_bit || cfg.get_string_list("optimizer.full_precision_state").empty(),
                 "optimizer.full_precision_state applies to the low-bit optimizers; '{}' keeps full-precision states",
                 name);
  }
  check_finite_positive(cfg, "optimizer.lr");
  check_finite_positive(cfg, "optimizer.weight_decay", true);
  check_finite_positive(cfg, "optimizer.eps");
  check_finite_positive(cfg, "optimizer.momentum", true);
  check_finite_positive(cfg, "optimizer.dampening", true);
  {  // the optimizer's own checks of its settings, over a stand-in parameter
    const std::string name = cfg.get_string("optimizer.name");
    const bool bf16 = cfg.get_string("training.param_dtype") == "bf16";
    Tensor stand_in = zeros({1}, bf16 ? kBFloat16 : kFloat32);
    stand_in.requires_grad_();
    try {
      optim::make_optimizer(name, {{{stand_in}, {}}}, optimizer_settings(cfg));
    } catch (const Error& e) {
      throw Error(fmt::format("optimizer ({}{}): {}", name, bf16 ? ", training.param_dtype = bf16" : "", e.what()));
    }
    LOWBIT_CHECK(bf16 || !cfg.get_bool("optimizer.bf16_stochastic_round"),
                 "optimizer.bf16_stochastic_round applies to bfloat16 parameters (training.param_dtype = \"bf16\")");
    const optim::OptimizerRow* row = optim::find_optimizer_row(name);  // its keys: the settings it reads
    const bool reads_floor = row != nullptr && std::any_of(row->keys.begin(), row->keys.end(), [](const char* k) {
                               return std::string_view(k) == "second_moment_floor";
                             });
    LOWBIT_CHECK(cfg.get_bool("optimizer.second_moment_floor") || reads_floor,
                 "optimizer.second_moment_floor = false applies to adam8bit, adamw8bit, adamfp8 and adamwfp8 (whose "
                 "second-moment states can round to zero), not to {}",
                 name);
    LOWBIT_CHECK(
        !bf16 || (cfg.get_string("quantize.recipe") == "none" && cfg.get_string("float8.recipe_name") == "none" &&
                  cfg.get_string("mx.recipe_name") == "none"),
        "training.param_dtype = \"bf16\" is for plain training: it cannot be combined with quantize.recipe, "
        "float8.recipe_name or mx.recipe_name (their layers keep float32 weights)");
  }
  for (const char* k : {"optimizer.beta1", "optimizer.beta2"}) {
    const double b = cfg.get_float(k);
    LOWBIT_CHECK(b >= 0 && b < 1, "{} must be in [0, 1), got {}", k, b);
  }
  check_one_of(cfg, "lr_scheduler.name", {"none", "step", "cosine", "warmup_cosine", "onecycle"});
  check_int(cfg, "lr_scheduler.warmup_steps", 0, ">= 0");
  check_int(cfg, "lr_scheduler.step_size", 1, "positive");
  check_finite_positive(cfg, "lr_scheduler.min_lr", true);
  check_finite_positive(cfg, "lr_scheduler.gamma");
  check_finite_positive(cfg, "lr_scheduler.max_lr");
  if (cfg.get_string("lr_scheduler.name") == "warmup_cosine" && cfg.get_int("training.max_steps") > 0)
    LOWBIT_CHECK(cfg.get_int("lr_scheduler.warmup_steps") < cfg.get_int("training.max_steps"),
                 "lr_scheduler.warmup_steps ({}) must be below training.max_steps ({})",
                 cfg.get_int("lr_scheduler.warmup_steps"), cfg.get_int("training.max_steps"));
  // training
  check_int(cfg, "training.epochs", 1, "positive");
  check_int(cfg, "training.max_steps", 0, ">= 0 (0 = epochs decide)");
  check_int(cfg, "training.seed", 0, ">= 0");
  check_int(cfg, "training.threads", 0, ">= 0 (0 = all cores)");
  LOWBIT_CHECK(cfg.get_int("training.threads") <= 1024, "training.threads must be at most 1024, got {}",
               cfg.get_int("training.threads"));
  check_finite_positive(cfg, "training.grad_clip", true);
  check_int(cfg, "training.log_interval", 1, "positive");
  check_int(cfg, "training.eval_interval", 0, ">= 0");
  check_int(cfg, "training.eval_batches", 1, "positive");
  check_int(cfg, "training.sample_tokens", 0, ">= 0");
  check_int(cfg, "training.top_k", 0, ">= 0");
  check_finite_positive(cfg, "training.temperature");
  LOWBIT_CHECK(!cfg.get_string("training.run_dir").empty(), "training.run_dir must not be empty");
  check_one_of(cfg, "training.precision", {"fp32", "bf16"});
  check_one_of(cfg, "training.param_dtype", {"fp32", "bf16"});
  check_int(cfg, "checkpoint.interval", 0, ">= 0 (0 = only at the end)");
  check_int(cfg, "checkpoint.keep_last", 1, "at least 1");
  check_finite_positive(cfg, "distributed.bucket_cap_mb");
  LOWBIT_CHECK(cfg.get_float("distributed.bucket_cap_mb") <= 4096,
               "distributed.bucket_cap_mb must be at most 4096, got {}", cfg.get_float("distributed.bucket_cap_mb"));
  check_finite_positive(cfg, "distributed.timeout_s");
  LOWBIT_CHECK(cfg.get_float("distributed.timeout_s") <= 1e6, "distributed.timeout_s must be at most 1e6, got {}",
               cfg.get_float("distributed.timeout_s"));
  // quantization: the recipe with its dtype and group size (a group size that does not divide a
  // layer's in_features gives its rows a shorter last group)
  const std::string recipe = cfg.get_string("quantize.recipe");
  check_one_of(cfg, "quantize.mode", {"qat", "ptq"});
  check_int(cfg, "quantize.qat_epochs", 0, ">= 0");
  check_int(cfg, "quantize.qat_steps", 0, ">= 0 (0 = use qat_epochs)");
  check_finite_positive(cfg, "quantize.qat_lr");
  // float8 training: a recipe of the table; not combined with integer quantization (yet)
  const std::string f8 = cfg.get_string("float8.recipe_name");
  if (f8 != "none") {
    try {
      float8::Float8LinearConfig::from_recipe_name(f8);
      if (cfg.get_bool("float8.auto_filter")) float8::auto_filter_for_recipe(f8, {});
    } catch (const Error& e) {
      throw Error(fmt::format("[float8]: {}", e.what()));
    }
    LOWBIT_CHECK(recipe == "none",
                 "float8.recipe_name '{}' and quantize.recipe '{}' cannot be combined: train in float8 or quantize "
                 "with a recipe, not both",
                 f8, recipe);
  }
  for (const auto& f : cfg.get_string_list("float8.filter_fqns"))
    LOWBIT_CHECK(!f.empty(), "float8.filter_fqns: an empty string would match every layer");
  // MX training: a recipe of the table; one low-precision training recipe at a time
  const std::string mxr = cfg.get_string("mx.recipe_name");
  if (mxr != "none") {
    try {
      if (mxr != "nvfp4") mx::MXLinearConfig::from_recipe_name(mxr);  // nvfp4: NVFP4 training, no MX config
    } catch (const Error& e) {
      throw Error(fmt::format("[mx]: {} or nvfp4", e.what()));
    }
    LOWBIT_CHECK(f8 == "none",
                 "mx.recipe_name '{}' and float8.recipe_name '{}' cannot be combined: one training recipe", mxr, f8);
    LOWBIT_CHECK(recipe == "none",
                 "mx.recipe_name '{}' and quantize.recipe '{}' cannot be combined: train in MX or quantize with a "
                 "recipe, not both",
                 mxr, recipe);
  }
  for (const auto& f : cfg.get_string_list("mx.filter_fqns"))
    LOWBIT_CHECK(!f.empty(), "mx.filter_fqns: an empty string would match every layer");
  LOWBIT_CHECK(recipe != "none" || (cfg.get_string("quantize.float8_qat_backward") == "straight_through" &&
                                    !cfg.get_bool("quantize.float8_guard_zero_blocks")),
               "quantize.float8_qat_backward / float8_guard_zero_blocks apply to the float8 recipes only, and "
               "quantize.recipe is 'none'");
  if (recipe != "none") {
    std::shared_ptr<qat::QuantConfigBase> q;
    try {
      q = build_quantize_config(cfg);
    } catch (const Error& e) {
      throw Error(fmt::format("[quantize]: {}", e.what()));
    }
  }
}

int64_t min_parameters(const RunConfig& cfg, int64_t vocab_size) {
  // saturating arithmetic: a hostile config must not overflow the estimate
  constexpr int64_t kCap = int64_t{1} << 62;
  auto mul = [](int64_t a, int64_t b) -> int64_t {
    if (a <= 0 || b <= 0) return 0;
    return a > kCap / b ? kCap : a * b;
  };
  auto add = [](int64_t a, int64_t b) -> int64_t { return a > kCap - b ? kCap : a + b; };
  int64_t n = 0;
  if (cfg.get_string("model.type") == "mlp") {
    int64_t in = cfg.get_int("model.input_dim");
    for (int64_t h : cfg.get_int_list("model.hidden")) {
      n = add(n, mul(in, h));
      in = h;
    }
    n = add(n, mul(in, cfg.get_int("model.num_classes")));
  } else {
    const int64_t d = cfg.get_int("model.d_model");
    const int64_t ff = cfg.get_int("model.d_ff") > 0 ? cfg.get_int("model.d_ff") : mul(4, d);
    const int64_t per_block = add(mul(4, mul(d, d)), mul(2, mul(d, ff)));  // qkv + proj + the two MLP matrices
    n = add(mul(vocab_size, d), mul(cfg.get_int("model.context"), d));
    n = add(n, mul(cfg.get_int("model.n_layers"), per_block));
  }
  return n;
}

}  // namespace lowbit::cli
