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

namespace lowbit::cli {

namespace {
using clk = std::chrono::steady_clock;

std::shared_ptr<nn::Module> activation(const std::string& name) {
  if (name == "relu") return std::make_shared<nn::ReLU>();
  if (name == "gelu") return std::make_shared<nn::GELU>();
  if (name == "silu") return std::make_shared<nn::SiLU>();
  if (name == "tanh") return std::make_shared<nn::Tanh>();
  throw Error(fmt::format("model.activation: unknown activation '{}' (relu, gelu, silu, tanh)", name));
}

std::string fmt_duration(double s) {
  const int64_t t = static_cast<int64_t>(std::max(0.0, s));
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                   : fmt::format("{}:{:02}", t / 60, t % 60);
}

// One status line: a bar on terminals, plain log lines (every log_interval steps) otherwise.
class Progress {
 public:
  Progress(bool tty, int64_t log_interval) : tty_(tty), interval_(std::max<int64_t>(1, log_interval)) {}
  void update(const std::string& prefix, int64_t done, int64_t total, double loss, double samples_per_s, double eta_s) {
    if (tty_) {
      const int width = 24;
      const int filled = total > 0 ? static_cast<int>(width * done / total) : 0;
      std::printf("\r%s [%s%s] %lld/%lld loss %.4f | %.0f samples/s | ETA %s   ", prefix.c_str(),
                  std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                  static_cast<long long>(done), static_cast<long long>(total), loss, samples_per_s,
                  fmt_duration(eta_s).c_str());
      std::fflush(stdout);
    } else if (done % interval_ == 0 || done == total) {
      std::printf("%s step %lld/%lld loss %.4f samples/s %.0f eta %s\n", prefix.c_str(), static_cast<long long>(done),
                  static_cast<long long>(total), loss, samples_per_s, fmt_duration(eta_s).c_str());
      std::fflush(stdout);
    }
  }
  void line(const std::string& text) {
    if (tty_) std::printf("\r\033[K");
    std::printf("%s\n", text.c_str());
    std::fflush(stdout);
  }

 private:
  bool tty_;
  int64_t interval_;
};

// metrics.jsonl: one JSON object per line, each append checked (a full disk is an error).
class Metrics {
 public:
  explicit Metrics(std::string path) : path_(std::move(path)) {}
  void write(const nlohmann::json& j) { io::append_file(path_, j.dump() + "\n"); }

 private:
  std::string path_;
};

std::string checkpoint_dir(const RunConfig& cfg) {
  return cfg.get_string("checkpoint.dir").empty() ? cfg.get_string("training.run_dir") + "/checkpoints"
                                                  : cfg.get_string("checkpoint.dir");
}

// Periodic checkpoints: <dir>/step_00001234.h5, keeping the newest keep_last.
class Checkpointer {
 public:
  explicit Checkpointer(const RunConfig& cfg)
      : enabled_(cfg.get_bool("checkpoint.enabled")),
        interval_(cfg.get_int("checkpoint.interval")),
        keep_(std::max<int64_t>(1, cfg.get_int("checkpoint.keep_last"))),
        dir_(checkpoint_dir(cfg)),
        config_(cfg.to_toml()),
        sched_name_(cfg.get_string("lr_scheduler.name")) {}
  bool due(int64_t step) const { return enabled_ && interval_ > 0 && step % interval_ == 0; }
  std::string save(int64_t step, const nn::Module& m, const optim::Optimizer& o, const optim::LRScheduler* s,
                   const data::DataLoader& l) {
    if (!enabled_) return "";
    std::filesystem::create_directories(dir_);
    const std::string path = fmt::format("{}/step_{:08}.h5", dir_, step);
    io::TrainingState st;
    st.step = step;
    st.config_toml = config_;
    st.scheduler_name = sched_name_;
    io::save_checkpoint(path, m, &o, s, &l, st);
    std::vector<std::string> files;
    for (auto& e : std::filesystem::directory_iterator(dir_)) {
      const auto n = e.path().filename().string();
      if (n.rfind("step_", 0) == 0 && e.path().extension() == ".h5") files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    for (size_t i = 0; i + static_cast<size_t>(keep_) < files.size(); ++i) std::filesystem::remove(files[i]);
    return path;
  }

 private:
  bool enabled_;
  int64_t interval_, keep_;
  std::string dir_, config_, sched_name_;
};

double step_once(nn::Module& model, optim::Optimizer& opt, optim::LRScheduler* sched, const Tensor& x, const Tensor& y,
                 double clip, bool lm) {
  Tensor logits = model.forward(x);
  Tensor loss = lm ? cross_entropy(logits.reshape({-1, logits.size(-1)}), y.reshape({-1})) : cross_entropy(logits, y);
  opt.zero_grad();
  loss.backward();
  if (clip > 0) optim::clip_grad_norm_(model.parameters(), clip);
  opt.step();
  if (sched) sched->step();
  return loss.item<double>();
}

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
}  // namespace

namespace {
void check_finite_positive(const RunConfig& cfg, const std::string& key, bool allow_zero = false) {
  const double v = cfg.get_float(key);
  LOWBIT_CHECK(std::isfinite(v) && (allow_zero ? v >= 0 : v > 0), "{} must be a finite number {} 0, got {}", key,
               allow_zero ? ">=" : ">", v);
}
void check_int(const RunConfig& cfg, const std::string& key, int64_t lo, const char* what) {
  LOWBIT_CHECK(cfg.get_int(key) >= lo, "{} must be {}, got {}", key, what, cfg.get_int(key));
}
void check_one_of(const RunConfig& cfg, const std::string& key, std::initializer_list<const char*> names) {
  const std::string& v = cfg.get_string(key);
  std::string list;
  for (const char* n : names) {
    if (v == n) return;
    list += (list.empty() ? "" : ", ") + std::string(n);
  }
  throw Error(fmt::format("{}: unknown value '{}' (one of: {})", key, v, list));
}
// in_features of every Linear the config's model has, with its name
std::vector<std::pair<std::string, int64_t>> linear_inputs(const RunConfig& cfg) {
  std::vector<std::pair<std::string, int64_t>> out;
  if (cfg.get_string("model.type") == "mlp") {
    int64_t in = cfg.get_int("model.input_dim"), idx = 0;
    const int64_t per_layer = cfg.get_float("model.dropout") > 0 ? 3 : 2;
    for (int64_t h : cfg.get_int_list("model.hidden")) {
      out.emplace_back(std::to_string(idx), in);
      idx += per_layer;
      in = h;
    }
    out.emplace_back(std::to_string(idx), in);
  }
  return out;
}
}  // namespace

void validate_config(const RunConfig& cfg) {
  // model
  check_one_of(cfg, "model.type", {"mlp", "gpt"});
  const double dropout = cfg.get_float("model.dropout");
  LOWBIT_CHECK(std::isfinite(dropout) && dropout >= 0 && dropout < 1, "model.dropout must be in [0, 1), got {}",
               dropout);
  if (cfg.get_string("model.type") == "mlp") {
    check_one_of(cfg, "model.activation", {"relu", "gelu", "silu", "tanh"});
    check_int(cfg, "model.input_dim", 1, "positive");
    check_int(cfg, "model.num_classes", 1, "positive");
    LOWBIT_CHECK(cfg.get_int_list("model.hidden").size() <= 64, "model.hidden: at most 64 hidden layers, got {}",
                 cfg.get_int_list("model.hidden").size());
    for (int64_t h : cfg.get_int_list("model.hidden"))
      LOWBIT_CHECK(h > 0, "model.hidden: layer widths must be positive, got {}", h);
  } else {
    for (const char* k : {"model.context", "model.d_model", "model.n_heads", "model.n_layers"})
      check_int(cfg, k, 1, "positive");
    check_int(cfg, "model.d_ff", 0, ">= 0 (0 = 4 * d_model)");
    LOWBIT_CHECK(cfg.get_int("model.d_model") % cfg.get_int("model.n_heads") == 0,
                 "model.d_model ({}) must be divisible by model.n_heads ({})", cfg.get_int("model.d_model"),
                 cfg.get_int("model.n_heads"));
  }
  // a model of more than 2^32 parameters (16 GiB of float32 weights) is not a run this CPU trains
  const int64_t params = min_parameters(cfg);
  LOWBIT_CHECK(params <= (int64_t{1} << 32),
               "the model described by [model] has at least {} parameters; lowbit refuses models above 2^32", params);
  // data
  check_one_of(cfg, "data.dataset", {"fashion_mnist", "chars"});
  check_int(cfg, "data.batch_size", 1, "positive");
  const double vf = cfg.get_float("data.val_fraction");
  LOWBIT_CHECK(vf > 0 && vf < 1, "data.val_fraction must be in (0, 1), got {}", vf);
  if (cfg.get_string("data.dataset") == "chars") {
    LOWBIT_CHECK(cfg.get_string("model.type") == "gpt", "data.dataset 'chars' needs model.type = \"gpt\", got \"{}\"",
                 cfg.get_string("model.type"));
    LOWBIT_CHECK(
        cfg.get_int("training.max_steps") > 0,
        "training.max_steps must be positive for data.dataset = 'chars' (an epoch covers every window of the corpus)");
    LOWBIT_CHECK(cfg.get_string("quantize.recipe") == "none",
                 "quantize.recipe '{}': quantization runs only for data.dataset = 'fashion_mnist'",
                 cfg.get_string("quantize.recipe"));
  } else {
    LOWBIT_CHECK(cfg.get_string("model.type") == "mlp",
                 "data.dataset 'fashion_mnist' needs model.type = \"mlp\", got \"{}\"", cfg.get_string("model.type"));
    LOWBIT_CHECK(
        cfg.get_int("model.input_dim") == 784 && cfg.get_int("model.num_classes") == 10,
        "data.dataset 'fashion_mnist' has 784 inputs and 10 classes; model.input_dim is {} and model.num_classes {}",
        cfg.get_int("model.input_dim"), cfg.get_int("model.num_classes"));
  }
  // optimizer and schedule
  check_one_of(cfg, "optimizer.name", {"adamw", "adam", "sgd"});
  check_finite_positive(cfg, "optimizer.lr");
  check_finite_positive(cfg, "optimizer.weight_decay", true);
  check_finite_positive(cfg, "optimizer.eps");
  check_finite_positive(cfg, "optimizer.momentum", true);
  for (const char* k : {"optimizer.beta1", "optimizer.beta2"}) {
    const double b = cfg.get_float(k);
    LOWBIT_CHECK(b >= 0 && b < 1, "{} must be in [0, 1), got {}", k, b);
  }
  check_one_of(cfg, "lr_scheduler.name", {"none", "step", "cosine", "warmup_cosine", "onecycle"});
  check_int(cfg, "lr_scheduler.warmup_steps", 0, ">= 0");
  check_int(cfg, "lr_scheduler.step_size", 1, "positive");
  check_finite_positive(cfg, "lr_scheduler.min_lr", true);
  check_finite_positive(cfg, "lr_scheduler.gamma");
  check_finite_positive(cfg, "lr_scheduler.max_lr");
  if (cfg.get_string("lr_scheduler.name") == "warmup_cosine" && cfg.get_int("training.max_steps") > 0)
    LOWBIT_CHECK(cfg.get_int("lr_scheduler.warmup_steps") < cfg.get_int("training.max_steps"),
                 "lr_scheduler.warmup_steps ({}) must be below training.max_steps ({})",
                 cfg.get_int("lr_scheduler.warmup_steps"), cfg.get_int("training.max_steps"));
  // training
  check_int(cfg, "training.epochs", 1, "positive");
  check_int(cfg, "training.max_steps", 0, ">= 0 (0 = epochs decide)");
  check_int(cfg, "training.seed", 0, ">= 0");
  check_int(cfg, "training.threads", 0, ">= 0 (0 = all cores)");
  LOWBIT_CHECK(cfg.get_int("training.threads") <= 1024, "training.threads must be at most 1024, got {}",
               cfg.get_int("training.threads"));
  check_finite_positive(cfg, "training.grad_clip", true);
  check_int(cfg, "training.log_interval", 1, "positive");
  check_int(cfg, "training.eval_interval", 0, ">= 0");
  check_int(cfg, "training.eval_batches", 1, "positive");
  check_int(cfg, "training.sample_tokens", 0, ">= 0");
  check_int(cfg, "training.top_k", 0, ">= 0");
  check_finite_positive(cfg, "training.temperature");
  LOWBIT_CHECK(!cfg.get_string("training.run_dir").empty(), "training.run_dir must not be empty");
  check_int(cfg, "checkpoint.interval", 0, ">= 0 (0 = only at the end)");
  check_int(cfg, "checkpoint.keep_last", 1, "at least 1");
  // quantization: the recipe, its dtype and group size, against the layers it will meet
  const std::string recipe = cfg.get_string("quantize.recipe");
  check_one_of(cfg, "quantize.mode", {"qat", "ptq"});
  check_int(cfg, "quantize.qat_epochs", 0, ">= 0");
  check_finite_positive(cfg, "quantize.qat_lr");
  if (recipe != "none") {
    std::shared_ptr<qat::QuantConfigBase> q;
    try {
      q = qat::recipe_config(recipe, cfg.get_string("quantize.weight_dtype"), cfg.get_int("quantize.group_size"));
    } catch (const Error& e) {
      throw Error(fmt::format("[quantize]: {}", e.what()));
    }
    const int64_t g = cfg.get_int("quantize.group_size");
    const bool takes_group = qat::find_recipe(recipe)->takes_group_size;
    if (takes_group && g > 0) {
      std::string shapes;
      bool any = false;
      for (const auto& [name, in] : linear_inputs(cfg)) {
        any |= in % g == 0;
        shapes += fmt::format("{}{}: {}", shapes.empty() ? "" : ", ", name, in);
      }
      LOWBIT_CHECK(any,
                   "quantize.group_size {} divides the in_features of no linear layer ({}), so recipe '{}' would "
                   "quantize nothing",
                   g, shapes, recipe);
    }
  }
}

int64_t min_parameters(const RunConfig& cfg, int64_t vocab_size) {
  // saturating arithmetic: a hostile config must not overflow the estimate
  constexpr int64_t kCap = int64_t{1} << 62;
  auto mul = [](int64_t a, int64_t b) -> int64_t {
    if (a <= 0 || b <= 0) return 0;
    return a > kCap / b ? kCap : a * b;
  };
  auto add = [](int64_t a, int64_t b) -> int64_t { return a > kCap - b ? kCap : a + b; };
  int64_t n = 0;
  if (cfg.get_string("model.type") == "mlp") {
    int64_t in = cfg.get_int("model.input_dim");
    for (int64_t h : cfg.get_int_list("model.hidden")) {
      n = add(n, mul(in, h));
      in = h;
    }
    n = add(n, mul(in, cfg.get_int("model.num_classes")));
  } else {
    const int64_t d = cfg.get_int("model.d_model");
    const int64_t ff = cfg.get_int("model.d_ff") > 0 ? cfg.get_int("model.d_ff") : mul(4, d);
    const int64_t per_block = add(mul(4, mul(d, d)), mul(2, mul(d, ff)));  // qkv + proj + the two MLP matrices
    n = add(mul(vocab_size, d), mul(cfg.get_int("model.context"), d));
    n = add(n, mul(cfg.get_int("model.n_layers"), per_block));
  }
  return n;
}

std::shared_ptr<nn::Module> build_model(const RunConfig& cfg, int64_t vocab_size) {
  const std::string type = cfg.get_string("model.type");
  if (type == "mlp") {
    auto seq = std::make_shared<nn::Sequential>();
    int64_t in = cfg.get_int("model.input_dim");
    for (int64_t h : cfg.get_int_list("model.hidden")) {
      LOWBIT_CHECK(h > 0, "model.hidden: layer widths must be positive, got {}", h);
      seq->push_back(std::make_shared<nn::Linear>(in, h));
      seq->push_back(activation(cfg.get_string("model.activation")));
      if (cfg.get_float("model.dropout") > 0)
        seq->push_back(std::make_shared<nn::Dropout>(cfg.get_float("model.dropout")));
      in = h;
    }
    seq->push_back(std::make_shared<nn::Linear>(in, cfg.get_int("model.num_classes")));
    return seq;
  }
  if (type == "gpt") {
    nn::GPTConfig g;
    g.vocab_size = vocab_size > 0 ? vocab_size : 256;
    g.context = cfg.get_int("model.context");
    g.d_model = cfg.get_int("model.d_model");
    g.n_heads = cfg.get_int("model.n_heads");
    g.n_layers = cfg.get_int("model.n_layers");
    g.d_ff = cfg.get_int("model.d_ff");
    g.dropout = cfg.get_float("model.dropout");
    g.tie_weights = cfg.get_bool("model.tie_weights");
    return std::make_shared<nn::GPT>(g);
  }
  throw Error(fmt::format("model.type: unknown model '{}' (mlp, gpt)", type));
}

std::unique_ptr<optim::Optimizer> build_optimizer(const RunConfig& cfg, const std::vector<Tensor>& params) {
  const std::string name = cfg.get_string("optimizer.name");
  if (name == "adamw" || name == "adam") {
    optim::AdamOptions o;
    o.lr = cfg.get_float("optimizer.lr");
    o.beta1 = cfg.get_float("optimizer.beta1");
    o.beta2 = cfg.get_float("optimizer.beta2");
    o.eps = cfg.get_float("optimizer.eps");
    o.weight_decay = cfg.get_float("optimizer.weight_decay");
    o.amsgrad = cfg.get_bool("optimizer.amsgrad");
    if (name == "adamw") return std::make_unique<optim::AdamW>(params, o);
    return std::make_unique<optim::Adam>(params, o);
  }
  if (name == "sgd") {
    optim::SGDOptions o;
    o.lr = cfg.get_float("optimizer.lr");
    o.momentum = cfg.get_float("optimizer.momentum");
    o.nesterov = cfg.get_bool("optimizer.nesterov");
    o.weight_decay = cfg.get_float("optimizer.weight_decay");
    return std::make_unique<optim::SGD>(params, o);
  }
  throw Error(fmt::format("optimizer.name: unknown optimizer '{}' (adamw, adam, sgd)", name));
}

std::unique_ptr<optim::LRScheduler> build_scheduler(const RunConfig& cfg, optim::Optimizer& opt, int64_t total) {
  const std::string name = cfg.get_string("lr_scheduler.name");
  if (name == "none") return nullptr;
  if (name == "step")
    return std::make_unique<optim::StepLR>(opt, cfg.get_int("lr_scheduler.step_size"),
                                           cfg.get_float("lr_scheduler.gamma"));
  if (name == "cosine")
    return std::make_unique<optim::CosineAnnealingLR>(opt, total, cfg.get_float("lr_scheduler.min_lr"));
  if (name == "warmup_cosine")
    return std::make_unique<optim::WarmupCosineLR>(opt, cfg.get_int("lr_scheduler.warmup_steps"), total,
                                                   cfg.get_float("lr_scheduler.min_lr"));
  if (name == "onecycle") return std::make_unique<optim::OneCycleLR>(opt, cfg.get_float("lr_scheduler.max_lr"), total);
  throw Error(
      fmt::format("lr_scheduler.name: unknown scheduler '{}' (none, step, cosine, warmup_cosine, onecycle)", name));
}

int64_t model_bytes(const nn::Module& m) {
  int64_t b = 0;
  for (const auto& [_, t] : m.state_dict()) b += static_cast<int64_t>(t.nbytes());
  return b;
}

namespace {
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

std::vector<std::string> resume_config_changes(const RunConfig& stored, const RunConfig& now) {
  // keys that only affect logging, evaluation, sampling, output locations or thread count (the
  // kernels are thread-count independent) may change on resume
  static const std::set<std::string> free_keys = {
      "training.log_interval", "training.run_dir",       "training.threads",     "training.eval_interval",
      "training.eval_batches", "training.sample_tokens", "training.temperature", "training.top_k",
      "training.export",       "checkpoint.interval",    "checkpoint.keep_last", "checkpoint.dir",
      "checkpoint.enabled"};
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

// One run per run directory: a new run refuses a directory that holds another run's outputs
// (unless --overwrite deletes them); a resume refuses outputs newer than its checkpoint (they
// belong to the trajectory being replaced) and drops later records from metrics.jsonl.
void prepare_run_dir(const RunConfig& cfg, const std::string& resume, int64_t resume_step, const RunOptions& ro,
                     std::vector<std::string>& notes) {
  namespace fs = std::filesystem;
  const std::string run_dir = cfg.get_string("training.run_dir");
  const std::string ckpt_dir = checkpoint_dir(cfg);
  std::error_code ec;
  const fs::path resume_path = resume.empty() ? fs::path() : fs::weakly_canonical(resume, ec);
  std::vector<fs::path> conflicting;
  if (resume.empty()) {
    for (const char* f : {"config.toml", "metrics.jsonl", "model.h5"})
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
  const std::string metrics = run_dir + "/metrics.jsonl";
  if (!resume.empty() && fs::exists(metrics)) {  // keep the records up to the resumed step
    std::ifstream in(metrics);
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
      io::write_file_atomic(metrics, kept);
      notes.push_back(fmt::format("metrics.jsonl: dropped {} record(s) after step {}", dropped, resume_step));
    }
  }
}
}  // namespace

TrainResult train(const RunConfig& cfg, bool tty, const std::string& resume, const RunOptions& ro) {
  // ---- everything that can be checked before work ----
  validate_config(cfg);
  std::vector<std::string> notes, allowed_changes;
  int64_t resume_step = 0;
  if (!resume.empty()) {
    const auto info = io::inspect(resume);
    LOWBIT_CHECK(info.attributes.count("kind") && info.attributes.at("kind") == "training",
                 "--resume {}: not a training checkpoint (kind '{}')", resume,
                 info.attributes.count("kind") ? info.attributes.at("kind") : "");
    const RunConfig stored = stored_config(info, resume);
    allowed_changes = resume_config_changes(stored, cfg);
    if (!allowed_changes.empty() && !ro.resume_allow_changes) {
      std::string msg = fmt::format(
          "--resume {}: the run config differs from the checkpoint's in keys that change training:", resume);
      for (const auto& c : allowed_changes) msg += "\n  " + c;
      throw Error(msg + "\n(pass --resume-allow-changes to continue with the new values anyway)");
    }
    const auto st = info.attributes.find("step");
    LOWBIT_CHECK(st != info.attributes.end() && !st->second.empty() &&
                     st->second.find_first_not_of("0123456789") == std::string::npos && st->second.size() < 19,
                 "{}: the stored step '{}' is not a non-negative integer (corrupt file)", resume,
                 st == info.attributes.end() ? "" : st->second);
    resume_step = std::stoll(st->second);
  }
  prepare_run_dir(cfg, resume, resume_step, ro, notes);
  if (cfg.get_int("training.threads") > 0) set_num_threads(static_cast<int>(cfg.get_int("training.threads")));
  const uint64_t seed = static_cast<uint64_t>(cfg.get_int("training.seed"));
  manual_seed(seed);
  const std::string run_dir = cfg.get_string("training.run_dir");
  io::write_file_atomic(run_dir + "/config.toml", cfg.to_toml());
  Metrics metrics(run_dir + "/metrics.jsonl");
  Checkpointer ckpt(cfg);
  Progress progress(tty, cfg.get_int("training.log_interval"));
  for (const auto& n : notes) progress.line(n);
  if (!allowed_changes.empty())
    for (const auto& c : allowed_changes) progress.line("--resume-allow-changes: " + c);
  const double clip = cfg.get_float("training.grad_clip");
  const int64_t batch = cfg.get_int("data.batch_size");
  const std::string dataset = cfg.get_string("data.dataset");
  TrainResult result;
  const auto t0 = clk::now();
  int64_t run_steps = 0;  // steps taken by this process (a resumed run starts at 0)

  if (dataset == "fashion_mnist") {
    auto train_set = data::FashionMNIST::load(cfg.get_string("data.path"), true);
    auto test_set = data::FashionMNIST::load(cfg.get_string("data.path"), false);
    data::DataLoader loader(train_set, {.batch_size = batch,
                                        .shuffle = cfg.get_bool("data.shuffle"),
                                        .seed = seed,
                                        .drop_last = cfg.get_bool("data.drop_last")});
    auto model = build_model(cfg);
    auto opt = build_optimizer(cfg, model->parameters());
    const int64_t epochs = cfg.get_int("training.epochs");
    const int64_t max_steps = cfg.get_int("training.max_steps");
    const int64_t total =
        max_steps > 0 ? std::min(max_steps, epochs * loader.num_batches()) : epochs * loader.num_batches();
    auto sched = build_scheduler(cfg, *opt, total);
    if (!resume.empty()) {
      const auto rep = io::load_checkpoint(resume, *model, opt.get(), sched.get(), &loader);
      result.steps = rep.state->step;
      if (!sched && !allowed_changes.empty())
        opt->set_lr(cfg.get_float("optimizer.lr"));  // the stored rate otherwise wins
      progress.line(fmt::format("resumed from {} at step {} (epoch {}, batch {})", resume, result.steps,
                                loader.epoch() + 1, loader.position()));
    }
    progress.line(fmt::format("training {} parameters on {} examples: {} epochs x {} steps", model->num_parameters(),
                              train_set->size(), epochs, loader.num_batches()));
    for (int64_t epoch = loader.epoch() + 1; epoch <= epochs && result.steps < total; ++epoch) {
      const auto te = clk::now();
      double loss_sum = 0;
      int64_t n = 0, samples = 0;
      while (auto b = loader.next()) {
        const double loss = step_once(*model, *opt, sched.get(), b->data, b->target, clip, false);
        loss_sum += loss;
        ++n;
        ++result.steps;
        ++run_steps;
        samples += b->data.size(0);
        const double el = std::chrono::duration<double>(clk::now() - t0).count();
        const double rate = samples / std::max(1e-9, std::chrono::duration<double>(clk::now() - te).count());
        progress.update(fmt::format("epoch {}/{}", epoch, epochs), loader.position(), loader.num_batches(),
                        loss_sum / n, rate, el / run_steps * static_cast<double>(total - result.steps));
        if (ckpt.due(result.steps)) result.last_checkpoint = ckpt.save(result.steps, *model, *opt, sched.get(), loader);
        if (result.steps >= total) break;
      }
      const auto [test_loss, acc] = evaluate(*model, *test_set, 1000);
      result.final_train_loss = loss_sum / std::max<int64_t>(n, 1);
      result.test_accuracy = acc;
      const double secs = std::chrono::duration<double>(clk::now() - te).count();
      progress.line(fmt::format("epoch {}/{}: train loss {:.4f}, test loss {:.4f}, test accuracy {:.2f}%, {:.1f} s",
                                epoch, epochs, result.final_train_loss, test_loss, 100 * acc, secs));
      metrics.write({{"epoch", epoch},
                     {"step", result.steps},
                     {"train_loss", result.final_train_loss},
                     {"test_loss", test_loss},
                     {"test_accuracy", acc},
                     {"lr", opt->lr()},
                     {"epoch_seconds", secs}});
    }
    if (!ckpt.due(result.steps)) result.last_checkpoint = ckpt.save(result.steps, *model, *opt, sched.get(), loader);
    if (!result.last_checkpoint.empty()) progress.line("checkpoint: " + result.last_checkpoint);

    // ---- quantization: QAT fine-tuning then convert, or PTQ ----
    const std::string recipe = cfg.get_string("quantize.recipe");
    if (recipe != "none") {
      result.float_accuracy = result.test_accuracy;
      const int64_t float_bytes = model_bytes(*model);
      const auto qcfg =
          qat::recipe_config(recipe, cfg.get_string("quantize.weight_dtype"), cfg.get_int("quantize.group_size"));
      const std::string mode = cfg.get_string("quantize.mode");
      std::vector<std::string> skipped;
      const auto filter = qat::compatible_linears(*qcfg, &skipped);
      if (mode == "qat") {
        model = qat::quantize_(model, qat::QATConfig(qcfg, "prepare"), filter);
        for (const auto& s : skipped) progress.line("kept in float32: " + s);
        opt->set_lr(cfg.get_float("quantize.qat_lr"));  // the prepared modules share the trained parameters
        const int64_t qat_epochs = cfg.get_int("quantize.qat_epochs");
        if (loader.position() == loader.num_batches()) loader.next();  // step over the finished epoch's end
        for (int64_t e = 1; e <= qat_epochs; ++e) {
          const auto te = clk::now();
          double loss_sum = 0;
          int64_t n = 0;
          while (auto b = loader.next()) {
            loss_sum += step_once(*model, *opt, nullptr, b->data, b->target, clip, false);
            ++n;
            ++result.steps;
            progress.update(
                fmt::format("qat {}/{}", e, qat_epochs), loader.position(), loader.num_batches(), loss_sum / n,
                static_cast<double>(n * batch) / std::max(1e-9, std::chrono::duration<double>(clk::now() - te).count()),
                0.0);
          }
          const auto [tl, acc] = evaluate(*model, *test_set, 1000);
          result.qat_accuracy = acc;
          progress.line(fmt::format(
              "qat epoch {}/{} ({}): train loss {:.4f}, test loss {:.4f}, fake-quantized test accuracy {:.2f}%", e,
              qat_epochs, recipe, loss_sum / std::max<int64_t>(n, 1), tl, 100 * acc));
          metrics.write({{"phase", "qat"},
                         {"epoch", e},
                         {"step", result.steps},
                         {"train_loss", loss_sum / std::max<int64_t>(n, 1)},
                         {"test_loss", tl},
                         {"test_accuracy", acc}});
        }
        model = qat::quantize_(model, qat::QATConfig(qcfg, "convert"));
      } else {
        model = qat::quantize_(model, *qcfg, filter);
        for (const auto& s : skipped) progress.line("kept in float32: " + s);
      }
      const auto [tl, acc] = evaluate(*model, *test_set, 1000);
      result.test_accuracy = acc;
      progress.line(
          fmt::format("converted ({}, {}): test loss {:.4f}, test accuracy {:.2f}% (float {:.2f}%), model {} bytes "
                      "(float32 {} bytes)",
                      recipe, mode, tl, 100 * acc, 100 * result.float_accuracy, model_bytes(*model), float_bytes));
      metrics.write({{"phase", "converted"},
                     {"recipe", recipe},
                     {"mode", mode},
                     {"test_loss", tl},
                     {"test_accuracy", acc},
                     {"float_accuracy", result.float_accuracy},
                     {"model_bytes", model_bytes(*model)}});
    }
    result.model_bytes = model_bytes(*model);
    if (cfg.get_bool("training.export")) {
      result.export_path = run_dir + "/model.h5";
      io::export_model(result.export_path, *model, cfg.to_toml());
      progress.line("exported: " + result.export_path);
    }
  } else if (dataset == "chars") {
    LOWBIT_CHECK(cfg.get_string("model.type") == "gpt", "data.dataset 'chars' needs model.type = \"gpt\", got \"{}\"",
                 cfg.get_string("model.type"));
    const auto corpus = data::CharCorpus::load(cfg.get_string("data.path"), cfg.get_float("data.val_fraction"));
    LOWBIT_CHECK(std::find(corpus.vocab.begin(), corpus.vocab.end(), '\n') != corpus.vocab.end(),
                 "text corpus '{}' has no newline; the sample after training starts from one",
                 cfg.get_string("data.path").empty() ? data::CharCorpus::default_path() : cfg.get_string("data.path"));
    const int64_t ctx = cfg.get_int("model.context");
    auto train_set = std::make_shared<data::CharDataset>(corpus.train_tokens, ctx);
    auto val_set = std::make_shared<data::CharDataset>(corpus.val_tokens, ctx);
    data::DataLoader loader(train_set, {.batch_size = batch, .shuffle = true, .seed = seed, .drop_last = true});
    auto model = build_model(cfg, static_cast<int64_t>(corpus.vocab.size()));
    auto opt = build_optimizer(cfg, model->parameters());
    const int64_t total = cfg.get_int("training.max_steps");
    auto sched = build_scheduler(cfg, *opt, total);
    if (!resume.empty()) {
      const auto rep = io::load_checkpoint(resume, *model, opt.get(), sched.get(), &loader);
      result.steps = rep.state->step;
      if (!sched && !allowed_changes.empty()) opt->set_lr(cfg.get_float("optimizer.lr"));
      progress.line(fmt::format("resumed from {} at step {}", resume, result.steps));
    }
    const int64_t eval_every =
        cfg.get_int("training.eval_interval") > 0 ? cfg.get_int("training.eval_interval") : total;
    progress.line(fmt::format("training a {}-parameter GPT on {} characters (vocabulary {}), {} steps",
                              model->num_parameters(), corpus.train_tokens.size(), corpus.vocab.size(), total));
    auto val_loss = [&] {
      NoGradGuard ng;
      model->eval();
      Generator g(seed + 1);
      double s = 0;
      const int64_t nb = cfg.get_int("training.eval_batches");
      for (int64_t i = 0; i < nb; ++i) {
        std::vector<int64_t> starts(batch);
        for (auto& st : starts)
          st = static_cast<int64_t>(Generator::bits(g.seed(), g.reserve(1)) % static_cast<uint64_t>(val_set->size()));
        auto b = val_set->get_batch(starts);
        Tensor logits = model->forward(b.data);
        s += cross_entropy(logits.reshape({-1, logits.size(-1)}), b.target.reshape({-1})).item<double>();
      }
      model->train();
      return s / static_cast<double>(nb);
    };
    double loss_sum = 0;
    int64_t n = 0;
    while (result.steps < total) {
      auto b = loader.next();
      if (!b) continue;  // epoch boundary
      loss_sum += step_once(*model, *opt, sched.get(), b->data, b->target, clip, true);
      ++n;
      ++result.steps;
      ++run_steps;
      const double el = std::chrono::duration<double>(clk::now() - t0).count();
      progress.update("gpt", result.steps, total, loss_sum / n, static_cast<double>(run_steps * batch * ctx) / el,
                      el / run_steps * static_cast<double>(total - result.steps));
      if (ckpt.due(result.steps)) result.last_checkpoint = ckpt.save(result.steps, *model, *opt, sched.get(), loader);
      if (result.steps % eval_every == 0 || result.steps == total) {
        result.final_train_loss = loss_sum / n;
        result.val_loss = val_loss();
        progress.line(fmt::format("step {}/{}: train loss {:.4f}, validation loss {:.4f}", result.steps, total,
                                  result.final_train_loss, result.val_loss));
        metrics.write({{"step", result.steps},
                       {"train_loss", result.final_train_loss},
                       {"val_loss", result.val_loss},
                       {"lr", opt->lr()}});
        loss_sum = 0;
        n = 0;
      }
    }
    if (!ckpt.due(result.steps)) result.last_checkpoint = ckpt.save(result.steps, *model, *opt, sched.get(), loader);
    auto* gpt = dynamic_cast<nn::GPT*>(model.get());
    Generator g(seed + 2);
    Tensor prompt = from_vector<int64_t>({corpus.encode("\n")[0]}, {1, 1});
    Tensor out = gpt->generate(prompt, cfg.get_int("training.sample_tokens"), cfg.get_float("training.temperature"),
                               cfg.get_int("training.top_k"), &g);
    std::vector<int64_t> ids(out.data_ptr<int64_t>() + 1, out.data_ptr<int64_t>() + out.numel());
    result.sample = corpus.decode(ids);
    progress.line("sample:\n" + result.sample);
  } else {
    throw Error(fmt::format("data.dataset: unknown dataset '{}' (fashion_mnist, chars)", dataset));
  }
  result.train_seconds = std::chrono::duration<double>(clk::now() - t0).count();
  return result;
}

}  // namespace lowbit::cli
