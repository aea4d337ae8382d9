// Float8 training (torchao.float8, spec §3 and §9 items 3-5): dynamic casts to float8 e4m3fn /
// e5m2 with tensorwise or axiswise (rowwise) amax scaling, Float8LinearConfig and its named
// recipes, Float8Linear (the three gemms of a linear layer with float8 operands) and
// convert_to_float8_training with torchao's auto filter.
//
// Two execution modes. emulate = torchao's reference: every float8 operand is dequantized to
// float32 (code / scale) and the gemm runs in float32. The default fast mode runs each float8
// gemm as a bfloat16 gemm on the codes (every float8 value is exact in bfloat16 and every product
// of two is exact in float32) with float32 accumulation, and applies the scales to the output:
// out[i][j] = acc[i][j] * ((1 / s_a[i]) * (1 / s_b[j])). See docs/float8.md for the bound between
// the two.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "lowbit/autograd/tensor.h"
#include "lowbit/nn/layers.h"

namespace lowbit::float8 {

/// How an operand is cast: DYNAMIC (scale from its amax) or DISABLED (kept in high precision).
enum class ScalingType { Dynamic, Disabled };
/// One scale for the whole tensor, one per row/column (axiswise), or one per block (blockwise:
/// TransformerEngine's Float8BlockScaling, beyond torchao).
enum class ScalingGranularity { Tensorwise, Axiswise, Blockwise };
/// torchao's short names: "dyn" / "dis", "ten" / "axs" (and lowbit's "blk").
const char* short_str(ScalingType t);
const char* short_str(ScalingGranularity g);

/// The cast of one gemm operand. target_dtype unset = the operand's default (input and weight:
/// float8_e4m3fn, grad_output: float8_e5m2), filled in by Float8LinearConfig::resolved().
struct CastConfig {
  ScalingType scaling_type = ScalingType::Dynamic;
  ScalingGranularity scaling_granularity = ScalingGranularity::Tensorwise;
  std::optional<DType> target_dtype;
  /// Blockwise only: block_dims 1 = runs of 1 x block_size along the reduction dimension of each
  /// gemm the operand feeds (TransformerEngine's 1D blocks: a row's runs in one gemm, a column's
  /// in the other); 2 = block_size x block_size tiles (one cast serves both gemms).
  int block_dims = 1;
  int64_t block_size = 128;
  /// "dyn_ten_e4m3" (torchao's CastConfig.short_str; needs a target dtype); blockwise:
  /// "dyn_b1x128_e4m3", "dyn_b128x128_e4m3".
  std::string short_str() const;
  /// Parses short_str()'s form back ("dyn_axs_e4m3", "dyn_b1x128_e4m3").
  static CastConfig parse(const std::string& s);
  bool enabled() const { return scaling_type == ScalingType::Dynamic; }
  bool operator==(const CastConfig&) const = default;
};

/// torchao's Float8GemmConfig. use_fast_accum selects a lower-precision accumulation on GPUs;
/// lowbit always accumulates in float32, so it is recorded and printed only.
struct Float8GemmConfig {
  bool use_fast_accum = false;
  bool operator==(const Float8GemmConfig&) const = default;
};

/// torchao's Float8LinearConfig (config.py): the casts of the three gemms' operands.
struct Float8LinearConfig {
  CastConfig cast_config_input;
  std::optional<CastConfig> cast_config_input_for_grad_weight;  // unset: cast_config_input
  CastConfig cast_config_weight;
  std::optional<CastConfig> cast_config_weight_for_grad_input;  // unset: cast_config_weight
  CastConfig cast_config_grad_output;
  std::optional<CastConfig> cast_config_grad_output_for_grad_weight;  // unset: cast_config_grad_output
  Float8GemmConfig gemm_config_output{true};
  Float8GemmConfig gemm_config_grad_input;
  Float8GemmConfig gemm_config_grad_weight;
  bool enable_fsdp_float8_all_gather = false;  // tensorwise weights only; no effect without FSDP
  bool pad_inner_dim = false;                  // zero-pad K to a multiple of 16 (exact: pads add 0)
  bool emulate = false;                        // torchao's float32 reference instead of the bf16 fast mode
  bool round_scales_to_power_of_2 = false;

  /// torchao's __post_init__: unset *_for_* configs copy their operand's config, unset target
  /// dtypes get the operand's default; then the rules: both operands of a gemm enabled or both
  /// disabled, an operand cast to one dtype in both gemms it feeds, axiswise only with dynamic
  /// scaling, a float8 target dtype, fsdp all-gather only with a tensorwise weight; and
  /// lowbit's for blockwise: dynamic scaling, block_dims 1 or 2, block_size >= 1, and power-of-2
  /// scales unless emulate (the fast mode folds block scales into exact bfloat16 operands). Throws
  /// lowbit::Error naming the rule.
  Float8LinearConfig resolved() const;
  /// "tensorwise", "rowwise", "rowwise_with_gw_hp" (torchao), "blockwise" (lowbit:
  /// TransformerEngine's Float8BlockScaling -- 1 x 128 input and grad_output blocks, 128 x 128
  /// weight tiles, e4m3 everywhere, power-of-2 scales). Throws naming the valid names.
  static Float8LinearConfig from_recipe_name(const std::string& name);
  /// The cast part of Float8Linear's repr: "i:dyn_ten_e4m3,w:dyn_ten_e4m3,go:dyn_ten_e5m2" plus
  /// i_gw/w_gi/go_gw entries where they differ (resolves first).
  std::string cast_configs_str() const;
  /// Every field, for logs and errors.
  std::string to_string() const;
  bool operator==(const Float8LinearConfig&) const = default;
};

/// The recipe table (torchao's Float8LinearRecipeName): feeds from_recipe_name, the CLI's
/// `lowbit recipes` and run-config validation.
struct Float8Recipe {
  const char* name;
  const char* description;
  Float8LinearConfig (*config)();
};
const std::vector<Float8Recipe>& float8_recipes();
/// "tensorwise, rowwise, rowwise_with_gw_hp": the table's names, for help texts and errors.
std::string float8_recipe_names();

/// torchao's Float8TrainingTensor: float8 codes and the multiplier they were cast with
/// (x_fp8 = cast(fp32(x) * scale)).
struct Float8Tensor {
  Tensor data;   // float8_e4m3fn / float8_e5m2 codes, the input's shape
  Tensor scale;  // float32: 0-dim (tensorwise), the input's shape with 1 on axiswise_dim, or blocks
  DType orig_dtype = DType::Float32;
  std::optional<int64_t> axiswise_dim;  // the reduced dim of an axiswise scale (normalized >= 0)
  /// Blockwise: the block shape over (rows, cols) = (product of the leading dims, last dim);
  /// scale is (rows / block_rows, cols / block_cols) rounded up.
  int64_t block_rows = 0, block_cols = 0;
  /// data.to(orig_dtype) / scale with torch's promotion (spec §9 item 4): a tensorwise (0-dim)
  /// scale keeps the input dtype (bfloat16 stays bfloat16), an axiswise or blockwise scale
  /// promotes to float32.
  Tensor dequantize() const;
};
/// hp_tensor_to_float8_dynamic: amax over the whole tensor (tensorwise) or over axiswise_dim
/// (keepdim), scale = fp8max / max(amax, 1e-12) in float64 then float32, optionally
/// 2^floor(log2(scale)) in float32 (§9 item 3), codes = saturating RNE cast of fp32(x) * scale.
/// x: float32 or bfloat16; float8_dtype: float8_e4m3fn, float8_e5m2 or their fnuz variants.
Float8Tensor to_float8_dynamic(const Tensor& x, DType float8_dtype,
                               ScalingGranularity granularity = ScalingGranularity::Tensorwise,
                               int64_t axiswise_dim = -1, bool round_scales_to_power_of_2 = false);
/// The blockwise cast (TransformerEngine's Float8BlockScaling): x (..., cols) viewed as rows x cols
/// (rows = the leading dims' product) split into block_rows x block_cols blocks (ragged at the
/// ends); per block amax, scale = core::te_amax_to_scale (float32 division; 1 for a zero, inf or
/// NaN amax; optional power of 2 by clearing the mantissa), codes = saturating RNE cast of
/// fp32(x) * scale. block_rows = 1: TE's 1D blocks; block_rows = block_cols: its 2D tiles.
Float8Tensor to_float8_blockwise(const Tensor& x, DType float8_dtype, int64_t block_rows = 1, int64_t block_cols = 128,
                                 bool round_scales_to_power_of_2 = true);
/// hp_tensor_and_scale_to_float8: the cast with a given float32 scale (a multiplier; 0-dim or
/// broadcastable to x).
Float8Tensor to_float8_with_scale(const Tensor& x, const Tensor& scale, DType float8_dtype);

/// nn.Linear with its three gemms in float8 (torchao's Float8Linear; spec §3.4). Shares the
/// weight and bias of the Linear it replaces. Inputs (..., in_features) of float32 or bfloat16
/// (the parameters' dtype); the bias is added outside the float8 gemm, in the output dtype.
class Float8Linear : public nn::Linear {
 public:
  Float8Linear(const Tensor& weight, const Tensor& bias, const Float8LinearConfig& config);
  static std::shared_ptr<Float8Linear> from_linear(const nn::Linear& linear, const Float8LinearConfig& config);
  std::string type_name() const override { return "Float8Linear"; }
  /// nn.Linear's repr + ", cast_configs=..." and torchao's stray trailing quote.
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x) override;
  nn::Attributes checkpoint_attributes() const override;
  const Float8LinearConfig& config() const { return config_; }

 private:
  Float8LinearConfig config_;  // resolved
};

/// Decides which Linear layers convert_to_float8_training replaces: (module, fully qualified name).
using ModuleFilter = std::function<bool(const nn::Linear&, const std::string& fqn)>;

/// Replaces every nn::Linear (post-order; also subclasses that are plain Linears, not already
/// float8 or quantized) for which filter(linear, fqn) is true ("" for the root) by a
/// Float8Linear sharing its parameters. A root Linear is returned as a new module. Returns the
/// (possibly new) root.
std::shared_ptr<nn::Module> convert_to_float8_training(const std::shared_ptr<nn::Module>& model,
                                                       const Float8LinearConfig& config = {},
                                                       const ModuleFilter& filter = nullptr);
/// torchao's _auto_filter_for_recipe: skip a layer whose fqn contains any of filter_fqns
/// (case-sensitive), whose in or out features is not a multiple of 16, or whose shape is too
/// small for float8 to pay off on a GPU (tensorwise: K <= 4096 and N <= 1024; rowwise: N <= 2048,
/// K <= 1024, or N <= 4096 and K <= 2048). rowwise_with_gw_hp throws (unsupported, as torchao);
/// blockwise (no torchao filter) uses the rowwise thresholds.
ModuleFilter auto_filter_for_recipe(const std::string& recipe, const std::vector<std::string>& filter_fqns);

/// Registers Float8Linear with the module factories (io::load_model rebuilds it); idempotent.
void register_module_types();

}  // namespace lowbit::float8
