// The lowbit command line.
//   lowbit train CONFIG.toml [--section.key value ...] [--print-config]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "lowbit/cli/config.h"
#include "lowbit/cli/train.h"

int main(int argc, char** argv) {
  CLI::App app{"lowbit: low-precision neural-network training"};
  app.require_subcommand(1);
  auto* train = app.add_subcommand("train", "train a model described by a TOML run config; any key can be overridden with --section.key value");
  std::string config_path;
  bool print_config = false, list_keys = false;
  train->add_option("config", config_path, "run config (TOML), e.g. configs/fmnist_mlp.toml");
  train->add_flag("--print-config", print_config, "print the resolved config and exit");
  train->add_flag("--list-keys", list_keys, "list every config key with its default and meaning, then exit");
  train->allow_extras();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (train->parsed()) {
      if (list_keys) {
        for (const auto& s : lowbit::cli::config_schema()) std::printf("%-28s %s\n", s.key.c_str(), s.help.c_str());
        return 0;
      }
      if (config_path.empty()) {
        std::fprintf(stderr, "lowbit train: missing CONFIG.toml (try configs/fmnist_mlp.toml)\n");
        return 2;
      }
      auto cfg = lowbit::cli::RunConfig::from_file(config_path);
      cfg.apply_overrides(train->remaining());
      if (print_config) {
        std::printf("%s", cfg.to_toml().c_str());
        return 0;
      }
      lowbit::cli::train(cfg, isatty(STDOUT_FILENO) != 0);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lowbit: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
