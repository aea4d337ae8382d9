// `lowbit train`: builds the model, data, optimizer and scheduler a RunConfig describes and
// trains, logging progress (a bar on a terminal, plain lines otherwise), evaluating, and
// appending metrics to <run_dir>/metrics.jsonl beside the resolved <run_dir>/config.toml.
#pragma once
#include <memory>
#include <string>

#include "lowbit/cli/config.h"
#include "lowbit/nn/module.h"
#include "lowbit/optim/lr_scheduler.h"
#include "lowbit/optim/optimizer.h"
#include "lowbit/optim/table.h"

namespace lowbit::qat {
struct QuantConfigBase;
}

namespace lowbit::cli {

struct TrainResult {
  int64_t steps = 0;
  double final_train_loss = 0;
  double test_accuracy = 0;  // fashion_mnist
  double val_loss = 0;       // chars
  double train_seconds = 0;
  std::string sample;  // chars: generated text
  std::string last_checkpoint;
  double float_accuracy = 0;  // fashion_mnist with a quantize recipe: before quantization
  double qat_accuracy = 0;    // fake-quantized, after QAT fine-tuning
  int64_t model_bytes = 0;    // bytes of the final model's parameters and buffers
  std::string export_path;
  // under mpirun: ranks, this rank's optimizer state bytes, seconds in collectives
  int ranks = 1;
  int64_t optimizer_state_bytes = 0;
  double comm_seconds = 0;
};

/// Checks everything about a run config that can be checked before any data is read or any step
/// taken: names (model, activation, dataset, optimizer, scheduler, recipe, mode, weight dtype),
/// ranges (epochs > 0, max_steps >= 0, threads >= 0, finite positive learning rates, ...), and the
/// quantize recipe against the model's layer shapes. Throws lowbit::Error naming the key.
void validate_config(const RunConfig& cfg);
/// A lower bound on the parameters of the model a config describes (its weight matrices), computed
/// without building it; vocab_size for GPT models.
int64_t min_parameters(const RunConfig& cfg, int64_t vocab_size = 256);

std::shared_ptr<nn::Module> build_model(const RunConfig& cfg, int64_t vocab_size = 0);
/// The run's optimizer (optimizer.name from the optimizer table), with optimizer.full_precision_state
/// applied to the parameters whose names contain one of its strings.
std::unique_ptr<optim::Optimizer> build_optimizer(const RunConfig& cfg, const nn::Module& model);
/// The optimizer.* keys as the table's settings.
optim::OptimizerSettings optimizer_settings(const RunConfig& cfg);
/// The quantize_ config of quantize.recipe with its weight_dtype, group_size and, for the float8
/// recipes, quantize.float8_qat_backward / float8_guard_zero_blocks (an error naming the key when
/// those are set for another recipe). Requires a recipe other than "none".
std::shared_ptr<qat::QuantConfigBase> build_quantize_config(const RunConfig& cfg);
/// nullptr for "none"; total_steps sizes cosine/onecycle schedules.
std::unique_ptr<optim::LRScheduler> build_scheduler(const RunConfig& cfg, optim::Optimizer& opt, int64_t total_steps);

/// Evaluates a classifier checkpoint/export (model and quantization rebuilt from the config stored
/// in the file) on the Fashion-MNIST test set; returns (loss, accuracy).
std::pair<double, double> evaluate_file(const std::string& path, const std::string& data_path = "");
/// What convert_file did: the linears it quantized (every Linear: ragged last groups).
struct ConvertReport {
  std::vector<std::string> quantized;
  std::string dataset;  // data.dataset of the file's config
  int64_t float_bytes = 0, converted_bytes = 0;
};
/// Post-training quantization of a float model file with a recipe; writes out_path. Everything
/// is checked (the file, the recipe, that at least one layer can be quantized) before the output
/// file is written.
ConvertReport convert_file(const std::string& in_path, const std::string& out_path, const std::string& recipe,
                           const std::string& weight_dtype, int64_t group_size);
/// Bytes of a module's parameters and buffers.
int64_t model_bytes(const nn::Module& m);

/// How a run treats its run directory and a resume.
struct RunOptions {
  /// A run directory that already holds a run (config.toml, metrics.jsonl, model.h5 or
  /// checkpoints) is refused unless this is set; then those files are deleted first.
  bool overwrite = false;
  /// On resume, keys that change the training trajectory (see resume_config_changes) may differ
  /// from the checkpoint's config; the new values are used where they can be.
  bool resume_allow_changes = false;
};

/// Keys that differ between a checkpoint's stored config and a resumed run's config and would
/// change the trajectory, as "key: X in the checkpoint, Y now" (keys that do not change it, such as
/// training.log_interval, training.run_dir, training.threads and checkpoint.*, are not listed).
std::vector<std::string> resume_config_changes(const RunConfig& stored, const RunConfig& now);

/// Trains as configured. progress_bar: redraw one status line (for terminals). resume: a
/// checkpoint written by an earlier run of the same config; training continues exactly where it
/// stopped (same batches, same random numbers, same optimizer and scheduler state). The whole
/// config is validated and the run directory prepared before the first step.
TrainResult train(const RunConfig& cfg, bool progress_bar, const std::string& resume = "",
                  const RunOptions& options = {});

}  // namespace lowbit::cli
