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
QATConfig::QATConfig(FakeQuantizeConfigPtr a, FakeQuantizeConfigPtr w, std::string s)
    : activation_config(std::move(a)), weight_config(std::move(w)), step(std::move(s)) {
  validate();
}
namespace {
FakeQuantizeConfigPtr shared_config(const std::optional<IntxFakeQuantizeConfig>& c) {
  return c ? std::make_shared<const IntxFakeQuantizeConfig>(*c) : nullptr;
}
std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
}  // namespace
QATConfig::QATConfig(std::optional<IntxFakeQuantizeConfig> a, std::optional<IntxFakeQuantizeConfig> w, std::string s)
    : QATConfig(shared_config(a), shared_config(w), std::move(s)) {}
void QATConfig::validate() const {
  const std::string st = lower(step);
  LOWBIT_CHECK(st == "prepare" || st == "convert", "QATConfig: step must be 'prepare' or 'convert', got '{}'", step);
  LOWBIT_CHECK(!(base_config && (activation_config || weight_config)),
               "QATConfig: pass either base_config or activation/weight configs, not both");
  LOWBIT_CHECK(st != "prepare" || base_config || activation_config || weight_config,
               "QATConfig: the prepare step needs a base config or a fake-quantize config");
  LOWBIT_CHECK(st != "convert" || !(activation_config || weight_config),
               "QATConfig: the convert step takes only a base config (or none)");
  LOWBIT_CHECK(!base_config || typeid(*base_config) != typeid(QATConfig),
               "QATConfig: base_config cannot itself be a QATConfig");
  if (base_config) base_config->validate();
  if (activation_config) activation_config->validate();
  if (weight_config) weight_config->validate();
}
std::string QATConfig::to_string() const {
  return fmt::format("QATConfig(base_config={}, activation_config={}, weight_config={}, step='{}')",
                     base_config ? base_config->to_string() : "None",
                     activation_config ? activation_config->to_string() : "None",
                     weight_config ? weight_config->to_string() : "None", step);
}
void ModuleFqnToConfig::validate() const {
  for (const auto& [key, c] : entries) {
    if (key.rfind("re:", 0) == 0) {
      try {
        std::regex re(key.substr(3));
      } catch (const std::regex_error& e) {
        throw Error(fmt::format("ModuleFqnToConfig: key '{}' is not a valid regular expression: {}", key, e.what()));
      }
    }
    if (c) c->validate();
  }
}
const QuantConfigBase* QuantConfigBase::config_for(const std::string&) const { return this; }
const QuantConfigBase* ModuleFqnToConfig::config_for(const std::string& fqn) const {
  for (auto& [k, c] : entries)
    if (k == fqn) return c.get();
  for (auto& [k, c] : entries)
    if (k.rfind("re:", 0) == 0 && std::regex_match(fqn, std::regex(k.substr(3)))) return c.get();
  for (auto& [k, c] : entries)
    if (k == "_default") return c.get();
  return nullptr;
}
std::string ModuleFqnToConfig::to_string() const {
  std::string s = "ModuleFqnToConfig({";
  for (size_t i = 0; i < entries.size(); ++i)
    s += fmt::format("{}'{}': {}", i ? ", " : "", entries[i].first,
                     entries[i].second ? entries[i].second->to_string() : "None");
  return s + "})";
}

FakeQuantizeConfigs QuantConfigBase::fake_quantize_configs() const {
  throw Error(fmt::format(
      "{}: no fake-quantize configs (the config defines neither fake_quantize_configs() nor apply())", to_string()));
}
namespace {
FakeQuantizeConfigPtr intx(std::string dtype, Granularity g, std::optional<bool> is_symmetric = std::nullopt,
                           std::optional<MappingType> mapping = std::nullopt) {
  return std::make_shared<const IntxFakeQuantizeConfig>(std::move(dtype), std::move(g), std::nullopt, is_symmetric,
                                                        mapping);
}
}  // namespace
FakeQuantizeConfigs Int8DynamicActivationIntxWeightConfig::fake_quantize_configs() const {
  return {intx("int8", PerToken{}, std::nullopt, act_mapping_type),
          intx(weight_dtype, weight_granularity, std::nullopt, weight_mapping_type)};
}
FakeQuantizeConfigs IntxWeightOnlyConfig::fake_quantize_configs() const {
  return {nullptr, intx(weight_dtype, granularity, std::nullopt, mapping_type)};
}
FakeQuantizeConfigs Int4WeightOnlyConfig::fake_quantize_configs() const {
  return {nullptr, intx("int4", PerGroup{group_size})};
}
FakeQuantizeConfigs Int8WeightOnlyConfig::fake_quantize_configs() const { return {nullptr, intx("int8", PerAxis{0})}; }
FakeQuantizeConfigs Int8DynamicActivationInt8WeightConfig::fake_quantize_configs() const {
  return {intx("int8", PerToken{}, true), intx("int8", PerAxis{0})};
}
FakeQuantizeConfigs QATConfig::fake_quantize_configs() const {
  if (base_config) return base_config->fake_quantize_configs();
  return {activation_config, weight_config};
}
FakeQuantizeConfigs infer_fake_quantize_configs(const QuantConfigBase& base) { return base.fake_quantize_configs(); }

// ---- what a config does to one module ----
std::shared_ptr<nn::Module> QuantConfigBase::convert_linear(const nn::Linear& linear) const {
  const auto [act, w] = fake_quantize_configs();
  LOWBIT_CHECK(w != nullptr, "convert: {} has no weight config", to_string());
  return w->quantized_linear(linear, act.get());
}
std::shared_ptr<nn::Module> QuantConfigBase::prepare_linear(const nn::Linear& linear) const {
  const auto [act, w] = fake_quantize_configs();
  return FakeQuantizedLinear::from_linear(linear, act.get(), w.get());
}
std::shared_ptr<nn::Module> QuantConfigBase::prepare_embedding(const nn::Embedding& embedding) const {
  const auto [act, w] = fake_quantize_configs();
  LOWBIT_CHECK(!act, "QATConfig: embeddings take only a weight config (an activation config was given)");
  LOWBIT_CHECK(w != nullptr, "QATConfig: no weight config for an embedding");
  return FakeQuantizedEmbedding::from_embedding(embedding, *w);
}
std::shared_ptr<nn::Module> QuantConfigBase::apply(std::shared_ptr<nn::Module> m) const {
  if (const auto* qm = dynamic_cast<const QATModule*>(m.get())) m = qm->to_float();
  if (const auto* lin = dynamic_cast<const nn::Linear*>(m.get())) return convert_linear(*lin);
  return m;
}
std::shared_ptr<nn::Module> QATConfig::apply(std::shared_ptr<nn::Module> m) const {
  if (lower(step) == "prepare") {
    if (dynamic_cast<const QATModule*>(m.get())) return m;  // already prepared
    const QuantConfigBase& scheme = base_config ? *base_config : static_cast<const QuantConfigBase&>(*this);
    if (const auto* lin = dynamic_cast<const nn::Linear*>(m.get())) return scheme.prepare_linear(*lin);
    if (const auto* emb = dynamic_cast<const nn::Embedding*>(m.get())) return scheme.prepare_embedding(*emb);
    return m;
  }
  // convert: drop fake quantization, then apply the base config's PTQ to linears
  const auto* qm = dynamic_cast<const QATModule*>(m.get());
  if (!qm) return m;  // modules that were not prepared are left alone
  std::shared_ptr<nn::Module> plain = qm->to_float();
  const auto* lin = dynamic_cast<const nn::Linear*>(plain.get());
  if (!base_config || !lin) return plain;
  return base_config->convert_linear(*lin);
}

namespace {
std::mutex g_registry_mu;
std::map<std::type_index, Handler>& registry() {
  static std::map<std::type_index, Handler> r;
  return r;
}
bool default_filter(const nn::Module& m, const std::string&) { return dynamic_cast<const nn::Linear*>(&m) != nullptr; }
}  // namespace

FilterFn compatible_linears(const QuantConfigBase&) {
  // every Linear: a weight group size that does not divide in_features ends each row in a
  // shorter (ragged) group, so no layer has to stay in float
  return default_filter;
}

void register_quantize_handler(std::type_index t, Handler h) {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  registry()[t] = std::move(h);
}

std::shared_ptr<nn::Module> quantize_(std::shared_ptr<nn::Module> model, const QuantConfigBase& config,
                                      FilterFn filter) {
  LOWBIT_CHECK(model != nullptr, "quantize_: model is null");
  config.validate();
  if (!filter) {
    // QAT prepare also picks up embeddings only when asked (torchao's default filter: Linear)
    filter = default_filter;
  }
  // collect first, then replace (replacing while walking would revisit new modules)
  std::vector<std::pair<std::string, std::shared_ptr<nn::Module>>> targets;
  for (auto& [fqn, m] : model->named_modules())
    if (filter(*m, fqn)) targets.emplace_back(fqn, m);
  for (auto& [fqn, m] : targets) {
    const QuantConfigBase* cfg = config.config_for(fqn);
    if (!cfg) continue;
    Handler h;
    {
      std::lock_guard<std::mutex> lock(g_registry_mu);
      auto it = registry().find(typeid(*cfg));
      if (it != registry().end()) h = it->second;
    }
    auto replacement = h ? h(m, *cfg) : cfg->apply(m);
    if (replacement == m) continue;
    if (fqn.empty())
      model = replacement;
    else
      model->replace_module(fqn, replacement);
  }
  return model;
}

}  // namespace lowbit::qat
