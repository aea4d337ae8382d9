// Float8QuantizedLinear: the real module torchao's float8 inference configs produce
// (Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig; qat/quantize.h).
#pragma once
#include <optional>

#include "lowbit/qat/fake_quantizer.h"

namespace lowbit::qat {

/// A Linear whose weight is stored as float8 codes with float32 scales (per output row or per
/// tensor), exactly what the weight's Float8FakeQuantizeConfig rounds it to. Without an
/// activation config the forward is linear(x, decode(codes) * scale, bias) in x's dtype -- the
/// fake-quantized model's output bit for bit. With one, x is quantized per call (per row or per
/// tensor) and the gemm runs on the codes as a bfloat16 gemm (exact products, float32 sums), the
/// scales applied after: out = acc * (s_x[i] * s_w[j]) + bias.
class Float8QuantizedLinear : public nn::Module {
 public:
  Float8QuantizedLinear(const nn::Linear& linear, const Float8FakeQuantizeConfig& weight_config,
                        std::optional<Float8FakeQuantizeConfig> activation_config);
  /// From a file: codes (N x K, a float8 dtype), scales, bias and the configs, all checked.
  Float8QuantizedLinear(Tensor weight_codes, Tensor weight_scale, Tensor bias, Float8FakeQuantizeConfig weight_config,
                        std::optional<Float8FakeQuantizeConfig> activation_config);
  std::string type_name() const override { return "Float8QuantizedLinear"; }
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x) override;
  nn::Attributes checkpoint_attributes() const override;
  static std::shared_ptr<Float8QuantizedLinear> from_attributes(const nn::Attributes& attrs,
                                                                const nn::NamedTensors& tensors);
  /// decode(codes) * scale, float32 (N x K)
  Tensor dequantized_weight() const;
  int64_t in_features, out_features;
  Tensor weight, weight_scale, bias;  // weight: float8 codes
  Float8FakeQuantizeConfig weight_config;
  std::optional<Float8FakeQuantizeConfig> activation_config;
};

}  // namespace lowbit::qat
