// Run directories (one run each) and what a resume may change.
#include "lowbit/cli/train.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "lowbit/autograd/autograd.h"
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

std::vector<std::string> resume_config_changes(const RunConfig& stored, const RunConfig& now) {
  // keys that only affect logging, evaluation, sampling, output locations, thread count (the
  // kernels are thread-count independent) or how ranks communicate may change on resume
  static const std::set<std::string> free_keys = {"training.log_interval",
                                                  "training.run_dir",
                                                  "training.threads",
                                                  "training.eval_interval",
                                                  "training.eval_batches",
                                                  "training.sample_tokens",
                                                  "training.temperature",
                                                  "training.top_k",
                                                  "training.export",
                                                  "training.report",
                                                  "checkpoint.interval",
                                                  "checkpoint.keep_last",
                                                  "checkpoint.dir",
                                                  "checkpoint.enabled",
                                                  "distributed.bucket_cap_mb",
                                                  "distributed.timeout_s",
                                                  "distributed.shard_optimizer_state"};
  std::vector<std::string> out;
  for (const auto& spec : config_schema()) {
    if (free_keys.count(spec.key)) continue;
    // the TOML renderings are exact (shortest round-trip floats), so text equality is value equality
    const std::string va = stored.value_text(spec.key), vb = now.value_text(spec.key);
    if (va != vb) out.push_back(fmt::format("{}: {} in the checkpoint, {} now", spec.key, va, vb));
  }
  return out;
}

namespace {

// step_00001234.h5 files of a checkpoint directory, by step
std::vector<std::pair<int64_t, std::filesystem::path>> step_checkpoints(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (auto& e : fs::directory_iterator(dir)) {
    const auto n = e.path().filename().string();
    if (n.size() < 9 || n.rfind("step_", 0) != 0 || e.path().extension() != ".h5") continue;
    const std::string digits = n.substr(5, n.size() - 8);
    if (digits.empty() || digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    out.emplace_back(std::stoll(digits), e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void ensure_writable_dir(const std::string& dir, const std::string& key) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  LOWBIT_CHECK(!ec, "{} '{}': cannot create the directory: {}", key, dir, ec.message());
  const std::string probe = dir + "/.lowbit-write-test";
  try {
    io::write_file_atomic(probe, "lowbit\n");
  } catch (const Error& e) {
    throw Error(fmt::format("{} '{}' is not writable: {}", key, dir, e.what()));
  }
  std::filesystem::remove(probe, ec);
}

}  // namespace

namespace detail {
std::string checkpoint_dir(const RunConfig& cfg) {
  return cfg.get_string("checkpoint.dir").empty() ? cfg.get_string("training.run_dir") + "/checkpoints"
                                                  : cfg.get_string("checkpoint.dir");
}

// One run per run directory: a new run refuses a directory that holds another run's outputs
// (unless --overwrite deletes them); a resume refuses outputs newer than its checkpoint (they
// belong to the trajectory being replaced) and drops later records from metrics.jsonl and steps.jsonl.
void prepare_run_dir(const RunConfig& cfg, const std::string& resume, int64_t resume_step, const RunOptions& ro,
                     std::vector<std::string>& notes) {
  namespace fs = std::filesystem;
  const std::string run_dir = cfg.get_string("training.run_dir");
  const std::string ckpt_dir = checkpoint_dir(cfg);
  std::error_code ec;
  const fs::path resume_path = resume.empty() ? fs::path() : fs::weakly_canonical(resume, ec);
  std::vector<fs::path> conflicting;
  if (resume.empty()) {
    for (const char* f : {"config.toml", "metrics.jsonl", "steps.jsonl", "quant_stats.json", "report.html", "model.h5"})
      if (fs::exists(fs::path(run_dir) / f)) conflicting.push_back(fs::path(run_dir) / f);
    for (const auto& [step, p] : step_checkpoints(ckpt_dir)) conflicting.push_back(p);
  } else {
    if (fs::exists(fs::path(run_dir) / "model.h5")) conflicting.push_back(fs::path(run_dir) / "model.h5");
    for (const auto& [step, p] : step_checkpoints(ckpt_dir))
      if (step > resume_step && fs::weakly_canonical(p, ec) != resume_path) conflicting.push_back(p);
  }
  if (!conflicting.empty()) {
    std::string list;
    for (size_t i = 0; i < conflicting.size() && i < 4; ++i) list += (i ? ", " : "") + conflicting[i].string();
    if (conflicting.size() > 4) list += fmt::format(" and {} more", conflicting.size() - 4);
    if (!ro.overwrite && resume.empty())
      throw Error(
          fmt::format("training.run_dir '{}' already holds a run ({}); pass --resume CHECKPOINT to continue it, "
                      "--overwrite to delete it and start "
                      "over, or choose another training.run_dir",
                      run_dir, list));
    if (!ro.overwrite)
      throw Error(
          fmt::format("training.run_dir '{}' holds outputs written after step {} of the run being resumed ({}); "
                      "continuing would mix two "
                      "trajectories: pass --overwrite to delete them, or resume into another training.run_dir",
                      run_dir, resume_step, list));
    for (const auto& p : conflicting) {
      fs::remove(p, ec);
      LOWBIT_CHECK(!ec, "--overwrite: cannot delete '{}': {}", p.string(), ec.message());
    }
    notes.push_back(
        fmt::format("--overwrite: deleted {} file(s) of the earlier run in {}", conflicting.size(), run_dir));
  }
  ensure_writable_dir(run_dir, "training.run_dir");
  if (cfg.get_bool("checkpoint.enabled"))
    ensure_writable_dir(ckpt_dir, cfg.get_string("checkpoint.dir").empty() ? "checkpoint directory" : "checkpoint.dir");
  for (const char* name : {"metrics.jsonl", "steps.jsonl"}) {
    const std::string path = run_dir + "/" + name;
    if (resume.empty() || !fs::exists(path)) continue;
    // keep the records up to the resumed step
    std::ifstream in(path);
    std::string line, kept;
    int64_t dropped = 0;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
          j["step"].get<int64_t>() > resume_step) {
        ++dropped;
        continue;
      }
      kept += line + "\n";
    }
    if (dropped) {
      io::write_file_atomic(path, kept);
      notes.push_back(fmt::format("{}: dropped {} record(s) after step {}", name, dropped, resume_step));
    }
  }
}
}  // namespace detail

}  // namespace lowbit::cli
