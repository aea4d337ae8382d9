// The lowbit command line.
//   lowbit train CONFIG.toml [--section.key value ...] [--print-config] [--resume CKPT.h5]
//   lowbit inspect FILE.h5 [--json]
//   lowbit eval FILE.h5
//   lowbit convert IN.h5 OUT.h5 --recipe 8da4w [--weight-dtype int4] [--group-size 32]
//   lowbit report RUN_DIR [-o report.html] [--text]
//   lowbit compare RUN_DIR... [-o compare.html] [--text]
//   lowbit recipes
//   lowbit optimizers
#include <algorithm>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/io/checkpoint.h"
#include "lowbit/float8/float8.h"
#include "lowbit/mx/linear.h"
#include "lowbit/optim/table.h"
#include "lowbit/qat/recipes.h"

#include "lowbit/cli/config.h"
#include "lowbit/cli/report.h"
#include "lowbit/cli/train.h"
#include "lowbit/dist/comm.h"

int main(int argc, char** argv) {
  CLI::App app{"lowbit: low-precision neural-network training"};
  app.require_subcommand(1);
  auto* train = app.add_subcommand(
      "train", "train a model described by a TOML run config; any key can be overridden with --section.key value");
  std::string config_path;
  bool print_config = false, list_keys = false;
  train->add_option("config", config_path, "run config (TOML), e.g. configs/fmnist_mlp.toml");
  train->add_flag("--print-config", print_config, "print the resolved config and exit");
  train->add_flag("--list-keys", list_keys, "list every config key with its default and meaning, then exit");
  std::string resume;
  train->add_option("--resume", resume, "continue a run from a checkpoint written by it");
  lowbit::cli::RunOptions run_options;
  train->add_flag("--overwrite", run_options.overwrite,
                  "delete the outputs of an earlier run in training.run_dir (or, with --resume, those written after "
                  "the checkpoint) instead of refusing");
  train->add_flag("--resume-allow-changes", run_options.resume_allow_changes,
                  "resume even when keys that change the training trajectory differ from the checkpoint's config");
  train->allow_extras();
  auto* inspect = app.add_subcommand("inspect", "show the tensors, sizes and metadata of a lowbit HDF5 checkpoint");
  std::string inspect_path;
  bool as_json = false;
  inspect->add_option("file", inspect_path, "checkpoint (.h5)")->required();
  inspect->add_flag("--json", as_json, "machine-readable output");
  auto* eval = app.add_subcommand("eval", "evaluate a Fashion-MNIST model file (float or converted) on the test set");
  std::string eval_path, data_dir;
  eval->add_option("file", eval_path, "model or checkpoint (.h5)")->required();
  eval->add_option("--data", data_dir, "Fashion-MNIST directory (default: the one in the file's config)");
  auto* convert = app.add_subcommand("convert", "post-training quantization of a float model file with a named recipe");
  std::string conv_in, conv_out, recipe = "8da4w", wdtype = "int4";
  int64_t group_size = 32;
  convert->add_option("input", conv_in, "float model or checkpoint (.h5)")->required();
  convert->add_option("output", conv_out, "converted model (.h5)")->required();
  convert->add_option("--recipe", recipe, "recipe name (see `lowbit recipes`)");
  convert->add_option("--weight-dtype", wdtype, "intN weights for 8da-intx / intx-weight-only");
  convert->add_option("--group-size", group_size, "weight group size");
  auto* report = app.add_subcommand(
      "report",
      "a run's report: one self-contained HTML page (curves, quantization error per layer, checkpoints, config)");
  std::string report_dir, report_out;
  bool report_text = false;
  report->add_option("run_dir", report_dir, "the run directory (training.run_dir)")->required();
  report->add_option("-o,--output", report_out, "HTML file to write (default: RUN_DIR/report.html)");
  report->add_flag("--text", report_text, "print the tables instead");
  auto* compare = app.add_subcommand("compare", "compare runs: curves overlaid, final metrics, config differences");
  std::vector<std::string> compare_dirs;
  std::string compare_out;
  bool compare_text = false;
  compare->add_option("run_dirs", compare_dirs, "run directories")->required();
  compare->add_option("-o,--output", compare_out, "HTML file to write (default: compare.html)");
  compare->add_flag("--text", compare_text, "print the tables instead");
  auto* recipes = app.add_subcommand("recipes", "list the quantization, float8 and MX training recipes");
  auto* optimizers =
      app.add_subcommand("optimizers", "list the optimizers (optimizer.name) with their state bytes and keys");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (train->parsed()) {
      if (list_keys) {
        for (const auto& s : lowbit::cli::config_schema()) std::printf("%-32s %s\n", s.key.c_str(), s.help.c_str());
        return 0;
      }
      if (config_path.empty()) {
        std::fprintf(stderr, "lowbit train: missing CONFIG.toml (try configs/fmnist_mlp.toml)\n");
        return 2;
      }
      auto cfg = lowbit::cli::RunConfig::from_file(config_path);
      cfg.apply_overrides(train->remaining());
      lowbit::cli::validate_config(cfg);
      if (print_config) {
        std::printf("%s", cfg.to_toml().c_str());
        return 0;
      }
      if (!resume.empty()) lowbit::io::verify_file(resume);  // a malformed file fails here, in a child process
      lowbit::cli::train(cfg, isatty(STDOUT_FILENO) != 0, resume, run_options);
    } else if (report->parsed()) {
      const std::string path = lowbit::cli::report_command(report_dir, report_out, report_text);
      if (!path.empty()) std::printf("report: %s\n", path.c_str());
    } else if (compare->parsed()) {
      const std::string path = lowbit::cli::compare_command(compare_dirs, compare_out, compare_text);
      if (!path.empty()) std::printf("comparison: %s\n", path.c_str());
    } else if (recipes->parsed()) {
      std::printf("quantization recipes ([quantize] recipe):\n");
      for (const auto& r : lowbit::qat::list_recipes())
        std::printf("  %-20s %s\n", r.name.c_str(), r.description.c_str());
      std::printf("float8 training recipes ([float8] recipe_name):\n");
      for (const auto& r : lowbit::float8::float8_recipes()) std::printf("  %-20s %s\n", r.name, r.description);
      std::printf("MX training recipes ([mx] recipe_name):\n");
      for (const auto& r : lowbit::mx::mx_recipes()) std::printf("  %-26s %s\n", r.name, r.description);
      std::printf("  %-26s %s\n", "nvfp4",
                  "NVFP4 training (TransformerEngine's scales; 1x16 activation/gradient blocks, 16x16 weight tiles; "
                  "RHT + stochastic rounding for the gradients); `emulate` does not apply");
    } else if (optimizers->parsed()) {
      std::printf("%-10s %-10s %9s  %-68s %s\n", "name", "class", "B/param", "", "optimizer.* keys");
      for (const auto& r : lowbit::optim::optimizer_table()) {
        std::string keys;
        for (const char* k : r.keys) keys += (keys.empty() ? "" : ", ") + std::string(k);
        std::printf("%-10s %-10s %9.3f  %-68s %s\n", r.name, r.cls, r.state_bytes_per_param, r.summary, keys.c_str());
      }
      std::printf("B/param: optimizer state per float32 parameter whose states are quantized (>= 4096 elements)\n");
    } else if (eval->parsed()) {
      lowbit::io::verify_file(eval_path);
      const auto [loss, acc] = lowbit::cli::evaluate_file(eval_path, data_dir);
      std::printf("%s: test loss %.4f, test accuracy %.2f%%\n", eval_path.c_str(), loss, 100 * acc);
    } else if (convert->parsed()) {
      lowbit::io::verify_file(conv_in);
      const auto rep = lowbit::cli::convert_file(conv_in, conv_out, recipe, wdtype, group_size);
      for (const auto& q : rep.quantized) std::printf("quantized (%s): %s\n", recipe.c_str(), q.c_str());
      std::printf("%s -> %s (%s): %lld -> %lld bytes of parameters\n", conv_in.c_str(), conv_out.c_str(),
                  recipe.c_str(), static_cast<long long>(rep.float_bytes), static_cast<long long>(rep.converted_bytes));
      if (rep.dataset == "fashion_mnist") {
        const auto [loss, acc] = lowbit::cli::evaluate_file(conv_out);
        std::printf("%s: test loss %.4f, test accuracy %.2f%%\n", conv_out.c_str(), loss, 100 * acc);
      }
    } else if (inspect->parsed()) {
      lowbit::io::verify_file(inspect_path);
      const auto info = lowbit::io::inspect(inspect_path);
      const double ratio =
          info.stored_bytes ? static_cast<double>(info.float32_bytes) / static_cast<double>(info.stored_bytes) : 0.0;
      if (as_json) {
        nlohmann::json j;
        j["file"] = inspect_path;
        j["attributes"] = info.attributes;
        j["integrity_checked"] = info.integrity_checked;
        j["model_type"] = info.model_type;
        j["parameters"] = info.parameters;
        j["stored_bytes"] = info.stored_bytes;
        j["file_bytes"] = info.file_bytes;
        j["compression_vs_float32"] = ratio;
        j["tensors"] = nlohmann::json::array();
        for (const auto& t : info.tensors)
          j["tensors"].push_back({{"path", t.path},
                                  {"dtype", t.dtype},
                                  {"shape", t.shape},
                                  {"bytes", t.bytes},
                                  {"logical_bytes", t.logical_bytes},
                                  {"scheme", t.scheme},
                                  {"aliases", t.aliases}});
        if (!info.optimizer.empty()) {
          j["optimizer"] = info.optimizer;
          j["optimizer_states"] = nlohmann::json::array();
          for (const auto& o : info.optimizer_states) {
            nlohmann::json tj = nlohmann::json::array();
            for (const auto& t : o.tensors)
              tj.push_back({{"name", t.path},
                            {"dtype", t.dtype},
                            {"shape", t.shape},
                            {"bytes", t.logical_bytes},
                            {"attributes", t.scheme}});
            j["optimizer_states"].push_back({{"param", o.param},
                                             {"numel", o.numel},
                                             {"step", o.step},
                                             {"bytes", o.bytes},
                                             {"bytes_per_param", o.numel ? double(o.bytes) / double(o.numel) : 0.0},
                                             {"tensors", tj}});
          }
        }
        std::printf("%s\n", j.dump(2).c_str());
      } else {
        std::printf("%s\n", inspect_path.c_str());
        for (const auto& [k, v] : info.attributes) {
          if (k == "config") continue;
          std::printf("  %-16s %s\n", k.c_str(), v.c_str());
        }
        std::printf("  %-16s %s\n", "integrity",
                    info.integrity_checked ? "CRC-32 verified" : "no lowbit integrity header");
        std::printf("  %-16s %s\n", "model",
                    info.model_type.empty()
                        ? "(no module types: rebuilt from the run config)"
                        : (info.model_type + " (module tree stored: rebuilt from the file)").c_str());
        // columns as wide as their widest entry (float4_e2m1fn_x2, long paths)
        int wp = 48, wd = 9, ws = 16;
        for (const auto& t : info.tensors) {
          wp = std::max(wp, static_cast<int>(t.path.size()));
          wd = std::max(wd, static_cast<int>(t.dtype.size()));
          ws = std::max(ws, static_cast<int>(lowbit::shape_str(t.shape).size()));
        }
        std::printf("\n  %-*s %-*s %-*s %12s  %s\n", wp, "tensor", wd, "dtype", ws, "shape", "bytes", "scheme");
        for (const auto& t : info.tensors)
          std::printf("  %-*s %-*s %-*s %12llu  %s\n", wp, t.path.c_str(), wd, t.dtype.c_str(), ws,
                      lowbit::shape_str(t.shape).c_str(), static_cast<unsigned long long>(t.bytes),
                      t.scheme.empty() ? "-" : t.scheme.c_str());
        std::printf("\n  %lld parameters, %llu bytes stored (%llu in the file), %.2fx vs float32\n",
                    static_cast<long long>(info.parameters), static_cast<unsigned long long>(info.stored_bytes),
                    static_cast<unsigned long long>(info.file_bytes), ratio);
        if (!info.optimizer.empty()) {
          int wq = 32;
          for (const auto& o : info.optimizer_states) wq = std::max(wq, static_cast<int>(o.param.size()));
          std::printf("\n  optimizer %s: state per parameter\n  %-*s %10s %12s %8s  %s\n", info.optimizer.c_str(), wq,
                      "parameter", "elements", "state bytes", "B/param", "state tensors");
          uint64_t total = 0;
          int64_t elems = 0;
          for (const auto& o : info.optimizer_states) {
            std::string ts;
            for (const auto& t : o.tensors)
              ts += (ts.empty() ? "" : "; ") + t.path + " " + t.dtype + " " + lowbit::shape_str(t.shape) +
                    (t.scheme.empty() ? "" : " (" + t.scheme + ")");
            std::printf("  %-*s %10lld %12llu %8s  %s\n", wq, o.param.c_str(), static_cast<long long>(o.numel),
                        static_cast<unsigned long long>(o.bytes),
                        o.numel ? fmt::format("{:.3f}", double(o.bytes) / double(o.numel)).c_str() : "-", ts.c_str());
            total += o.bytes;
            elems += o.numel;
          }
          std::printf("  %-*s %10lld %12llu %8s\n", wq, "total", static_cast<long long>(elems),
                      static_cast<unsigned long long>(total),
                      elems ? fmt::format("{:.3f}", double(total) / double(elems)).c_str() : "-");
        }
        if (info.attributes.count("config") && !info.attributes.at("config").empty())
          std::printf("\n  run config:\n%s\n", info.attributes.at("config").c_str());
      }
    }
  } catch (const std::exception& e) {
    // under mpirun the other ranks may be waiting in a collective: end the whole job now
    if (lowbit::dist::launched_by_mpi() && lowbit::dist::Comm::world().size() > 1)
      lowbit::dist::Comm::world().abort(std::string("error: ") + e.what(), 1);
    std::fprintf(stderr, "lowbit: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
