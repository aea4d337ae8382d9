// MXQuantizedLinear: the real module MX QAT converts to (MXDynamicActivationMXWeightConfig;
// qat/quantize.h).
#pragma once
#include <optional>

#include "lowbit/qat/fake_quantizer.h"

namespace lowbit::qat {

/// A Linear whose weight is stored in an MX format: element codes (fp8: its float8 dtype; fp6:
/// uint8 codes; fp4: float4_e2m1fn_x2, two per byte, low nibble first) and e8m0 scales
/// (float8_e8m0fnu, N x ceil(K / block_size)) -- exactly what the weight's MXFakeQuantizeConfig
/// rounds it to. The activation is quantized per call with its config (or kept when null); the gemm
/// runs on the dequantized values as a bfloat16 gemm (exact products, float32 sums; the float32
/// path where a value would be a bfloat16 denormal), then the bias in x's dtype.
class MXQuantizedLinear : public nn::Module {
 public:
  MXQuantizedLinear(const nn::Linear& linear, const MXFakeQuantizeConfig& weight_config,
                    std::optional<MXFakeQuantizeConfig> activation_config);
  /// From a file: codes, scales, bias and the configs, all checked.
  MXQuantizedLinear(Tensor weight_codes, Tensor weight_scale, Tensor bias, int64_t in_features,
                    MXFakeQuantizeConfig weight_config, std::optional<MXFakeQuantizeConfig> activation_config);
  std::string type_name() const override { return "MXQuantizedLinear"; }
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x) override;
  nn::Attributes checkpoint_attributes() const override;
  static std::shared_ptr<MXQuantizedLinear> from_attributes(const nn::Attributes& attrs,
                                                            const nn::NamedTensors& tensors);
  /// The dequantized weight, float32 (N x K).
  Tensor dequantized_weight() const;
  int64_t in_features, out_features;
  Tensor weight, weight_scale, bias;  // weight: element codes as above
  MXFakeQuantizeConfig weight_config;
  std::optional<MXFakeQuantizeConfig> activation_config;
};

/// A Linear whose weight is stored in NVFP4: fp4 codes (float4_e2m1fn_x2, two per byte), e4m3
/// block scales (N x K/16) and, with per-tensor scaling, a float32 per-tensor scale (a 1-element
/// buffer). The activation is NVFP4-quantized per call. As torchao's _addmm_nvfp4_dispatch (spec
/// §9 item 9b): the gemm runs on the block-scaled values (fp4 value x e4m3 scale: exact in bfloat16,
/// so a bf16 gemm with float32 sums), its output is rounded to x's dtype, then multiplied by
/// (pts_x * pts_w) in that dtype, then the bias is added.
class NVFP4QuantizedLinear : public nn::Module {
 public:
  NVFP4QuantizedLinear(const nn::Linear& linear, const NVFP4FakeQuantizeConfig& weight_config,
                       std::optional<NVFP4FakeQuantizeConfig> activation_config);
  NVFP4QuantizedLinear(Tensor weight_codes, Tensor weight_scale, Tensor weight_per_tensor_scale, Tensor bias,
                       NVFP4FakeQuantizeConfig weight_config, std::optional<NVFP4FakeQuantizeConfig> activation_config);
  std::string type_name() const override { return "NVFP4QuantizedLinear"; }
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x) override;
  nn::Attributes checkpoint_attributes() const override;
  static std::shared_ptr<NVFP4QuantizedLinear> from_attributes(const nn::Attributes& attrs,
                                                               const nn::NamedTensors& tensors);
  int64_t in_features, out_features;
  Tensor weight, weight_scale, weight_per_tensor_scale, bias;
  NVFP4FakeQuantizeConfig weight_config;
  std::optional<NVFP4FakeQuantizeConfig> activation_config;
};

}  // namespace lowbit::qat
