// The training workflow as a library: one loop for every model and dataset (progress, periodic
// evaluation, checkpoints, metrics, exact resume) and the QAT driver (prepare -> fine-tune ->
// convert -> evaluate) built on it. `lowbit train` is a thin layer over these; C++ users call them
// with their own model, data and Task.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/data/dataset.h"
#include "lowbit/dist/ddp.h"
#include "lowbit/nn/module.h"
#include "lowbit/optim/lr_scheduler.h"
#include "lowbit/optim/optimizer.h"
#include "lowbit/qat/quantize.h"

namespace lowbit::train {

/// Named evaluation results in order ("test_loss", "test_accuracy"; "val_loss").
using Metrics = std::vector<std::pair<std::string, double>>;
/// "test loss 0.3010, test accuracy 89.39%": names with spaces, *accuracy as a percentage.
std::string format_metrics(const Metrics& m);

/// What a model is trained and judged on.
struct Task {
  /// The loss of one batch (a scalar with a graph).
  std::function<Tensor(nn::Module& model, const data::Batch& batch)> loss;
  /// Evaluation without gradients, in eval mode (the trainer restores training mode).
  std::function<Metrics(nn::Module& model)> evaluate;
};
/// Classification: cross-entropy of logits (B, C) against class ids; evaluates test loss and
/// accuracy over `test_set` in batches of eval_batch.
Task classification_task(std::shared_ptr<const data::TensorDataset> test_set, int64_t eval_batch = 1000);
/// Language modelling: token-level cross-entropy of logits (B, T, V); evaluates the validation
/// loss over `eval_batches` batches of `batch` windows drawn with Generator(seed) (the same
/// windows every evaluation).
Task language_model_task(std::shared_ptr<const data::CharDataset> val_set, int64_t batch, int64_t eval_batches,
                         uint64_t seed);

/// Where progress goes: a redrawn status line on terminals, plain lines every log_interval steps
/// otherwise; sink receives every finished line (default: stdout).
class Reporter {
 public:
  Reporter(bool tty, int64_t log_interval, std::function<void(const std::string&)> sink = {});
  void update(const std::string& prefix, int64_t done, int64_t total, double loss, double samples_per_s, double eta_s);
  void line(const std::string& text);

 private:
  bool tty_;
  int64_t interval_;
  std::function<void(const std::string&)> sink_;
};

struct CheckpointOptions {
  bool enabled = false;
  std::string dir;          // <dir>/step_00001234.h5
  int64_t interval = 0;     // every N steps (0: only at the end of each phase)
  int64_t keep_last = 3;    // older step files are deleted
  std::string config_toml;  // stored in every checkpoint
  std::string scheduler_name;
};

struct Options {
  std::string phase = "train";  // "train" | "qat": recorded in checkpoints and metrics
  std::string label = "epoch";  // progress prefix: "epoch 2/5", "qat 1/2", or "gpt" (step-based)
  int64_t total_steps = 0;      // the phase ends at this global step
  int64_t epochs = 0;           // for labels: epochs this phase runs (0: step-based progress)
  int64_t first_epoch = 1;      // the label of the phase's first epoch
  int64_t eval_interval = 0;    // evaluate every N steps; 0: at the end of every epoch
  double grad_clip = 0;         // max global gradient norm (0: off)
  bool step_scheduler = true;
  int64_t samples_per_batch_item = 1;  // throughput unit: 1 (examples) or the context length (tokens)
  std::string metrics_path;            // metrics.jsonl to append to ("" = none)
  /// steps.jsonl to append to ("" = none): every log_interval steps (and the phase's last) a line
  /// with the step, that step's loss (the global batch's), the running mean since the last
  /// evaluation, the learning rate, throughput and the wall time since the phase started.
  std::string steps_path;
  int64_t log_interval = 50;
  CheckpointOptions checkpoint;
  /// Data parallel (null: one process). The loader must hand out this rank's shards; the
  /// loss, throughput and metrics are the global batch's; checkpoints are written by rank 0
  /// (ZeRO-1: from optimizer state gathered there) and every rank returns the same path.
  dist::DistributedDataParallel* ddp = nullptr;
};

struct Result {
  int64_t step = 0;       // the global step reached
  double train_loss = 0;  // mean over the last evaluation window
  Metrics eval;           // the last evaluation
  std::string last_checkpoint;
};

/// task.evaluate in eval mode without gradients (the module's mode is restored); empty when the
/// task has no evaluation.
Metrics evaluate(nn::Module& model, const Task& task);

/// Trains `model` from global step `start_step` to options.total_steps, taking batches from
/// `loader` (its position continues: a loader restored from a checkpoint resumes mid-epoch),
/// evaluating, appending metrics and saving checkpoints as options say; saves a checkpoint at the
/// end of the phase. Deterministic: the same start state gives the same weights.
Result fit(nn::Module& model, optim::Optimizer& optimizer, optim::LRScheduler* scheduler, data::DataLoader& loader,
           const Task& task, const Options& options, Reporter& reporter, int64_t start_step);

/// Saves a training checkpoint under options.checkpoint (keeping keep_last step files); returns
/// its path ("" when checkpoints are disabled).
std::string save_step_checkpoint(int64_t step, const nn::Module& model, optim::Optimizer& optimizer,
                                 const optim::LRScheduler* scheduler, const data::DataLoader& loader,
                                 const Options& options);

/// Quantization error of one tensor against its reference: SQNR = 10 log10(|x|^2 / |x - q|^2) in
/// dB (inf when equal: stored as NaN-free +inf) and the relative error |x - q| / |x|.
struct QuantError {
  double weight_sqnr_db = NAN, weight_rel_err = NAN, output_sqnr_db = NAN, output_rel_err = NAN;
};
/// Per quantized Linear (lowbit report): its error before QAT fine-tuning (the trained float
/// weights fake-quantized as they are), after it, and of the converted inference module's
/// outputs against the float layer's, on the layer's own inputs from a held-out batch; bytes of
/// the float and the converted layer.
struct LayerQuantStats {
  std::string name;
  Shape shape;
  int64_t float_bytes = 0, converted_bytes = 0;
  QuantError before, after, converted;
};

/// The QAT driver's settings.
struct QatOptions {
  std::shared_ptr<qat::QuantConfigBase> config;  // the base config (a recipe's)
  std::string name;                              // for logs ("8da4w")
  std::string mode = "qat";                      // "qat": prepare, fine-tune, convert; "ptq": convert only
  int64_t epochs = 1;                            // fine-tuning epochs (qat) ...
  int64_t steps = 0;                             // ... or steps, when positive
  double lr = 1e-4;                              // fine-tuning learning rate (qat)
  Tensor stats_input;  // a held-out batch's model input: per-layer statistics (undefined: none)
};
struct QatResult {
  std::shared_ptr<nn::Module> model;  // the converted model
  Metrics float_eval, fake_quant_eval, converted_eval;
  int64_t step = 0;
  std::string last_checkpoint;
  std::vector<LayerQuantStats>
      layer_stats;  // with QatOptions::stats_input (qat: before/after/converted; ptq: converted)
};
/// prepare -> fine-tune -> convert -> evaluate, through fit() (phase "qat", checkpoints and
/// metrics as `options` say). Fine-tuning ends at options.total_steps (the float phase's steps +
/// qat.steps, or qat.epochs x batches per epoch) and starts at `start_step`: the float phase's end, or, when
/// `already_prepared` (a resume from a "qat" checkpoint: the caller prepared the model before
/// loading it), the checkpoint's step. The optimizer keeps its state; its learning rate is set to
/// qat.lr (constant while fine-tuning).
/// `scheduler` (may be null) is not stepped while fine-tuning; checkpoints keep its state.
QatResult quantize_model(std::shared_ptr<nn::Module> model, optim::Optimizer& optimizer, optim::LRScheduler* scheduler,
                         data::DataLoader& loader, const Task& task, const QatOptions& qat, Options options,
                         Reporter& reporter, int64_t start_step, bool already_prepared = false);
/// QAT prepare with the driver's config (what a resume from a "qat" checkpoint does first).
std::shared_ptr<nn::Module> prepare_for_qat(std::shared_ptr<nn::Module> model, const QatOptions& qat);

}  // namespace lowbit::train
