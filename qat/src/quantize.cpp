#include "lowbit/qat/quantize.h"

#include <mutex>
#include <regex>

#include "lowbit/qat/quantized_linear.h"

namespace lowbit::qat {

namespace {
std::string torch_dtype(const std::string& d) { return "torch." + d; }
std::string mapping_repr(MappingType m) {
  return fmt::format("<MappingType.{}: {}>", to_string(m), static_cast<int>(m));
}
}  // namespace

std::string Int8DynamicActivationIntxWeightConfig::to_string() const {
  return fmt::format(
      "Int8DynamicActivationIntxWeightConfig(weight_dtype={}, weight_granularity={}, weight_mapping_type={}, "
      "act_mapping_type={})",
      torch_dtype(weight_dtype), qat::to_string(weight_granularity), mapping_repr(weight_mapping_type),
      mapping_repr(act_mapping_type));
}
std::string IntxWeightOnlyConfig::to_string() const {
  return fmt::format("IntxWeightOnlyConfig(weight_dtype={}, granularity={}, mapping_type={})",
                     torch_dtype(weight_dtype), qat::to_string(granularity), mapping_repr(mapping_type));
}
std::string Int4WeightOnlyConfig::to_string() const {
  return fmt::format("Int4WeightOnlyConfig(group_size={})", group_size);
}

QATConfig::QATConfig(std::shared_ptr<QuantConfigBase> base, std::string s)
    : base_config(std::move(base)), step(std::move(s)) {
  validate();
}
QATConfig::QATConfig(std::optional<IntxFakeQuantizeConfig> a, std::optional<IntxFakeQuantizeConfig> w, std::string s)
    : activation_config(std::move(a)), weight_config(std::move(w)), step(std::move(s)) {
  validate();
}
void QATConfig::validate() const {
  std::string st = step;
  for (auto& c : st) c = static_cast<char>(std::tolower(c));
  LOWBIT_CHECK(st == "prepare" || st == "convert", "QATConfig: step must be 'prepare' or 'convert', got '{}'", step);
  LOWBIT_CHECK(!(base_config && (activation_config || weight_config)),
               "QATConfig: pass either base_config or activation/weight configs, not both");
  LOWBIT_CHECK(st != "prepare" || base_config || activation_config || weight_config,
               "QATConfig: the prepare step needs a base config or a fake-quantize config");
  LOWBIT_CHECK(st != "convert" || !(activation_config || weight_config),
               "QATConfig: the convert step takes only a base config (or none)");
  LOWBIT_CHECK(!dynamic_cast<const QATConfig*>(base_config.get()),
               "QATConfig: base_config cannot itself be a QATConfig");
}
std::string QATConfig::to_string() const {
  return fmt::format("QATConfig(base_config={}, activation_config={}, weight_config={}, step='{}')",
                     base_config ? base_config->to_string() : "None",
                     activation_config ? activation_config->to_string() : "None",
                     weight_config ? weight_config->to_string() : "None", step);
}
std::string ModuleFqnToConfig::to_string() const {
  std::string s = "ModuleFqnToConfig({";
  for (size_t i = 0; i < entries.size(); ++i)
    s += fmt::format("{}'{}': {}", i ? ", " : "", entries[i].first,
                     entries[i].second ? entries[i].second->to_string() : "None");
  return s + "})";
}

FakeQuantizeConfigs QuantConfigBase::fake_quantize_configs() const {
  throw Error(fmt::format("infer_fake_quantize_configs: no QAT mapping for {}", to_string()));
}
FakeQuantizeConfigs Int8DynamicActivationIntxWeightConfig::fake_quantize_configs() const {
  return {IntxFakeQuantizeConfig("int8", PerToken{}, std::nullopt, std::nullopt, act_mapping_type),
          IntxFakeQuantizeConfig(weight_dtype, weight_granularity, std::nullopt, std::nullopt, weight_mapping_type)};
}
FakeQuantizeConfigs IntxWeightOnlyConfig::fake_quantize_configs() const {
  return {std::nullopt, IntxFakeQuantizeConfig(weight_dtype, granularity, std::nullopt, std::nullopt, mapping_type)};
}
FakeQuantizeConfigs Int4WeightOnlyConfig::fake_quantize_configs() const {
  return {std::nullopt, IntxFakeQuantizeConfig("int4", PerGroup{group_size})};
}
FakeQuantizeConfigs Int8WeightOnlyConfig::fake_quantize_configs() const {
  return {std::nullopt, IntxFakeQuantizeConfig("int8", PerAxis{0})};
}
FakeQuantizeConfigs Int8DynamicActivationInt8WeightConfig::fake_quantize_configs() const {
  return {IntxFakeQuantizeConfig("int8", PerToken{}, std::nullopt, true), IntxFakeQuantizeConfig("int8", PerAxis{0})};
}
FakeQuantizeConfigs QATConfig::fake_quantize_configs() const {
  if (base_config) return base_config->fake_quantize_configs();
  return {activation_config, weight_config};
}
FakeQuantizeConfigs infer_fake_quantize_configs(const QuantConfigBase& base) { return base.fake_quantize_configs(); }

namespace {
std::mutex g_registry_mu;
std::map<std::type_index, Handler>& registry();

std::shared_ptr<nn::Module> ptq_handler(std::shared_ptr<nn::Module> m, const QuantConfigBase& cfg) {
  auto* lin = dynamic_cast<nn::Linear*>(m.get());
  if (!lin) return m;
  if (auto* fql = dynamic_cast<FakeQuantizedLinear*>(lin))
    m = fql->to_linear(), lin = static_cast<nn::Linear*>(m.get());
  auto [act, w] = infer_fake_quantize_configs(cfg);
  return QuantizedLinear::from_linear(*lin, act, *w);
}

std::shared_ptr<nn::Module> qat_handler(std::shared_ptr<nn::Module> m, const QuantConfigBase& base_cfg) {
  const auto& cfg = static_cast<const QATConfig&>(base_cfg);
  std::string step = cfg.step;
  for (auto& c : step) c = static_cast<char>(std::tolower(c));
  if (step == "prepare") {
    std::optional<IntxFakeQuantizeConfig> act = cfg.activation_config, w = cfg.weight_config;
    if (cfg.base_config) std::tie(act, w) = infer_fake_quantize_configs(*cfg.base_config);
    if (dynamic_cast<FakeQuantizedLinear*>(m.get()) || dynamic_cast<FakeQuantizedEmbedding*>(m.get()))
      return m;  // already prepared
    if (auto* lin = dynamic_cast<nn::Linear*>(m.get()))
      return FakeQuantizedLinear::from_linear(*lin, act ? &*act : nullptr, w ? &*w : nullptr);
    if (auto* emb = dynamic_cast<nn::Embedding*>(m.get())) {
      LOWBIT_CHECK(!act, "QATConfig: embeddings take only a weight config (an activation config was given)");
      LOWBIT_CHECK(w.has_value(), "QATConfig: no weight config for an embedding");
      return FakeQuantizedEmbedding::from_embedding(*emb, *w);
    }
    return m;
  }
  // convert: drop fake quantization, then apply the base config's PTQ
  std::shared_ptr<nn::Module> plain = m;
  if (auto* fql = dynamic_cast<FakeQuantizedLinear*>(m.get()))
    plain = fql->to_linear();
  else if (auto* fqe = dynamic_cast<FakeQuantizedEmbedding*>(m.get()))
    return fqe->to_embedding();
  else
    return m;  // modules that were not prepared are left alone
  if (!cfg.base_config) return plain;
  return ptq_handler(plain, *cfg.base_config);
}

std::map<std::type_index, Handler>& registry() {
  static std::map<std::type_index, Handler> r = {
      {typeid(QATConfig), qat_handler},
      {typeid(Int8DynamicActivationIntxWeightConfig), ptq_handler},
      {typeid(IntxWeightOnlyConfig), ptq_handler},
      {typeid(Int4WeightOnlyConfig), ptq_handler},
      {typeid(Int8WeightOnlyConfig), ptq_handler},
      {typeid(Int8DynamicActivationInt8WeightConfig), ptq_handler},
  };
  return r;
}

bool default_filter(const nn::Module& m, const std::string&) { return dynamic_cast<const nn::Linear*>(&m) != nullptr; }

const QuantConfigBase* config_for(const ModuleFqnToConfig& map, const std::string& fqn) {
  for (auto& [k, c] : map.entries)
    if (k == fqn) return c.get();
  for (auto& [k, c] : map.entries)
    if (k.rfind("re:", 0) == 0 && std::regex_match(fqn, std::regex(k.substr(3)))) return c.get();
  for (auto& [k, c] : map.entries)
    if (k == "_default") return c.get();
  return nullptr;
}
}  // namespace

FilterFn compatible_linears(const QuantConfigBase& config, std::vector<std::string>* skipped) {
  int64_t group = 0;  // the weight group size the config implies, if any
  try {
    const auto [act, w] = config.fake_quantize_configs();
    if (w && w->granularity)
      if (auto* pg = std::get_if<PerGroup>(&*w->granularity)) group = pg->group_size;
  } catch (const Error&) {}
  return [group, skipped](const nn::Module& m, const std::string& fqn) {
    auto* lin = dynamic_cast<const nn::Linear*>(&m);
    if (!lin) return false;
    if (group > 0 && lin->in_features % group != 0) {
      if (skipped)
        skipped->push_back(
            fmt::format("{} (in_features {} not divisible by group size {})", fqn, lin->in_features, group));
      return false;
    }
    return true;
  };
}

void register_quantize_handler(std::type_index t, Handler h) {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  registry()[t] = std::move(h);
}

std::shared_ptr<nn::Module> quantize_(std::shared_ptr<nn::Module> model, const QuantConfigBase& config,
                                      FilterFn filter) {
  LOWBIT_CHECK(model != nullptr, "quantize_: model is null");
  if (auto* q = dynamic_cast<const QATConfig*>(&config)) q->validate();
  const auto* per_module = dynamic_cast<const ModuleFqnToConfig*>(&config);
  if (!filter) {
    // QAT prepare also picks up embeddings only when asked (torchao's default filter: Linear)
    filter = default_filter;
  }
  // collect first, then replace (replacing while walking would revisit new modules)
  std::vector<std::pair<std::string, std::shared_ptr<nn::Module>>> targets;
  for (auto& [fqn, m] : model->named_modules())
    if (filter(*m, fqn)) targets.emplace_back(fqn, m);
  for (auto& [fqn, m] : targets) {
    const QuantConfigBase* cfg = per_module ? config_for(*per_module, fqn) : &config;
    if (!cfg) continue;
    Handler h;
    {
      std::lock_guard<std::mutex> lock(g_registry_mu);
      auto it = registry().find(typeid(*cfg));
      LOWBIT_CHECK(it != registry().end(), "quantize_: no handler registered for {}", cfg->to_string());
      h = it->second;
    }
    auto replacement = h(m, *cfg);
    if (replacement == m) continue;
    if (fqn.empty())
      model = replacement;
    else
      model->replace_module(fqn, replacement);
  }
  return model;
}

}  // namespace lowbit::qat
