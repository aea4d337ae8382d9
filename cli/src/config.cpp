#include "lowbit/cli/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lowbit/autograd/error.h"
#include "lowbit/core/format.h"
#include "lowbit/float8/float8.h"
#include "lowbit/mx/linear.h"
#include "lowbit/optim/table.h"
#include "lowbit/qat/recipes.h"

namespace lowbit::cli {

const std::vector<KeySpec>& config_schema() {
  using L = std::vector<int64_t>;
  static const std::vector<KeySpec> schema = {
      {"model.type", std::string("mlp"), "mlp | gpt"},
      {"model.input_dim", int64_t{784}, "mlp: input features"},
      {"model.hidden", L{1024, 1024}, "mlp: hidden layer widths"},
      {"model.num_classes", int64_t{10}, "mlp: output classes"},
      {"model.activation", std::string("relu"), "mlp: relu | gelu | silu | tanh"},
      {"model.dropout", 0.0, "dropout probability"},
      {"model.context", int64_t{128}, "gpt: context length"},
      {"model.d_model", int64_t{256}, "gpt: embedding width"},
      {"model.n_heads", int64_t{4}, "gpt: attention heads"},
      {"model.n_layers", int64_t{4}, "gpt: transformer blocks"},
      {"model.d_ff", int64_t{0}, "gpt: feed-forward width (0 = 4 * d_model)"},
      {"model.tie_weights", true, "gpt: share the token embedding with the LM head"},
      {"data.dataset", std::string("fashion_mnist"), "fashion_mnist | chars"},
      {"data.path", std::string(""), "dataset directory or text corpus ('' = default location)"},
      {"data.batch_size", int64_t{256}, "examples per step"},
      {"data.shuffle", true, "reshuffle every epoch (seeded)"},
      {"data.drop_last", false, "drop the last incomplete batch"},
      {"data.val_fraction", 0.1, "chars: share of the corpus held out for validation"},
      {"optimizer.name", std::string("adamw"),
       optim::optimizer_names() +
           " (see `lowbit optimizers`; the low-bit states are quantized for parameters of >= 4096 elements)"},
      {"optimizer.block_size", int64_t{0},
       "low-bit optimizers: elements per quantization block (0 = the default: 8bit/fp8 256, 4bit 128)"},
      {"optimizer.full_precision_state", std::vector<std::string>{},
       "low-bit optimizers: parameters whose name contains one of these strings keep full-precision states (e.g. "
       "[\"wte\"])"},
      {"optimizer.bf16_stochastic_round", false,
       "low-bit optimizers with training.param_dtype = bf16: write parameters with stochastic rounding (seeded, "
       "unbiased) instead of round-to-nearest-even"},
      {"optimizer.second_moment_floor", true,
       "8-bit / fp8 Adams: a positive second moment keeps the smallest nonzero code instead of rounding to 0 (false: "
       "torchao's codes bit for bit; its zeros make ~30x updates, docs/optim.md)"},
      {"optimizer.lr", 1e-3, "learning rate"},
      {"optimizer.weight_decay", 1e-2, "weight decay (decoupled for adamw)"},
      {"optimizer.beta1", 0.9, "adam, lion: beta1"},
      {"optimizer.beta2", 0.999, "adam, lion: beta2 (lion: 0.99 is its paper default)"},
      {"optimizer.eps", 1e-8, "adam: epsilon"},
      {"optimizer.amsgrad", false, "adam: amsgrad"},
      {"optimizer.momentum", 0.0, "sgd, sgd8bit: momentum (sgd8bit: required, in (0, 1))"},
      {"optimizer.nesterov", false, "sgd: nesterov momentum"},
      {"optimizer.dampening", 0.0, "sgd8bit: momentum dampening"},
      {"lr_scheduler.name", std::string("none"), "none | step | cosine | warmup_cosine | onecycle"},
      {"lr_scheduler.warmup_steps", int64_t{0}, "warmup_cosine: linear warmup steps"},
      {"lr_scheduler.min_lr", 0.0, "cosine, warmup_cosine: final learning rate"},
      {"lr_scheduler.step_size", int64_t{1000}, "step: steps between decays"},
      {"lr_scheduler.gamma", 0.1, "step: decay factor"},
      {"lr_scheduler.max_lr", 1e-2, "onecycle: peak learning rate"},
      {"training.epochs", int64_t{5}, "passes over the training set (fashion_mnist)"},
      {"training.max_steps", int64_t{0}, "stop after this many steps (0 = epochs decide; chars: required)"},
      {"training.seed", int64_t{0}, "seed for initialization, shuffling and dropout"},
      {"training.threads", int64_t{0}, "threads (0 = all cores)"},
      {"training.grad_clip", 0.0, "clip the gradient norm to this value (0 = off)"},
      {"training.log_interval", int64_t{50}, "steps between log lines when not on a terminal"},
      {"training.eval_interval", int64_t{0}, "chars: steps between validation passes (0 = at the end)"},
      {"training.eval_batches", int64_t{20}, "chars: validation batches per evaluation"},
      {"training.sample_tokens", int64_t{200}, "chars: length of the generated sample"},
      {"training.temperature", 0.8, "chars: sampling temperature"},
      {"training.top_k", int64_t{0}, "chars: sample from the top k tokens (0 = all)"},
      {"training.run_dir", std::string("runs/default"), "where config.toml and metrics.jsonl are written"},
      {"training.precision", std::string("fp32"),
       "fp32 | bf16: bf16 runs every GEMM (linear, attention, backward) on bfloat16-rounded operands with float32 "
       "accumulation, weights and optimizer state in float32 (torch.set_float32_matmul_precision('medium'))"},
      {"training.param_dtype", std::string("fp32"),
       "fp32 | bf16: bf16 keeps the model's parameters in bfloat16 (no float32 master copy; needs a low-bit "
       "optimizer, which writes them back rounded to nearest even or, with optimizer.bf16_stochastic_round, "
       "stochastically)"},
      {"quantize.recipe", std::string("none"), "none, or a recipe of `lowbit recipes`: " + qat::recipe_names()},
      {"quantize.mode", std::string("qat"),
       "qat: fine-tune with fake quantization, then convert | ptq: convert the float model"},
      {"quantize.weight_dtype", std::string("int4"),
       "weight format for 8da-intx / intx-weight-only: " + core::format_names(core::FormatKind::Integer)},
      {"quantize.group_size", int64_t{32}, "weight group size (0 = per-channel for 8da-intx / intx-weight-only)"},
      {"quantize.qat_epochs", int64_t{2}, "qat: fine-tuning epochs after float training"},
      {"quantize.qat_steps", int64_t{0},
       "qat: fine-tuning steps instead of epochs (0 = use qat_epochs; required for data.dataset = 'chars')"},
      {"quantize.qat_lr", 1e-4, "qat: learning rate while fine-tuning"},
      {"quantize.float8_qat_backward", std::string("straight_through"),
       "float8 recipes, qat: straight_through (lowbit's default) | torchao_parity (torchao's gradient: cast to "
       "float8, through the scale; trains worse, see docs/float8.md)"},
      {"quantize.float8_guard_zero_blocks", false,
       "float8 recipes, qat: all-zero rows/tensors give zeros instead of torchao's NaN (pytorch/ao#3356)"},
      {"float8.recipe_name", std::string("none"),
       "none, or a float8 training recipe (torchao / torchtitan names): " + float8::float8_recipe_names()},
      {"float8.filter_fqns", std::vector<std::string>{},
       "layers whose name contains one of these strings stay in high precision (e.g. [\"lm_head\"])"},
      {"float8.emulate", false, "float8: torchao's float32 reference gemms instead of the bf16 fast mode"},
      {"float8.auto_filter", false,
       "float8: also skip layers torchao's _auto_filter_for_recipe skips (small or not multiples of 16)"},
      {"mx.recipe_name", std::string("none"),
       "none, or an MX training recipe (torchao's names): " + mx::mx_recipe_names() +
           ", or nvfp4 (NVFP4 training: TransformerEngine's scales, 16x16 weight tiles, RHT and stochastic "
           "rounding in the backward)"},
      {"mx.filter_fqns", std::vector<std::string>{},
       "layers whose name contains one of these strings stay in high precision (e.g. [\"lm_head\"])"},
      {"mx.emulate", false, "mx: torchao's float32 reference gemms instead of the bf16 fast mode"},
      {"training.export", true, "write <run_dir>/model.h5 (the final, possibly converted, model)"},
      {"training.report", false, "write <run_dir>/report.html at the end (what `lowbit report RUN_DIR` writes)"},
      {"checkpoint.interval", int64_t{0},
       "save a checkpoint every this many steps, and at the end (0 = only at the end)"},
      {"checkpoint.keep_last", int64_t{3}, "keep this many periodic checkpoints (older ones are deleted)"},
      {"checkpoint.dir", std::string(""), "checkpoint directory ('' = <run_dir>/checkpoints)"},
      {"checkpoint.enabled", true, "write checkpoints at all"},
      {"distributed.shard_optimizer_state", false,
       "under mpirun: ZeRO-1, each rank keeps the optimizer state of its share of the parameters (reduce of "
       "gradients to their owner, all-gather of updated parameters); see docs/distributed.md"},
      {"distributed.bucket_cap_mb", 4.0, "under mpirun: gradients are summed across ranks in buckets of this many MiB"},
      {"distributed.timeout_s", 600.0,
       "under mpirun: a collective that does not complete in this many seconds ends the job (a rank died or hangs)"},
  };
  return schema;
}

namespace {
// the sections of the schema, in order: "model, data, ..."
std::string section_names() {
  std::vector<std::string> sections;
  for (const auto& s : config_schema()) {
    const std::string sec = s.key.substr(0, s.key.find('.'));
    if (std::find(sections.begin(), sections.end(), sec) == sections.end()) sections.push_back(sec);
  }
  std::string out;
  for (const auto& sec : sections) out += (out.empty() ? "" : ", ") + sec;
  return out;
}
const KeySpec* find_spec(const std::string& key) {
  for (const auto& s : config_schema())
    if (s.key == key) return &s;
  return nullptr;
}
std::string known_keys(const std::string& section) {
  std::string out;
  for (const auto& s : config_schema())
    if (section.empty() || s.key.rfind(section + ".", 0) == 0) out += (out.empty() ? "" : ", ") + s.key;
  return out;
}
std::string type_name(const Value& v) {
  switch (v.index()) {
    case 0: return "integer";
    case 1: return "float";
    case 2: return "boolean";
    case 3: return "string";
    case 4: return "list of integers";
    default: return "list of strings";
  }
}
// the items of "a, b" or "[a, b]", trimmed of spaces and quotes; empty items dropped
std::vector<std::string> list_items(const std::string& text) {
  std::string t = text;
  if (!t.empty() && t.front() == '[') t = t.substr(1);
  if (!t.empty() && t.back() == ']') t.pop_back();
  std::vector<std::string> out;
  std::stringstream ss(t);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto b = item.find_first_not_of(" \"'"), e = item.find_last_not_of(" \"'");
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
  }
  return out;
}
Value parse_text(const KeySpec& spec, const std::string& text) {
  const std::string where = fmt::format("--{} '{}'", spec.key, text);
  try {
    size_t pos = 0;
    switch (spec.default_value.index()) {
      case 0: {
        const long long v = std::stoll(text, &pos);
        if (pos != text.size()) break;
        return int64_t{v};
      }
      case 1: {
        const double v = std::stod(text, &pos);
        if (pos != text.size()) break;
        return v;
      }
      case 2:
        if (text == "true" || text == "1") return true;
        if (text == "false" || text == "0") return false;
        break;
      case 3: return text;
      case 5: return list_items(text);  // "a,b" or "[a, \"b\"]"
      default: {
        std::vector<int64_t> out;
        for (const auto& item : list_items(text)) out.push_back(std::stoll(item));
        return out;
      }
    }
  } catch (const std::exception&) {}
  throw Error(fmt::format("{}: expected a value of type {}", where, type_name(spec.default_value)));
}
}  // namespace

RunConfig::RunConfig() {
  for (const auto& s : config_schema()) values_[s.key] = s.default_value;
}

RunConfig RunConfig::from_file(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  LOWBIT_CHECK(std::filesystem::exists(st), "cannot open config file '{}': no such file", path);
  LOWBIT_CHECK(!std::filesystem::is_directory(st),
               "config file '{}' is a directory (give a .toml file, e.g. configs/fmnist_mlp.toml)", path);
  LOWBIT_CHECK(!std::filesystem::is_regular_file(st) || std::filesystem::file_size(path, ec) <= (1u << 20),
               "config file '{}' is larger than 1 MiB", path);
  std::ifstream in(path);
  LOWBIT_CHECK(in.good(), "cannot open config file '{}'", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return from_string(ss.str(), path);
}

RunConfig RunConfig::from_string(const std::string& text, const std::string& source) {
  RunConfig cfg;
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& b = e.source().begin;
    throw Error(fmt::format("{}:{}:{}: TOML syntax error: {}", source, b.line, b.column, e.description()));
  }
  for (auto&& [section_key, section_node] : root) {
    const std::string section(section_key.str());
    const auto* table = section_node.as_table();
    LOWBIT_CHECK(table != nullptr, "{}: top-level key '{}' must be a [section]; sections are {}", source, section,
                 section_names());
    LOWBIT_CHECK(!known_keys(section).empty(), "{}: unknown section [{}]; sections are {}", source, section,
                 section_names());
    for (auto&& [k, node] : *table) {
      const std::string key = section + "." + std::string(k.str());
      const KeySpec* spec = find_spec(key);
      LOWBIT_CHECK(spec != nullptr, "{}: unknown key '{}' (keys in [{}]: {})", source, key, section,
                   known_keys(section));
      const auto mismatch = [&] {
        return Error(fmt::format("{}: key '{}' must be a {}", source, key, type_name(spec->default_value)));
      };
      switch (spec->default_value.index()) {
        case 0:
          if (!node.is_integer()) throw mismatch();
          cfg.values_[key] = node.value<int64_t>().value();
          break;
        case 1:
          if (!node.is_number()) throw mismatch();
          cfg.values_[key] = node.value<double>().value();
          break;
        case 2:
          if (!node.is_boolean()) throw mismatch();
          cfg.values_[key] = node.value<bool>().value();
          break;
        case 3:
          if (!node.is_string()) throw mismatch();
          cfg.values_[key] = node.value<std::string>().value();
          break;
        case 5: {
          const auto* arr = node.as_array();
          if (!arr) throw mismatch();
          std::vector<std::string> v;
          for (auto&& el : *arr) {
            if (!el.is_string()) throw mismatch();
            v.push_back(el.value<std::string>().value());
          }
          cfg.values_[key] = v;
          break;
        }
        default: {
          const auto* arr = node.as_array();
          if (!arr) throw mismatch();
          std::vector<int64_t> v;
          for (auto&& el : *arr) {
            if (!el.is_integer()) throw mismatch();
            v.push_back(el.value<int64_t>().value());
          }
          cfg.values_[key] = v;
        }
      }
    }
  }
  return cfg;
}

void RunConfig::set(const std::string& key, const std::string& text) {
  const KeySpec* spec = find_spec(key);
  LOWBIT_CHECK(spec != nullptr, "unknown config key '{}' (known keys: {})", key, known_keys(""));
  values_[key] = parse_text(*spec, text);
}

void RunConfig::apply_overrides(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    LOWBIT_CHECK(a.rfind("--", 0) == 0 && a.size() > 2,
                 "unexpected argument '{}' (overrides look like --section.key value)", a);
    std::string key = a.substr(2), value;
    const auto eq = key.find('=');
    if (eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else {
      LOWBIT_CHECK(i + 1 < args.size(), "--{}: missing value", key);
      value = args[++i];
    }
    set(key, value);
  }
}

const Value& RunConfig::at(const std::string& key) const {
  auto it = values_.find(key);
  LOWBIT_ASSERT(it != values_.end());
  return it->second;
}
int64_t RunConfig::get_int(const std::string& k) const { return std::get<int64_t>(at(k)); }
double RunConfig::get_float(const std::string& k) const { return std::get<double>(at(k)); }
bool RunConfig::get_bool(const std::string& k) const { return std::get<bool>(at(k)); }
const std::string& RunConfig::get_string(const std::string& k) const { return std::get<std::string>(at(k)); }
const std::vector<std::string>& RunConfig::get_string_list(const std::string& k) const {
  return std::get<std::vector<std::string>>(at(k));
}
const std::vector<int64_t>& RunConfig::get_int_list(const std::string& k) const {
  return std::get<std::vector<int64_t>>(at(k));
}

namespace {
std::string toml_string(const std::string& v) {
  std::string out = "\"";
  for (unsigned char c : v) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20)
          out += fmt::format("\\u{:04x}", c);
        else
          out += static_cast<char>(c);
    }
  }
  return out + "\"";
}
// Shortest text that reads back as the same double, always a TOML float.
std::string toml_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::string t = fmt::format("{}", v);
  if (t.find_first_of(".e") == std::string::npos) t += ".0";
  return t;
}
}  // namespace

std::string RunConfig::value_text(const std::string& key) const {
  const Value& v = at(key);
  switch (v.index()) {
    case 0: return std::to_string(std::get<int64_t>(v));
    case 1: return toml_float(std::get<double>(v));
    case 2: return std::get<bool>(v) ? "true" : "false";
    case 3: return toml_string(std::get<std::string>(v));
    case 5: {
      std::string text = "[";
      const auto& l = std::get<std::vector<std::string>>(v);
      for (size_t i = 0; i < l.size(); ++i) text += (i ? ", " : "") + toml_string(l[i]);
      return text + "]";
    }
    default: {
      std::string text = "[";
      const auto& l = std::get<std::vector<int64_t>>(v);
      for (size_t i = 0; i < l.size(); ++i) text += (i ? ", " : "") + std::to_string(l[i]);
      return text + "]";
    }
  }
}

// Sections in order of first appearance in the schema, keys in schema order, values in their
// shortest exact form.
std::string RunConfig::to_toml() const {
  std::vector<std::string> sections;
  for (const auto& s : config_schema()) {
    const std::string sec = s.key.substr(0, s.key.find('.'));
    if (std::find(sections.begin(), sections.end(), sec) == sections.end()) sections.push_back(sec);
  }
  std::string out;
  for (const auto& section : sections) {
    out += fmt::format("{}[{}]\n", out.empty() ? "" : "\n", section);
    for (const auto& s : config_schema()) {
      const auto dot = s.key.find('.');
      const std::string sec = s.key.substr(0, dot), name = s.key.substr(dot + 1);
      if (sec != section) continue;
      const std::string text = value_text(s.key);
      out += fmt::format("{} = {}\n", name, text);
    }
  }
  return out;
}

}  // namespace lowbit::cli
