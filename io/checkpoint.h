// HDF5 checkpoints (schema: docs/checkpoint-format.md).
//
// A training checkpoint holds the model's parameters and buffers at paths that follow their
// dotted names (/model/blocks/0/attn/qkv/weight), the optimizer's state keyed by parameter name
// with its param groups, the RNG and data-loader positions, the scheduler position, the step
// and the resolved run config. A model export holds /model only.
//
// Safety: HDF5 builds the file in memory (/dev/shm or in process), then the image is written to a
// temporary name with every system call checked, fsync'ed and renamed over the target;
// every dataset carries HDF5's Fletcher32 checksum; lowbit's files also carry a CRC-32 of the
// whole HDF5 image in the file's user block, verified before HDF5 parses anything, so a
// truncated or corrupted file is rejected up front. Nothing read from a file selects code to
// run except a fixed set of known names (dtypes, optimizer and scheduler names).
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "lowbit/nn/module.h"
#include "lowbit/optim/lr_scheduler.h"
#include "lowbit/optim/optimizer.h"

namespace lowbit::data {
class DataLoader;
}

namespace lowbit::io {

inline constexpr const char* kFormatName = "lowbit-checkpoint";
// 2: module groups carry module_type / module_index / typed attributes, quantized layers store
// their scheme as structured attributes (weight_format, integer-list shape and block_size).
// Files of version 1 are read, except their quantized layers (another attribute layout).
inline constexpr int64_t kSchemaVersion = 2;

/// Everything besides model and optimizer that a bit-exact resume needs.
struct TrainingState {
  int64_t step = 0;
  int64_t epoch = 0;     // data-loader epoch
  int64_t position = 0;  // batches already taken in that epoch
  uint64_t loader_seed = 0;
  uint64_t rng_seed = 0, rng_offset = 0;  // the default generator
  int64_t scheduler_last_epoch = -1;      // -1: no scheduler
  std::string scheduler_name;
  std::string config_toml;  // the run's resolved config
  // The training phase the checkpoint was taken in: "train", or "qat" (the model was prepared
  // for QAT: a resume prepares it the same way before loading). Files without it: "train".
  std::string phase = "train";
};

struct SaveOptions {
  int gzip_level = 0;  // 0: no compression; 1..9 deflate (with the shuffle filter)
};

struct LoadOptions {
  /// strict: every model key must be present with the right shape/dtype and no extra keys;
  /// non-strict loads what matches and reports the rest in LoadReport.
  bool strict = true;
};

struct LoadReport {
  std::vector<std::string> missing_keys, unexpected_keys, mismatched;  // mismatched: "key: reason"
  std::optional<TrainingState> state;                                  // absent for model-only files
  std::string kind;                                                    // "training" or "model"
};

/// Writes a training checkpoint. optimizer, scheduler and loader may be null.
void save_checkpoint(const std::string& path, const nn::Module& model, const optim::Optimizer* optimizer,
                     const optim::LRScheduler* scheduler, const data::DataLoader* loader, TrainingState state,
                     const SaveOptions& options = {});
/// Reads a checkpoint into existing objects (validated fully before anything is modified).
/// Restores the default generator; seeks the loader; sets the scheduler's position.
LoadReport load_checkpoint(const std::string& path, nn::Module& model, optim::Optimizer* optimizer = nullptr,
                           optim::LRScheduler* scheduler = nullptr, data::DataLoader* loader = nullptr,
                           const LoadOptions& options = {});
/// Model-only export for inference (parameters and buffers, plus an optional config).
void export_model(const std::string& path, const nn::Module& model, const std::string& config_toml = "",
                  const SaveOptions& options = {});
/// The model a file holds, rebuilt from the file alone: every module group's `module_type`,
/// `module_index` and attributes go through nn's module factories (nn's layers, qat's
/// QuantizedLinear), each checking what it is given; tensors are read under the usual checks.
/// Returned in eval mode. Throws naming the file and the group on anything it cannot rebuild.
std::shared_ptr<nn::Module> load_model(const std::string& path);
/// Tensors under /model as (dotted name, tensor), after validating the file.
nn::NamedTensors read_model_tensors(const std::string& path);

/// One entry of `lowbit inspect`.
struct TensorInfo {
  std::string path;   // HDF5 path
  std::string dtype;  // lowbit dtype name
  Shape shape;
  uint64_t bytes = 0;  // stored bytes (after compression)
  uint64_t logical_bytes = 0;
  std::string scheme;                // quantization scheme for quantized-tensor groups, "" otherwise
  std::vector<std::string> aliases;  // other paths of the same dataset (hard links: tied weights)
};
/// One parameter's optimizer state in a training checkpoint.
struct OptimizerStateInfo {
  std::string param;  // the parameter's name (dotted)
  int64_t numel = 0;  // its elements (0 when the model part of the file does not hold it)
  int64_t step = 0;
  uint64_t bytes = 0;               // logical bytes of its state tensors
  std::vector<TensorInfo> tensors;  // path, dtype, shape, bytes; scheme = the tensor's attributes as text
};
struct FileInfo {
  std::map<std::string, std::string> attributes;  // root attributes as text
  std::string model_type;                         // /model's module_type ("" in files without one)
  std::vector<TensorInfo> tensors;
  int64_t parameters = 0;
  uint64_t stored_bytes = 0, float32_bytes = 0, file_bytes = 0;
  bool integrity_checked = false;
  std::string optimizer;  // the optimizer's class ("" in files without optimizer state)
  std::vector<OptimizerStateInfo> optimizer_states;
};
FileInfo inspect(const std::string& path);

/// Reads every part of a file the way the loaders do -- every link, attribute, string and
/// tensor, under the same checks -- and throws lowbit::Error on the first problem. isolated:
/// do it in a child process (fork) and turn a crash there into an Error, so that a malformed
/// file that crashes the HDF5 library itself (HDF5 1.10 trusts some on-disk indices, e.g. of
/// its global heap) cannot take the caller down. The lowbit executable verifies every file it
/// is given this way before loading it; library users loading untrusted files should too.
/// Fork from a process without running threads (before training starts).
void verify_file(const std::string& path, bool isolated = true);

/// Writes bytes to path atomically: a temporary file beside it, every write checked (a full disk
/// is an error naming errno, and the temporary file is removed), fsync, rename over path.
void write_file_atomic(const std::string& path, const std::string& bytes);
/// Appends bytes to path with every write checked (errors name the file and errno).
void append_file(const std::string& path, const std::string& bytes);

}  // namespace lowbit::io
