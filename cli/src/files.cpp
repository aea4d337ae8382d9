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

#include "internal.h"

namespace lowbit::cli {

namespace detail {
// Mean loss and accuracy of a classifier over a dataset, in batches, without gradients.
std::pair<double, double> evaluate(nn::Module& model, const data::TensorDataset& ds, int64_t batch) {
  NoGradGuard ng;
  model.eval();
  double loss = 0;
  int64_t correct = 0;
  const int64_t n = ds.size();
  for (int64_t s = 0; s < n; s += batch) {
    const int64_t len = std::min(batch, n - s);
    Tensor x = narrow(ds.data(), 0, s, len), y = narrow(ds.target(), 0, s, len);
    Tensor logits = model.forward(x);
    loss += cross_entropy(logits, y, -100, 0.0, Reduction::Sum).item<double>();
    Tensor pred = argmax(logits, 1);
    for (int64_t i = 0; i < len; ++i) correct += pred.data_ptr<int64_t>()[i] == y.data_ptr<int64_t>()[i];
  }
  model.train();
  return {loss / static_cast<double>(n), static_cast<double>(correct) / static_cast<double>(n)};
}

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
// GPT files: the vocabulary is the row count of the token embedding (with tied weights inspect
// lists the shared dataset once, under lm_head).
int64_t stored_vocab(const io::FileInfo& info) {
  for (const auto& t : info.tensors)
    if ((t.path == "/model/wte/weight" || t.path == "/model/lm_head/weight") && t.shape.size() == 2) return t.shape[0];
  return 0;
}

// Rebuilds the module tree a file was written from: the model of its config, quantized by the
// config's recipe when the file holds quantized tensors. The config's model must fit in what the
// file holds before anything is built (a small file cannot make lowbit allocate a huge model).
std::shared_ptr<nn::Module> model_for_file(const std::string& path, RunConfig* cfg_out) {
  const auto info = io::inspect(path);
  RunConfig cfg = stored_config(info, path);
  const int64_t vocab = cfg.get_string("model.type") == "gpt" ? stored_vocab(info) : 0;
  LOWBIT_CHECK(cfg.get_string("model.type") != "gpt" || vocab > 0,
               "{}: a GPT file must hold /model/wte/weight or /model/lm_head/weight", path);
  const int64_t need = min_parameters(cfg, vocab > 0 ? vocab : 256);
  LOWBIT_CHECK(
      need <= info.parameters,
      "{}: the stored config describes a model of at least {} parameters but the file holds {}; refusing to build it",
      path, need, info.parameters);
  auto model = build_model(cfg, vocab);
  bool quantized = false;
  for (const auto& t : info.tensors)
    quantized |= t.path.size() >= 6 && t.path.compare(t.path.size() - 6, 6, "/qdata") == 0;
  if (quantized) {
    LOWBIT_CHECK(cfg.get_string("quantize.recipe") != "none",
                 "{}: the file holds quantized tensors but its config has no quantize.recipe", path);
    const auto q = qat::recipe_config(cfg.get_string("quantize.recipe"), cfg.get_string("quantize.weight_dtype"),
                                      cfg.get_int("quantize.group_size"));
    model = qat::quantize_(model, *q, qat::compatible_linears(*q));
  }
  io::load_checkpoint(path, *model);
  if (cfg_out) *cfg_out = cfg;
  return model;
}
}  // namespace

std::pair<double, double> evaluate_file(const std::string& path, const std::string& data_path) {
  RunConfig cfg;
  auto model = model_for_file(path, &cfg);
  LOWBIT_CHECK(cfg.get_string("data.dataset") == "fashion_mnist",
               "{}: lowbit eval evaluates Fashion-MNIST classifiers; this file's model is trained on '{}'", path,
               cfg.get_string("data.dataset"));
  auto test_set = data::FashionMNIST::load(data_path.empty() ? cfg.get_string("data.path") : data_path, false);
  return evaluate(*model, *test_set, 1000);
}

ConvertReport convert_file(const std::string& in, const std::string& out, const std::string& recipe,
                           const std::string& weight_dtype, int64_t group_size) {
  RunConfig cfg;
  const auto q =
      qat::recipe_config(recipe, weight_dtype, group_size);  // an unknown recipe fails before the input is read
  {
    const RunConfig stored = stored_config(io::inspect(in), in);
    LOWBIT_CHECK(stored.get_string("data.dataset") == "fashion_mnist",
                 "{}: lowbit convert quantizes Fashion-MNIST MLP files; this file's model ({}) is trained on '{}'; "
                 "nothing written",
                 in, stored.get_string("model.type"), stored.get_string("data.dataset"));
  }
  auto model = model_for_file(in, &cfg);
  for (const auto& [name, t] : model->state_dict())
    LOWBIT_CHECK(name.find("qdata") == std::string::npos, "{}: the model is already quantized", in);
  ConvertReport report;
  report.dataset = cfg.get_string("data.dataset");
  report.float_bytes = model_bytes(*model);
  const auto compatible = qat::compatible_linears(*q, &report.kept_in_float);
  auto filter = [&](const nn::Module& m, const std::string& fqn) {
    const bool ok = compatible(m, fqn);
    if (ok) report.quantized.push_back(fqn);
    return ok;
  };
  model = qat::quantize_(model, *q, filter);
  if (report.quantized.empty()) {
    std::string why;
    for (const auto& k : report.kept_in_float) why += (why.empty() ? " (" : "; ") + k;
    throw Error(fmt::format("{}: recipe '{}' can quantize none of the model's linear layers{}; nothing written", in,
                            recipe, why.empty() ? why : why + ")"));
  }
  report.converted_bytes = model_bytes(*model);
  cfg.set("quantize.recipe", recipe);
  cfg.set("quantize.mode", "ptq");
  cfg.set("quantize.weight_dtype", weight_dtype);
  cfg.set("quantize.group_size", std::to_string(group_size));
  io::export_model(out, *model, cfg.to_toml());
  return report;
}

}  // namespace lowbit::cli
