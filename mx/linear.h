// MX training (spec §4.5, §9 item 7): MXLinear runs the three gemms of a linear layer on MX
// operands, each blocked along its own gemm's reduction dim, cast from the saved high-precision
// tensors (torchao's mx_mm / MXLinear / MXFP8Linear).
//
// emulate = torchao's EMULATED kernel preference: operands dequantized (float32 code values times
// their power-of-two scales) and a float32 gemm, the output rounded to the input dtype. The fast
// mode (default) writes the same dequantized values as bfloat16 -- exact: an fp8/fp6/fp4 value
// times a power of two -- and runs a bfloat16 gemm with float32 accumulation; a gemm whose operand
// would hold bfloat16 denormals (which vdpbf16ps flushes) runs as emulate does.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "lowbit/mx/mx.h"
#include "lowbit/nn/layers.h"

namespace lowbit::mx {

/// torchao's MXLinearConfig (v0.16) / MXFP8TrainingOpConfig (HEAD) fields.
struct MXLinearConfig {
  int64_t block_size = 32;
  FormatId elem_dtype = FormatId::Float8E4M3FN;
  std::optional<FormatId> elem_dtype_weight_override;
  std::optional<FormatId> elem_dtype_grad_output_override;
  E8M0Rounding scale_calculation_mode = E8M0Rounding::Floor;
  /// grad_weight = Gᵀ·X in high precision (HEAD's MXFP8 recipe "wgrad_with_hp").
  bool wgrad_with_hp = false;
  /// torchao's EMULATED float32 reference gemms instead of the bf16 fast mode.
  bool emulate = false;

  FormatId weight_elem() const { return elem_dtype_weight_override.value_or(elem_dtype); }
  FormatId grad_output_elem() const { return elem_dtype_grad_output_override.value_or(elem_dtype); }
  /// Element formats of the MX table, block_size in [1, 2^20]; throws naming the field.
  void validate() const;
  /// "MXLinearConfig(block_size=32, elem_dtype=float8_e4m3fn, ..., scale_calculation_mode=FLOOR, ...)"
  std::string to_string() const;
  /// A recipe of mx_recipes(); throws naming the valid ones.
  static MXLinearConfig from_recipe_name(const std::string& name);
  bool operator==(const MXLinearConfig&) const = default;
};

/// The recipe table: torchao's names (v0.16's mxfp8_emulated, mxfp8_cublas, mxfp8_cublas_rceil,
/// mxfp4_emulated, mxfp4_cutlass; HEAD's mxfp8_rceil, mxfp8_rceil_wgrad_with_hp,
/// mxfp8_emulated_rceil) plus lowbit's MXFP6 and hybrid (e5m2 gradients) rows. On the CPU the
/// cublas/cutlass rows run the fast mode.
struct MXRecipe {
  const char* name;
  const char* description;
  MXLinearConfig (*config)();
};
const std::vector<MXRecipe>& mx_recipes();
std::string mx_recipe_names();

/// nn.Linear with MX gemms (torchao's MXLinear semantics); shares the weight and bias of the
/// Linear it replaces. Inputs (..., in_features) of the parameters' dtype (float32 or bfloat16);
/// the bias is added after the gemm in the output dtype and gets its gradient.
class MXLinear : public nn::Linear {
 public:
  MXLinear(const Tensor& weight, const Tensor& bias, const MXLinearConfig& config);
  std::string type_name() const override { return "MXLinear"; }
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x) override;
  nn::Attributes checkpoint_attributes() const override;
  const MXLinearConfig& config() const { return config_; }

 private:
  MXLinearConfig config_;
};

/// (module, fully qualified name) -> convert it?
using ModuleFilter = std::function<bool(const nn::Linear&, const std::string& fqn)>;
/// Replaces every plain nn::Linear passing filter by an MXLinear sharing its parameters; a root
/// Linear comes back as a new module. The config is validated first. Dimensions need not be
/// multiples of block_size (torchao requires it): a last block along a dimension may be shorter.
std::shared_ptr<nn::Module> convert_to_mx_training(const std::shared_ptr<nn::Module>& model,
                                                   const MXLinearConfig& config = {},
                                                   const ModuleFilter& filter = nullptr);

/// Registers MXLinear and NVFP4Linear with the module factories (io::load_model rebuilds them);
/// idempotent.
void register_module_types();

}  // namespace lowbit::mx
