// Converted (real) quantized linears: weights stored as integer codes with per-block scales and
// zero points; int4 codes are packed two per byte, element 2i in the low nibble (bits 0-3) and
// element 2i+1 in the high nibble, each as a two's-complement 4-bit value.
//
// forward runs the dequantized weight (cached) through the float32 GEMM after fake-quantizing
// the activation exactly as the QAT-prepared module does, so a converted model's outputs equal
// the prepared model's bit for bit (torchao's IntxUnpackedToInt8Tensor semantics).
#pragma once
#include "lowbit/qat/fake_quantizer.h"

namespace lowbit::qat {

class QuantizedLinear : public nn::Module {
 public:
  /// Quantizes linear.weight with weight_config; activation_config (optional) is applied
  /// dynamically to inputs. Bias is kept in float32 (shared with the source module).
  static std::shared_ptr<QuantizedLinear> from_linear(const nn::Linear& linear, const std::optional<IntxFakeQuantizeConfig>& activation_config,
                                                      const IntxFakeQuantizeConfig& weight_config);
  std::string type_name() const override { return "QuantizedLinear"; }
  std::string extra_repr() const override;
  /// quant_scheme "intx_affine" and its parameters (bits, block_size, packing, nibble order, ...).
  std::map<std::string, std::string> checkpoint_attributes() const override;
  Tensor forward(const Tensor& x) override;
  /// Integer codes (out, in) as int8 (unpacked).
  Tensor weight_codes() const;
  /// Dequantized float32 weight (out, in).
  Tensor dequantized_weight() const;
  /// Stored bytes of codes + scales + zero points.
  int64_t weight_bytes() const;

  int64_t in_features = 0, out_features = 0;
  std::string weight_dtype;
  Shape block_size;
  Tensor qdata, scale, zero_point, bias;  // qdata: packed uint8 (4-bit and below) or int8
  std::optional<IntxFakeQuantizeConfig> activation_config;

 private:
  mutable Tensor dequant_cache_;
};

}  // namespace lowbit::qat
