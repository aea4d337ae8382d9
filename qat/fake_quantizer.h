// Fake quantizers for QAT with torchao's configs (spec §2.1-2.3).
//
// IntxFakeQuantizeConfig follows torchao field for field (defaults and repr included). One
// deliberate divergence: asymmetric per-group/per-channel weights. torchao computes tinygemm-style
// float zero points on an unsigned range, truncates them to int32 and then uses them as integer
// zero points on the dtype's range (spec §2.2), which clamps away much of each group (its own
// golden vectors show 72% relative error for uint4 g32 asym). lowbit computes ordinary
// asymmetric affine qparams on the dtype's range (choose_qparams_affine ASYMMETRIC, INT domain),
// so every group is represented; everything else matches torchao bit for bit.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "lowbit/nn/layers.h"
#include "lowbit/core/format.h"
#include "lowbit/core/scale.h"
#include "lowbit/qat/affine.h"

namespace lowbit::qat {

// ---- granularities (torchao.quantization.granularity) ----
struct PerTensor {};
struct PerAxis {
  int64_t axis = 0;
};
struct PerGroup {
  int64_t group_size = 32;
};
struct PerRow {
  int64_t dim = -1;
};
struct PerToken {};
using Granularity = std::variant<PerTensor, PerAxis, PerGroup, PerRow, PerToken>;
/// "PerGroup(group_size=32)", as torchao prints them.
std::string to_string(const Granularity& g);
/// torchao's get_block_size: the block_size a granularity gives for a tensor shape.
Shape block_size_for(const Granularity& g, const Shape& shape);

class FakeQuantizer;

/// Base of every fake-quantize config (Intx now; Float8 and MX configs derive from it too). A
/// config answers for itself: how it fake-quantizes, whether it needs an initializing forward,
/// and which real module a Linear becomes at convert. Code that holds a config never asks for
/// its concrete type.
struct FakeQuantizeConfigBase {
  virtual ~FakeQuantizeConfigBase() = default;
  virtual std::string to_string() const = 0;
  virtual void validate() const = 0;
  virtual std::unique_ptr<FakeQuantizeConfigBase> clone() const = 0;
  /// The forward of a FakeQuantizer holding this config (the quantizer keeps the state: last or
  /// learned qparams).
  virtual Tensor fake_quantize(const Tensor& x, FakeQuantizer& quantizer) const = 0;
  /// Whether initialize_fake_quantizers must run a forward first (range learning).
  virtual bool needs_initialization() const { return false; }
  /// The real quantized module `linear` becomes at convert when this is its weight config and
  /// `activation` (may be null) its activation config. Throws for configs without one.
  virtual std::shared_ptr<nn::Module> quantized_linear(const nn::Linear& linear,
                                                       const FakeQuantizeConfigBase* activation) const;
  /// Whether a FakeQuantizedLinear whose weight has this config passes a gradient to its bias
  /// (false only in torchao's MX parity mode, whose autograd function returns none).
  virtual bool bias_gets_gradient() const { return true; }
};
using FakeQuantizeConfigPtr = std::shared_ptr<const FakeQuantizeConfigBase>;

struct IntxFakeQuantizeConfig : FakeQuantizeConfigBase {
  std::string dtype = "int8";  // int1..int8, uint1..uint8
  std::optional<Granularity> granularity;
  MappingType mapping_type = MappingType::SYMMETRIC;
  DType scale_precision = kFloat32;
  DType zero_point_precision = kInt32;
  ZeroPointDomain zero_point_domain = ZeroPointDomain::INT;
  bool is_dynamic = true;
  bool range_learning = false;
  std::optional<double> eps;

  IntxFakeQuantizeConfig() = default;
  /// torchao's constructor forms: granularity as a value or as "per_token" / "per_channel" /
  /// "per_group" (with group_size); group_size alone means PerGroup; is_symmetric alone sets the
  /// mapping. Conflicting arguments throw.
  IntxFakeQuantizeConfig(std::string dtype, std::optional<Granularity> granularity,
                         std::optional<int64_t> group_size = std::nullopt,
                         std::optional<bool> is_symmetric = std::nullopt,
                         std::optional<MappingType> mapping_type = std::nullopt);
  static IntxFakeQuantizeConfig from_string_granularity(const std::string& dtype, const std::string& granularity,
                                                        std::optional<int64_t> group_size = std::nullopt,
                                                        std::optional<bool> is_symmetric = std::nullopt);
  void set_group_size(int64_t g) { granularity = PerGroup{g}; }
  void set_is_symmetric(bool s) { mapping_type = s ? MappingType::SYMMETRIC : MappingType::ASYMMETRIC; }
  std::pair<int64_t, int64_t> range() const { return quant_range(dtype); }
  std::string to_string() const override;
  void validate() const override;
  std::unique_ptr<FakeQuantizeConfigBase> clone() const override {
    return std::make_unique<IntxFakeQuantizeConfig>(*this);
  }
  Tensor fake_quantize(const Tensor& x, FakeQuantizer& quantizer) const override;
  bool needs_initialization() const override { return range_learning; }
  /// Every field as structured checkpoint attributes, each key prefixed ("activation_dtype",
  /// "activation_granularity", "activation_group_size", ...); from_attributes reads them back
  /// and validates.
  nn::Attributes to_attributes(const std::string& prefix) const;
  static IntxFakeQuantizeConfig from_attributes(const nn::Attributes& attrs, const std::string& prefix,
                                                const std::string& type_name);
  /// A QuantizedLinear (activation: null or an IntxFakeQuantizeConfig).
  std::shared_ptr<nn::Module> quantized_linear(const nn::Linear& linear,
                                               const FakeQuantizeConfigBase* activation) const override;
};

/// torchao's Float8FakeQuantizeConfig (spec §2.2, §9 items 1-2): per-row (last dim) or
/// per-tensor float8 fake quantization. scale = clamp(amax, hp_value_lb, hp_value_ub) / fp8max,
/// computed in the input's dtype (bfloat16 inputs get a bfloat16-rounded scale) then float32, no
/// eps; y = fp32(fp8(clamp(fp32(x) / scale, +-fp8max))) * scale in the input's dtype.
///
/// backward = StraightThrough (lowbit's default, a deliberate divergence): grad_i = g_i * mask_i
/// (mask: |x_i / scale| <= fp8max), no float8 rounding of the gradient, no scale term.
/// TorchaoParity reproduces what autograd computes through torchao's ops: the gradient is itself
/// cast to float8 without saturation, grad_i = fp8(g_i * scale) * mask_i / scale, and the scale is
/// differentiable: each block's amax element(s) also get sign(x) (sum g q - sum gq (x/s)/s) /
/// fp8max / ties, which makes a block whose term is NaN or inf NaN throughout. Real gradients times
/// a row's scale mostly fall below float8's smallest value and vanish: an MLP trained with it
/// reaches 26% on Fashion-MNIST where straight-through reaches fp32's 87%
/// (examples/float8_qat_backward.cpp). guard_zero_blocks (off by default, for parity) makes an
/// all-zero block without hp_value_lb give zeros and a straight-through gradient instead of NaN
/// (pytorch/ao#3356).
struct Float8FakeQuantizeConfig : FakeQuantizeConfigBase {
  enum class Backward { TorchaoParity, StraightThrough };
  DType dtype = kFloat8_e4m3fn;
  Granularity granularity = PerRow{};  // PerRow (last dim) or PerTensor
  std::optional<double> hp_value_lb, hp_value_ub;
  Backward backward = Backward::StraightThrough;
  bool guard_zero_blocks = false;

  Float8FakeQuantizeConfig() = default;
  Float8FakeQuantizeConfig(DType dtype, Granularity granularity, std::optional<double> hp_value_lb = std::nullopt,
                           std::optional<double> hp_value_ub = std::nullopt);
  /// torchao's repr: "Float8FakeQuantizeConfig(dtype=torch.float8_e4m3fn, granularity=PerRow(dim=-1),
  /// hp_value_lb=None, hp_value_ub=None)" (", backward=torchao_parity" and the guard appended when
  /// set).
  std::string to_string() const override;
  void validate() const override;
  std::unique_ptr<FakeQuantizeConfigBase> clone() const override {
    return std::make_unique<Float8FakeQuantizeConfig>(*this);
  }
  Tensor fake_quantize(const Tensor& x, FakeQuantizer& quantizer) const override;
  /// The codes (this dtype, x's shape) and float32 scales ((..., 1) per row, (1, 1) per tensor)
  /// the fake quantization rounds x to: fake_quantize(x) = decode(codes) * scale.
  struct Quantized {
    Tensor codes, scale;
  };
  Quantized quantize(const Tensor& x) const;
  /// A Float8QuantizedLinear (float8 codes + scales; activation: null or a Float8FakeQuantizeConfig).
  std::shared_ptr<nn::Module> quantized_linear(const nn::Linear& linear,
                                               const FakeQuantizeConfigBase* activation) const override;
};

/// torchao's MXFakeQuantizeConfig (prototype/qat/mx.py): fake quantization to an MX format --
/// blocks of block_size along the last dim with an e8m0 scale (scaling_mode, default RCEIL), the
/// elements cast to `dtype` (fp8 e4m3fn / e5m2, fp6 e2m3 / e3m2, fp4 e2m1; default fp4 as torchao
/// on PyTorch >= 2.8); forward = MXTensor dequantization in the input's dtype, bit-exact with
/// to_mx + dequantize. Backward: straight through (torchao's MXFakeQuantizedLinear uses the
/// dequantized operands: grad_input = G·W_fq, grad_weight = Gᵀ·X_fq). torchao's linear gives the
/// bias no gradient; lowbit does, unless torchao_bias_parity. A last block along the last dim may
/// be shorter (torchao requires a multiple of block_size).
struct MXFakeQuantizeConfig : FakeQuantizeConfigBase {
  core::FormatId dtype = core::FormatId::Float4E2M1FN;
  int64_t block_size = 32;
  core::E8M0Rounding scaling_mode = core::E8M0Rounding::RCeil;
  bool torchao_bias_parity = false;

  MXFakeQuantizeConfig() = default;
  MXFakeQuantizeConfig(core::FormatId dtype, int64_t block_size = 32,
                       core::E8M0Rounding scaling_mode = core::E8M0Rounding::RCeil);
  /// "MXFakeQuantizeConfig(dtype=fp4_e2m1, block_size=32, scaling_mode=RCEIL, kernel_preference=EMULATED)"
  std::string to_string() const override;
  void validate() const override;
  std::unique_ptr<FakeQuantizeConfigBase> clone() const override {
    return std::make_unique<MXFakeQuantizeConfig>(*this);
  }
  Tensor fake_quantize(const Tensor& x, FakeQuantizer& quantizer) const override;
  /// An MXQuantizedLinear (MX codes + e8m0 scales; activation: null or an MXFakeQuantizeConfig).
  std::shared_ptr<nn::Module> quantized_linear(const nn::Linear& linear,
                                               const FakeQuantizeConfigBase* activation) const override;
  bool bias_gets_gradient() const override { return !torchao_bias_parity; }
};

/// torchao's NVFP4FakeQuantizeConfig (prototype/qat/nvfp4.py): fake quantization to NVFP4 --
/// 16-element blocks of fp4 e2m1 with e4m3 block scales and, with use_per_tensor_scale, a dynamic
/// float32 per-tensor scale amax / (448 * 6) -- forward = NVFP4Tensor dequantization in the input's
/// dtype (bit-exact with to_nvfp4 + dequantize), backward straight through. torchao has no CPU
/// path for it (its linear always calls _scaled_mm); lowbit's follows the formulas (spec §4.7).
/// The last dim must be a multiple of 16.
struct NVFP4FakeQuantizeConfig : FakeQuantizeConfigBase {
  bool use_per_tensor_scale = true;
  NVFP4FakeQuantizeConfig() = default;
  explicit NVFP4FakeQuantizeConfig(bool use_per_tensor_scale) : use_per_tensor_scale(use_per_tensor_scale) {}
  /// "NVFP4FakeQuantizeConfig(use_per_tensor_scale=True)"
  std::string to_string() const override;
  void validate() const override {}
  std::unique_ptr<FakeQuantizeConfigBase> clone() const override {
    return std::make_unique<NVFP4FakeQuantizeConfig>(*this);
  }
  Tensor fake_quantize(const Tensor& x, FakeQuantizer& quantizer) const override;
  /// An NVFP4QuantizedLinear (activation: null or an NVFP4FakeQuantizeConfig).
  std::shared_ptr<nn::Module> quantized_linear(const nn::Linear& linear,
                                               const FakeQuantizeConfigBase* activation) const override;
};

/// nn::Module applying a fake-quantize config. enabled = false makes it the identity.
class FakeQuantizer : public nn::Module {
 public:
  explicit FakeQuantizer(const FakeQuantizeConfigBase& config);
  std::string type_name() const override { return "FakeQuantizer"; }
  /// FakeQuantizer(IntxFakeQuantizeConfig(...)) — printed whole, like torchao.
  std::string extra_repr() const override { return config_->to_string(); }
  Tensor forward(const Tensor& x) override;
  const FakeQuantizeConfigBase& config() const { return *config_; }
  bool enabled = true;
  /// qparams of the last forward (shape = blocks of the input). With range_learning, after
  /// initialize_fake_quantizers: the learnable parameters "scale" (and "zero_point" for
  /// asymmetric mappings; a zero buffer for symmetric ones).
  Tensor scale, zero_point;
  /// Whether range-learning qparams exist (set by the forward run by initialize_fake_quantizers).
  bool range_initialized() const { return range_initialized_; }
  /// Whether initialize_fake_quantizers is running its forward now (configs create their
  /// learnable qparams then, and call mark_range_initialized()).
  bool initializing() const { return initializing_; }
  void mark_range_initialized() { range_initialized_ = true; }

 private:
  friend void initialize_fake_quantizers(nn::Module& model, const Tensor& example_inputs);
  std::unique_ptr<FakeQuantizeConfigBase> config_;
  bool initializing_ = false, range_initialized_ = false;
};

/// torchao's initialize_fake_quantizers: runs one forward of `example_inputs` (without gradients)
/// through the model so that every fake quantizer configured with range_learning computes its
/// qparams once and turns them into parameters: scale = max(scale, 1e-9) learnable, zero point
/// learnable (asymmetric: clamp(round(zp), qmin, qmax)) or zero (symmetric). Create the optimizer
/// afterwards. A range-learning quantizer used before this throws.
void initialize_fake_quantizers(nn::Module& model, const Tensor& example_inputs);

/// A module that QAT prepare made: convert turns it back into its float module first (whatever
/// its config kind).
struct QATModule {
  virtual ~QATModule() = default;
  /// The float module sharing this one's parameters (no copy, no random numbers).
  virtual std::shared_ptr<nn::Module> to_float() const = 0;
};

/// Linear whose input and/or weight pass through fake quantizers (bias never does).
class FakeQuantizedLinear : public nn::Linear, public QATModule {
 public:
  FakeQuantizedLinear(int64_t in_features, int64_t out_features, bool bias,
                      const FakeQuantizeConfigBase* activation_config, const FakeQuantizeConfigBase* weight_config);
  /// Around existing parameters (shared; no random numbers drawn).
  FakeQuantizedLinear(const Tensor& weight, const Tensor& bias, const FakeQuantizeConfigBase* activation_config,
                      const FakeQuantizeConfigBase* weight_config);
  /// Wraps an existing Linear, sharing its parameters.
  static std::shared_ptr<FakeQuantizedLinear> from_linear(const nn::Linear& linear,
                                                          const FakeQuantizeConfigBase* activation_config,
                                                          const FakeQuantizeConfigBase* weight_config);
  /// A plain Linear sharing this module's parameters.
  std::shared_ptr<nn::Linear> to_linear() const;
  std::shared_ptr<nn::Module> to_float() const override { return to_linear(); }
  std::string type_name() const override { return "FakeQuantizedLinear"; }
  Tensor forward(const Tensor& x) override;
  void enable_fake_quant(bool on);
  std::shared_ptr<FakeQuantizer> activation_fake_quantizer, weight_fake_quantizer;  // either may be null

 private:
  void add_quantizers(const FakeQuantizeConfigBase* activation_config, const FakeQuantizeConfigBase* weight_config);
};

/// Embedding whose table is fake-quantized (weight-only).
class FakeQuantizedEmbedding : public nn::Embedding, public QATModule {
 public:
  FakeQuantizedEmbedding(int64_t num_embeddings, int64_t embedding_dim, const FakeQuantizeConfigBase& weight_config);
  /// Around an existing weight (shared; no random numbers drawn).
  FakeQuantizedEmbedding(const Tensor& weight, const FakeQuantizeConfigBase& weight_config);
  static std::shared_ptr<FakeQuantizedEmbedding> from_embedding(const nn::Embedding& e,
                                                                const FakeQuantizeConfigBase& weight_config);
  std::shared_ptr<nn::Embedding> to_embedding() const;
  std::shared_ptr<nn::Module> to_float() const override { return to_embedding(); }
  std::string type_name() const override { return "FakeQuantizedEmbedding"; }
  Tensor forward(const Tensor& indices) override;
  std::shared_ptr<FakeQuantizer> weight_fake_quantizer;
};

/// For quantized_linear(): the activation config as the weight config's own type (none when
/// null); another kind is refused ("convert: <kind> weight needs <kind> activation config (or
/// none), got ...", kind e.g. "an MX").
template <typename Config>
std::optional<Config> activation_of_kind(const FakeQuantizeConfigBase* activation, const char* kind) {
  if (!activation) return std::nullopt;
  const auto* a = dynamic_cast<const Config*>(activation);
  LOWBIT_CHECK(a != nullptr, "convert: {} weight needs {} activation config (or none), got {}", kind, kind,
               activation->to_string());
  return *a;
}

}  // namespace lowbit::qat
