// NVFP4 training (spec §9 item 10; torchao's nvfp4_linear / NVFP4TrainingConfig, which runs only on
// sm100 GPUs): all three gemms of a linear layer on NVFP4 operands, on the CPU.
//
//  * forward  out = X·Wᵀ: X in 1×16 blocks along K, round-to-nearest-even, no RHT; W in 16×16
//    tiles (one e4m3 scale per tile), so the same codes serve Wᵀ in the backward.
//  * grad_input = dY·W: dY in 1×16 blocks along N with stochastic rounding; W's tile codes.
//  * grad_weight = dYᵀ·X: both transposed and multiplied, per 16 consecutive rows (tokens), by
//    the random Hadamard transform diag(signs)·H16/4 (TransformerEngine's default sign vector) --
//    orthogonal, so it cancels in the product while spreading outliers -- then cast in 1×16 blocks
//    along M: dYᵀ stochastically rounded, Xᵀ to nearest.
//  * Scales are TransformerEngine's (not NVFP4Tensor's): enc = 2688 / amax_tensor (float32
//    division, capped at FLT_MAX; 1 for amax 0), block scale s8 = e4m3(min(amax_block · (enc ·
//    fp32(1/6)), 448)) -- no 2^-6 floor -- element multiplier min(1 / (fp32(s8) · (1/enc)),
//    FLT_MAX), elements clamped to ±6 and cast to fp4 e2m1. Each gemm runs on fp4 value × s8 (exact
//    in bfloat16: a bf16 gemm with float32 sums) and its output is multiplied by both operands'
//    per-tensor scales amax / 2688 (torchao's per_tensor_amax_to_scale).
//  * Operands are rounded to bfloat16 first (torchao's linear is bf16 only); the output is in the
//    input's dtype, the bias is added after and gets its gradient.
//  * Stochastic rounding: P(away from zero) = the value's fractional position between its two fp4
//    neighbours (16 random bits per element from a counter-based generator: the seed, a per-module
//    call counter and the element index -- reproducible and independent of the thread count).
//    The module's seed and counter are a buffer ("sr_state"), saved and restored with it.
#pragma once
#include <array>
#include <functional>
#include <string>

#include "lowbit/core/scale.h"
#include "lowbit/nn/layers.h"

namespace lowbit::mx {

/// TransformerEngine's default RHT sign vector (get_wgrad_sign_vector; torchao's DEFAULT_SIGN_VECTOR).
inline constexpr std::array<int, 16> kTeRhtSigns = {1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1};

/// torchao's NVFP4TrainingConfig plus switches for the two tricks (for ablations).
struct NVFP4TrainingConfig {
  std::array<int, 16> rht_sign_vector = kTeRhtSigns;
  /// The random Hadamard transform on grad_weight's operands.
  bool rht = true;
  /// Stochastic rounding of grad_output's casts (else round to nearest even).
  bool stochastic_rounding = true;
  /// Signs must be ±1; throws naming the field.
  void validate() const;
  std::string to_string() const;
  bool operator==(const NVFP4TrainingConfig&) const = default;
};

/// TransformerEngine's global encode scale (core/scale.h).
using core::te_nvfp4_encode_scale;

enum class NVFP4Blocks { Row1x16, Tile16x16 };

/// An NVFP4 operand cast with TransformerEngine's formulas.
struct NVFP4TECast {
  /// bfloat16, rows x cols: fp4 value x fp32(s8) -- exact in bfloat16.
  Tensor values;
  /// float32 block scales fp32(s8): rows x cols/16 (Row1x16) or rows/16 x cols/16 (Tile16x16).
  Tensor block_scales;
  float global_amax = 0.0f;
  /// amax / (448 · 6): what the gemm's output is multiplied by.
  float per_tensor_scale = 0.0f;
};

/// The cast of a float32 rows x cols matrix (cols % 16 == 0; rows % 16 == 0 for tiles) whose
/// tensor amax is global_amax. stochastic: element i (row-major) draws its 16 random bits from
/// Generator::bits(seed, i / 4) (bits 16 * (i % 4) ...).
NVFP4TECast nvfp4_te_cast(const float* x, int64_t rows, int64_t cols, float global_amax, NVFP4Blocks blocks,
                          bool stochastic = false, uint64_t seed = 0);

/// The fp4 e2m1 value of y (|y| <= 6) rounded stochastically with 16 random bits r: away from
/// zero when r < (|y| - lo) / (hi - lo) · 65536 for the neighbours lo <= |y| <= hi.
float fp4_round_stochastic(float y, uint32_t r16);

/// RHT of xᵀ along its columns: x is m x c (row-major); returns c x m16 (m16 = m rounded up to
/// 16, zero rows appended) float32 whose row j holds, per 16 consecutive rows of x, the chunk
/// (x[r..r+15, j]) times diag(signs)·H16/4, rounded to bfloat16 (as torchao's bf16 matmul output).
Tensor rht16_transposed(const float* x, int64_t m, int64_t c, const std::array<int, 16>& signs);

/// nn.Linear whose three gemms run on NVFP4 operands (see above); shares the weight and bias of
/// the Linear it replaces. in_features and out_features must be multiples of 16.
class NVFP4Linear : public nn::Linear {
 public:
  NVFP4Linear(const Tensor& weight, const Tensor& bias, const NVFP4TrainingConfig& config);
  std::string type_name() const override { return "NVFP4Linear"; }
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x) override;
  nn::Attributes checkpoint_attributes() const override;
  const NVFP4TrainingConfig& config() const { return config_; }
  /// int64 [seed, backward calls so far]: the stochastic rounding stream.
  Tensor sr_state;

 private:
  NVFP4TrainingConfig config_;
};

/// Replaces every plain nn::Linear passing filter (and whose in/out features are multiples of 16)
/// by an NVFP4Linear sharing its parameters. `skipped` (optional) receives "fqn (reason)" for
/// Linears left alone because of their shape.
std::shared_ptr<nn::Module> convert_to_nvfp4_training(
    const std::shared_ptr<nn::Module>& model, const NVFP4TrainingConfig& config = {},
    const std::function<bool(const nn::Linear&, const std::string&)>& filter = nullptr,
    std::vector<std::string>* skipped = nullptr);

/// Registers NVFP4Linear with the module factories (io::load_model rebuilds it); idempotent.
void register_nvfp4_module_types();

}  // namespace lowbit::mx
