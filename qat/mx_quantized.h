// MXQuantizedLinear: the real module MX QAT converts to (MXDynamicActivationMXWeightConfig;
// qat/quantize.h).
#pragma once
#include <mutex>
#include <optional>
#include <vector>

#include "lowbit/qat/fake_quantizer.h"

namespace lowbit::qat {

namespace kernels {
struct MXInt8Weight;
}

/// A Linear whose weight is stored in an MX format: element codes (fp8: its float8 dtype; fp6:
/// uint8 codes; fp4: float4_e2m1fn_x2, two per byte, low nibble first) and e8m0 scales
/// (float8_e8m0fnu, N x ceil(K / block_size)) -- exactly what the weight's MXFakeQuantizeConfig
/// rounds it to. The activation is quantized per call with its config (or kept when null). Two
/// ways to run the gemm (`kernel`):
///  * Kernel::Integer (default) where both element formats are int8-exact (fp4 e2m1 values x 2,
///    fp6 e2m3 x 8), the block sizes agree, K % block == 0 and N % 16 == 0 on an AVX-512 VNNI CPU:
///    the int8 VNNI GEMM (one exact int32 sum per block, scaled by the product of the two
///    power-of-two scales, float32 sum over blocks: within K/block float32 roundings of exact).
///  * Kernel::Dequantize, and the fallback otherwise: a bfloat16 gemm on the dequantized values
///    (exact products, float32 sums; the float32 path where a value would be a bfloat16 denormal).
///    The bfloat16 weight is made once and kept (2 bytes per weight) until the weight changes.
/// Then the bias in float32 and the output in x's dtype.
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
  enum class Kernel { Integer, Dequantize };
  Kernel kernel = Kernel::Integer;
  /// The path forward takes: "int8 GEMM (VNNI)" or "dequantize + bfloat16 GEMM".
  std::string kernel_name() const;
  int64_t in_features, out_features;
  Tensor weight, weight_scale, bias;  // weight: element codes as above
  MXFakeQuantizeConfig weight_config;
  std::optional<MXFakeQuantizeConfig> activation_config;

 private:
  bool integer_gemm_ok() const;
  Tensor forward_integer_gemm(const Tensor& x2d) const;
  std::shared_ptr<const kernels::MXInt8Weight> packed_weight() const;
  mutable std::mutex pack_mutex_;
  mutable std::shared_ptr<const kernels::MXInt8Weight> packed_;
  mutable std::vector<std::pair<const void*, uint64_t>> packed_key_;  // (storage, version) of weight, weight_scale
  // Kernel::Dequantize's operand: the dequantized weight in bfloat16 (2 bytes per weight, made on
  // the first call and again after the weight or its scales change) and whether a value of it is
  // below bfloat16's normal range (then the float32 gemm is used)
  std::pair<Tensor, bool> bf16_weight() const;
  std::vector<std::pair<const void*, uint64_t>> weight_key() const;
  mutable Tensor bf16_weight_;
  mutable bool bf16_weight_sub_ = false;
  mutable std::vector<std::pair<const void*, uint64_t>> bf16_key_;
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
