// Shared internals of the lowbit program's library (not installed).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "lowbit/cli/config.h"
#include "lowbit/cli/train.h"
#include "lowbit/data/dataset.h"
#include "lowbit/io/checkpoint.h"
#include "lowbit/nn/module.h"

namespace lowbit::cli::detail {

/// The run config a file stores, validated like a run's (files.cpp).
RunConfig stored_config(const io::FileInfo& info, const std::string& path);
/// checkpoint.dir, or <run_dir>/checkpoints (run_dir.cpp).
std::string checkpoint_dir(const RunConfig& cfg);
/// Makes training.run_dir (and the checkpoint directory) ready for a run: one run per directory,
/// writability, metrics trimmed to the resumed step (run_dir.cpp).
void prepare_run_dir(const RunConfig& cfg, const std::string& resume, int64_t resume_step, const RunOptions& ro,
                     std::vector<std::string>& notes);

}  // namespace lowbit::cli::detail
