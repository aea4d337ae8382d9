// Converted (real) quantized linears: weights stored as integer codes with per-block scales and
// zero points; int4 codes are packed two per byte, element 2i in the low nibble (bits 0-3) and
// element 2i+1 in the high nibble, each as a two's-complement 4-bit value.
//
// Two ways to run forward (QuantizedLinear::kernel):
//  * Kernel::Integer (default) — integer kernels where the scheme and the CPU allow:
//    int8 dynamic per-token activations x int2..int8 symmetric weights (per group or per channel):
//    an AVX-512 VNNI GEMM on int8 codes, one int32 sum per (row, column, group), scaled in float32;
//    weight-only int4 / int8 codes with up to 16 rows: a decode GEMV reading the packed codes.
//    Results differ from Kernel::Dequantize only by float32 rounding: |integer - dequantize| is
//    bounded by 1e-5 * sum_k |x_dq[k] * w_dq[k]| per output (tested), see docs/qat.md.
//  * Kernel::Dequantize — fake-quantizes the activation exactly as the QAT-prepared module does and
//    runs the dequantized weight through the float32 GEMM, so a converted model's outputs equal the
//    prepared model's bit for bit (torchao's IntxUnpackedToInt8Tensor semantics). Also what
//    Kernel::Integer falls back to for other schemes, for inputs that require grad, and on CPUs
//    without AVX-512 VNNI.
#pragma once
#include <mutex>

#include "lowbit/qat/fake_quantizer.h"

namespace lowbit::qat {

namespace kernels {
struct GroupedS8Weight;
}

class QuantizedLinear : public nn::Module {
 public:
  /// Quantizes linear.weight with weight_config; activation_config (optional) is applied
  /// dynamically to inputs. Bias is kept in float32 (shared with the source module).
  static std::shared_ptr<QuantizedLinear> from_linear(const nn::Linear& linear,
                                                      const std::optional<IntxFakeQuantizeConfig>& activation_config,
                                                      const IntxFakeQuantizeConfig& weight_config);
  std::string type_name() const override { return "QuantizedLinear"; }
  std::string extra_repr() const override;
  /// quant_scheme "intx_affine" and its scheme as structured attributes (weight_format, bits,
  /// shape and block_size as integer lists, mapping, packing, the activation config field by
  /// field); from_attributes rebuilds the module from them and its stored tensors.
  nn::Attributes checkpoint_attributes() const override;
  static std::shared_ptr<QuantizedLinear> from_attributes(const nn::Attributes& attrs, const nn::NamedTensors& tensors);
  Tensor forward(const Tensor& x) override;

  enum class Kernel { Integer, Dequantize };
  Kernel kernel = Kernel::Integer;
  /// The path forward takes for an input of `rows` rows (after flattening leading dims) when it
  /// does not require grad: "int8 GEMM (VNNI)", "weight-only GEMV" or "dequantize + float32 GEMM".
  std::string kernel_for(int64_t rows) const;
  /// Integer codes (out, in) as int8 (unpacked).
  Tensor weight_codes() const;
  /// Dequantized float32 weight (out, in).
  Tensor dequantized_weight() const;
  /// Stored bytes of codes + scales + zero points.
  int64_t weight_bytes() const;

  int64_t in_features = 0, out_features = 0;
  std::string weight_dtype;
  MappingType weight_mapping = MappingType::SYMMETRIC;
  Shape block_size;
  Tensor qdata, scale, zero_point, bias;  // qdata: packed uint8 (4-bit and below) or int8
  std::optional<IntxFakeQuantizeConfig> activation_config;

 private:
  bool integer_gemm_ok() const;
  bool weight_only_gemv_ok(int64_t rows) const;
  Tensor forward_integer_gemm(const Tensor& x2d) const;
  Tensor forward_weight_only_gemv(const Tensor& x2d) const;
  std::shared_ptr<const kernels::GroupedS8Weight> packed_weight() const;
  bool zero_points_all_zero() const;
  bool is_packed() const;  // codes two per byte (formats of 4 bits or fewer)

  mutable std::mutex pack_mutex_;
  mutable std::shared_ptr<const kernels::GroupedS8Weight> packed_;
  mutable std::vector<std::pair<const void*, uint64_t>> packed_key_;  // (storage, version) of qdata, scale, zero_point
  mutable std::pair<const void*, uint64_t> zp_zero_key_{nullptr, 0};
  mutable bool zp_all_zero_ = false;
  // the activation fake quantizer of the exact path, built once per activation_config
  mutable std::shared_ptr<FakeQuantizer> act_quantizer_;
  mutable std::string act_quantizer_key_;
};

/// Registers qat's modules with nn's module factories (QuantizedLinear), so that files holding
/// them can be rebuilt without a config (io::load_model calls it; calling it again is harmless).
void register_module_types();

}  // namespace lowbit::qat
