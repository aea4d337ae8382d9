// torchao's quantize_ API: configs named as in torchao, a registry from config type to the
// handler that transforms a module, QATConfig prepare/convert, per-module configs by exact name,
// "re:<regex>" and "_default" (spec §2.4, §6).
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <typeindex>

#include "lowbit/qat/fake_quantizer.h"

namespace lowbit::qat {

/// The (activation, weight) fake-quantize configs of a QAT scheme; either may be null.
struct FakeQuantizeConfigs {
  FakeQuantizeConfigPtr activation, weight;
};

/// Base of every quantize_ config. A config answers for itself -- its fake-quantize configs,
/// how it prepares and converts a Linear / Embedding -- so quantize_ never asks for its type and
/// a new config kind adds no cast anywhere.
struct QuantConfigBase {
  virtual ~QuantConfigBase() = default;
  virtual std::string to_string() const = 0;
  /// Checks the config (quantize_ calls it before touching the model).
  virtual void validate() const {}
  /// The (activation, weight) fake-quantize configs this config implies for QAT (torchao's
  /// _infer_fake_quantize_configs). Throws for configs without a QAT mapping.
  virtual FakeQuantizeConfigs fake_quantize_configs() const;
  /// The config that applies to the module named fqn, or null for none (ModuleFqnToConfig
  /// picks one of its entries; every other config applies to every module the filter selects).
  virtual const QuantConfigBase* config_for(const std::string& fqn) const;
  /// Transforms one selected module and returns its replacement (or the module itself). The
  /// default is post-training quantization: a Linear (a QAT module: its float module first)
  /// becomes convert_linear(); other modules stay.
  virtual std::shared_ptr<nn::Module> apply(std::shared_ptr<nn::Module> module) const;
  /// The real quantized module of one Linear: the weight fake-quantize config's
  /// quantized_linear() with the activation config.
  virtual std::shared_ptr<nn::Module> convert_linear(const nn::Linear& linear) const;
  /// QAT prepare of one Linear / Embedding: fake-quantized modules around the same parameters.
  virtual std::shared_ptr<nn::Module> prepare_linear(const nn::Linear& linear) const;
  virtual std::shared_ptr<nn::Module> prepare_embedding(const nn::Embedding& embedding) const;
};

/// int8 dynamic per-token activations (asymmetric) x intN weights (int2..int8), torchao's "8da4w"
/// family. Used for PTQ, and as a QATConfig base.
struct Int8DynamicActivationIntxWeightConfig : QuantConfigBase {
  std::string weight_dtype = "int8";
  Granularity weight_granularity = PerGroup{32};
  MappingType weight_mapping_type = MappingType::SYMMETRIC;
  MappingType act_mapping_type = MappingType::ASYMMETRIC;
  std::string to_string() const override;
  FakeQuantizeConfigs fake_quantize_configs() const override;
};
/// intN weights only (activations stay float).
struct IntxWeightOnlyConfig : QuantConfigBase {
  std::string weight_dtype = "int8";
  Granularity granularity = PerGroup{32};
  MappingType mapping_type = MappingType::SYMMETRIC;
  std::string to_string() const override;
  FakeQuantizeConfigs fake_quantize_configs() const override;
};
/// int4 weight-only, per group (lowbit stores symmetric int4 codes; see docs/qat.md).
struct Int4WeightOnlyConfig : QuantConfigBase {
  int64_t group_size = 128;
  std::string to_string() const override;
  FakeQuantizeConfigs fake_quantize_configs() const override;
};
/// int8 per-channel symmetric weights only.
struct Int8WeightOnlyConfig : QuantConfigBase {
  std::string to_string() const override { return "Int8WeightOnlyConfig()"; }
  FakeQuantizeConfigs fake_quantize_configs() const override;
};
/// int8 dynamic per-token symmetric activations x int8 per-channel symmetric weights.
struct Int8DynamicActivationInt8WeightConfig : QuantConfigBase {
  std::string to_string() const override { return "Int8DynamicActivationInt8WeightConfig()"; }
  FakeQuantizeConfigs fake_quantize_configs() const override;
};

/// torchao's Float8DynamicActivationFloat8WeightConfig: float8 weights and per-call float8
/// activations, both PerTensor (torchao's default) or both PerRow; activation_value_lb/ub bound the
/// activation amax. Convert gives a Float8QuantizedLinear; as a QATConfig base it fake-quantizes
/// with Float8FakeQuantizeConfigs of the same settings.
struct Float8DynamicActivationFloat8WeightConfig : QuantConfigBase {
  DType activation_dtype = kFloat8_e4m3fn, weight_dtype = kFloat8_e4m3fn;
  Granularity granularity = PerTensor{};  // PerTensor or PerRow, for both
  std::optional<double> activation_value_lb, activation_value_ub;
  /// lowbit: the QAT fake quantizers' backward and zero-block guard (Float8FakeQuantizeConfig's
  /// backward / guard_zero_blocks); the converted module is the same either way. Printed only
  /// when not the default.
  Float8FakeQuantizeConfig::Backward qat_backward = Float8FakeQuantizeConfig::Backward::StraightThrough;
  bool qat_guard_zero_blocks = false;
  std::string to_string() const override;
  void validate() const override;
  FakeQuantizeConfigs fake_quantize_configs() const override;
};
/// torchao's Float8WeightOnlyConfig: float8 weights (PerRow by default, or PerTensor), the matmul
/// in the activations' precision on the dequantized weight.
struct Float8WeightOnlyConfig : QuantConfigBase {
  DType weight_dtype = kFloat8_e4m3fn;
  Granularity granularity = PerRow{};
  Float8FakeQuantizeConfig::Backward qat_backward = Float8FakeQuantizeConfig::Backward::StraightThrough;  // as above
  bool qat_guard_zero_blocks = false;
  std::string to_string() const override;
  void validate() const override;
  FakeQuantizeConfigs fake_quantize_configs() const override;
};

/// torchao's MXDynamicActivationMXWeightConfig (spec §4.6): MX weights quantized once, activations
/// quantized per call with the same settings (block_size, one element dtype for both, scaling
/// mode RCEIL by default). QAT prepares MXFakeQuantizeConfig quantizers; convert (or PTQ) gives an
/// MXQuantizedLinear.
struct MXDynamicActivationMXWeightConfig : QuantConfigBase {
  int64_t block_size = 32;
  core::FormatId activation_dtype = core::FormatId::Float8E4M3FN, weight_dtype = core::FormatId::Float8E4M3FN;
  core::E8M0Rounding scaling_mode = core::E8M0Rounding::RCeil;
  std::string to_string() const override;
  void validate() const override;
  FakeQuantizeConfigs fake_quantize_configs() const override;
};

/// torchao's NVFP4DynamicActivationNVFP4WeightConfig: NVFP4 weights (quantized once) and
/// activations (per call), with dynamic per-tensor scales when use_dynamic_per_tensor_scale. QAT
/// prepares NVFP4FakeQuantizeConfig quantizers; convert gives an NVFP4QuantizedLinear.
struct NVFP4DynamicActivationNVFP4WeightConfig : QuantConfigBase {
  bool use_dynamic_per_tensor_scale = true;
  std::string to_string() const override;
  FakeQuantizeConfigs fake_quantize_configs() const override;
};

/// QATConfig(base_config) or QATConfig(activation_config, weight_config); step "prepare"/"convert".
struct QATConfig : QuantConfigBase {
  std::shared_ptr<QuantConfigBase> base_config;
  FakeQuantizeConfigPtr activation_config, weight_config;  // any fake-quantize config kind
  std::string step = "prepare";
  QATConfig() = default;
  QATConfig(std::shared_ptr<QuantConfigBase> base, std::string step);
  QATConfig(FakeQuantizeConfigPtr activation, FakeQuantizeConfigPtr weight, std::string step = "prepare");
  /// torchao's form with intx configs by value.
  QATConfig(std::optional<IntxFakeQuantizeConfig> activation, std::optional<IntxFakeQuantizeConfig> weight,
            std::string step = "prepare");
  void validate() const override;
  std::string to_string() const override;
  /// Its base config's, or its own activation and weight configs.
  FakeQuantizeConfigs fake_quantize_configs() const override;
  /// prepare: Linear / Embedding -> fake-quantized modules (the base config's prepare_*);
  /// convert: QAT modules -> their float modules -> the base config's convert_linear.
  std::shared_ptr<nn::Module> apply(std::shared_ptr<nn::Module> module) const override;
};

/// Different configs for different modules: exact dotted names first, then "re:<regex>" keys
/// in insertion order (full match), then "_default".
struct ModuleFqnToConfig : QuantConfigBase {
  std::vector<std::pair<std::string, std::shared_ptr<QuantConfigBase>>> entries;
  std::string to_string() const override;
  void validate() const override;
  const QuantConfigBase* config_for(const std::string& fqn) const override;
};

/// The fake-quantize configs a base config implies for QAT (torchao's _infer_fake_quantize_configs):
/// base.fake_quantize_configs().
FakeQuantizeConfigs infer_fake_quantize_configs(const QuantConfigBase& base);

using FilterFn = std::function<bool(const nn::Module&, const std::string& fqn)>;
/// Transforms one module; returns its replacement (or the module itself when untouched).
using Handler = std::function<std::shared_ptr<nn::Module>(std::shared_ptr<nn::Module>, const QuantConfigBase&)>;
/// Registers a handler for a config type, used instead of the config's own apply() (torchao's
/// register_quantize_module_handler: to change what an existing config does to modules).
void register_quantize_handler(std::type_index config_type, Handler handler);

/// A filter selecting the layers the config can quantize: every Linear (a weight group size that
/// does not divide in_features gives each row a shorter last group, so nothing stays in float).
FilterFn compatible_linears(const QuantConfigBase& config);

/// Applies config to every module selected by filter_fn (default: Linear and its QAT/quantized
/// variants) and returns the model (a new object only when the root itself was replaced).
std::shared_ptr<nn::Module> quantize_(std::shared_ptr<nn::Module> model, const QuantConfigBase& config,
                                      FilterFn filter_fn = nullptr);

}  // namespace lowbit::qat
