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

namespace lowbit::cli {

struct TrainResult {
  int64_t steps = 0;
  double final_train_loss = 0;
  double test_accuracy = 0;  // fashion_mnist
  double val_loss = 0;       // chars
  double train_seconds = 0;
  std::string sample;        // chars: generated text
  std::string last_checkpoint;
  double float_accuracy = 0;      // fashion_mnist with a quantize recipe: before quantization
  double qat_accuracy = 0;        // fake-quantized, after QAT fine-tuning
  int64_t model_bytes = 0;        // bytes of the final model's parameters and buffers
  std::string export_path;
};

std::shared_ptr<nn::Module> build_model(const RunConfig& cfg, int64_t vocab_size = 0);
std::unique_ptr<optim::Optimizer> build_optimizer(const RunConfig& cfg, const std::vector<Tensor>& params);
/// nullptr for "none"; total_steps sizes cosine/onecycle schedules.
std::unique_ptr<optim::LRScheduler> build_scheduler(const RunConfig& cfg, optim::Optimizer& opt, int64_t total_steps);

/// Evaluates a classifier checkpoint/export (model and quantization rebuilt from the config stored
/// in the file) on the Fashion-MNIST test set; returns (loss, accuracy).
std::pair<double, double> evaluate_file(const std::string& path, const std::string& data_path = "");
/// Post-training quantization of a float model file with a recipe; writes out_path.
void convert_file(const std::string& in_path, const std::string& out_path, const std::string& recipe, const std::string& weight_dtype,
                  int64_t group_size);
/// Bytes of a module's parameters and buffers.
int64_t model_bytes(const nn::Module& m);

/// Trains as configured. progress_bar: redraw one status line (for terminals). resume: a
/// checkpoint written by an earlier run of the same config; training continues exactly where it
/// stopped (same batches, same random numbers, same optimizer and scheduler state).
TrainResult train(const RunConfig& cfg, bool progress_bar, const std::string& resume = "");

}  // namespace lowbit::cli
