// Model files: rebuilding the model a file describes, lowbit eval and lowbit convert.
#include "lowbit/cli/train.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

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
#include "lowbit/train/trainer.h"

#include "internal.h"

namespace lowbit::cli {

namespace detail {
// The config a file stores, validated like a run's (a file's config is as untrusted as the file).
RunConfig stored_config(const io::FileInfo& info, const std::string& path) {
  auto it = info.attributes.find("config");
  LOWBIT_CHECK(it != info.attributes.end() && !it->second.empty(),
               "{}: the file stores no run config, so its model cannot be rebuilt (write one with export_model's "
               "config argument or scripts/torch_to_lowbit.py --config)",
               path);
  RunConfig cfg = RunConfig::from_string(it->second, path + " (config attribute)");
  try {
    validate_config(cfg);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: the stored run config is invalid: {}", path, e.what()));
  }
  return cfg;
}
}  // namespace detail

using namespace detail;

namespace {
// A model file: its inspect report and its validated run config, read once.
struct ModelFile {
  io::FileInfo info;
  RunConfig cfg;
};
// A file that describes its own modules (module_type on every group) needs no config for its
// model; without one its data settings are the defaults (Fashion-MNIST).
ModelFile describe_file(const std::string& path) {
  io::FileInfo info = io::inspect(path);
  const auto it = info.attributes.find("config");
  const bool has_config = it != info.attributes.end() && !it->second.empty();
  RunConfig cfg = has_config || info.model_type.empty() ? stored_config(info, path)
                                                        : RunConfig::from_string("", path + " (defaults)");
  return {std::move(info), std::move(cfg)};
}

bool holds_quantized_tensors(const io::FileInfo& info) {
  for (const auto& t : info.tensors)
    if (!t.scheme.empty()) return true;
  return false;
}

// Rebuilds the module tree a Fashion-MNIST MLP file was written from (callers check the dataset;
// validate_config ties it to model.type = "mlp"): from the file's own module descriptions
// (io::load_model) when it has them; otherwise, for older files, the model of its config,
// quantized by the config's recipe when the file holds quantized tensors. The config's model must fit in what the
// file holds before anything is built (a small file cannot make lowbit allocate a huge model).
std::shared_ptr<nn::Module> model_for_file(const std::string& path, const ModelFile& file) {
  if (!file.info.model_type.empty()) return io::load_model(path);  // the file describes its modules
  const RunConfig& cfg = file.cfg;
  const int64_t need = min_parameters(cfg);
  LOWBIT_CHECK(
      need <= file.info.parameters,
      "{}: the stored config describes a model of at least {} parameters but the file holds {}; refusing to build it",
      path, need, file.info.parameters);
  auto model = build_model(cfg);
  if (holds_quantized_tensors(file.info)) {
    LOWBIT_CHECK(cfg.get_string("quantize.recipe") != "none",
                 "{}: the file holds quantized tensors but its config has no quantize.recipe", path);
    const auto q = build_quantize_config(cfg);
    model = qat::quantize_(model, *q, qat::compatible_linears(*q));
  }
  io::load_checkpoint(path, *model);
  return model;
}
}  // namespace

std::pair<double, double> evaluate_file(const std::string& path, const std::string& data_path) {
  const ModelFile file = describe_file(path);
  LOWBIT_CHECK(file.cfg.get_string("data.dataset") == "fashion_mnist",
               "{}: lowbit eval evaluates Fashion-MNIST classifiers; this file's model is trained on '{}'", path,
               file.cfg.get_string("data.dataset"));
  auto model = model_for_file(path, file);
  auto test_set = data::FashionMNIST::load(data_path.empty() ? file.cfg.get_string("data.path") : data_path, false);
  const train::Metrics m = train::evaluate(*model, train::classification_task(test_set, 1000));
  return {m[0].second, m[1].second};  // test_loss, test_accuracy
}

ConvertReport convert_file(const std::string& in, const std::string& out, const std::string& recipe,
                           const std::string& weight_dtype, int64_t group_size) {
  const auto q =
      qat::recipe_config(recipe, weight_dtype, group_size);  // an unknown recipe fails before the input is read
  const ModelFile file = describe_file(in);
  RunConfig cfg = file.cfg;
  LOWBIT_CHECK(cfg.get_string("data.dataset") == "fashion_mnist",
               "{}: lowbit convert quantizes Fashion-MNIST MLP files; this file's model ({}) is trained on '{}'; "
               "nothing written",
               in, cfg.get_string("model.type"), cfg.get_string("data.dataset"));
  LOWBIT_CHECK(!holds_quantized_tensors(file.info), "{}: the model is already quantized", in);
  auto model = model_for_file(in, file);
  ConvertReport report;
  report.dataset = cfg.get_string("data.dataset");
  report.float_bytes = model_bytes(*model);
  const auto compatible = qat::compatible_linears(*q);
  auto filter = [&](const nn::Module& m, const std::string& fqn) {
    const bool ok = compatible(m, fqn);
    if (ok) report.quantized.push_back(fqn);
    return ok;
  };
  model = qat::quantize_(model, *q, filter);
  LOWBIT_CHECK(!report.quantized.empty(), "{}: recipe '{}' can quantize none of the model's layers; nothing written",
               in, recipe);
  report.converted_bytes = model_bytes(*model);
  cfg.set("quantize.recipe", recipe);
  cfg.set("quantize.mode", "ptq");
  cfg.set("quantize.weight_dtype", weight_dtype);
  cfg.set("quantize.group_size", std::to_string(group_size));
  io::export_model(out, *model, cfg.to_toml());
  return report;
}

}  // namespace lowbit::cli
