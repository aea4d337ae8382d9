// Low-bit Adam (torchao.optim; spec §5, §9 items 11-12): Adam8bit / AdamW8bit (block 256, the
// dynamic 8-bit maps), Adam4bit / AdamW4bit (block 128, the 4-bit maps, two codes per byte high
// nibble first), AdamFp8 / AdamWFp8 (e4m3 codes, block 256). A parameter's states are quantized
// only when it has >= 4096 elements and its size divides by the block size; otherwise they are
// plain tensors of the parameter's dtype (torchao's _new_buffer).
//
// The update is torchao's single_param_adam in float32 (§5.2): decay (AdamW: p -= lr*wd*p; Adam:
// g += wd*p), bias corrections from the step, m = lerp(m_deq, g, 1-b1), v = lerp(v_deq, g^2,
// 1-b2), states re-quantized, amsgrad's vmax = max(vmax_deq, v), p -= lr*(m/bc1)/(sqrt(v or
// vmax)/sqrt(bc2) + eps) from the unquantized m and v, written back to the parameter's dtype
// (bfloat16: round to nearest even, or stochastically with bf16_stochastic_round). amsgrad with
// quantized states works (torchao raises for it).
//
// State tensors per parameter (ParamState::tensors), for checkpoints: quantized
// "<state>_codes" (uint8; 4-bit: numel/2 bytes) and "<state>_scale" (float32, one per block);
// plain "<state>" (the parameter's dtype); <state> = exp_avg, exp_avg_sq, max_exp_avg_sq.
#pragma once
#include <memory>

#include "lowbit/core/codebook.h"
#include "lowbit/optim/optimizer.h"

namespace lowbit::optim {

enum class StateFormat { Int8, Int4, Fp8 };

struct LowBitAdamOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  /// Adam*: 0 (added to the gradient); AdamW*: 1e-2 (decoupled). NaN here = the class default.
  double weight_decay = std::numeric_limits<double>::quiet_NaN();
  bool amsgrad = false;
  /// 0 = the format's default (8-bit 256, 4-bit 128, fp8 256).
  int64_t block_size = 0;
  bool bf16_stochastic_round = false;
};

class LowBitAdam : public Optimizer {
 public:
  LowBitAdam(std::vector<ParamGroup> groups, LowBitAdamOptions o, StateFormat format, bool decoupled);
  void step() override;
  StateFormat format() const { return format_; }
  int64_t block_size() const { return block_; }
  bool decoupled() const { return decoupled_; }
  /// Whether p's states are (or would be) quantized: >= 4096 elements and numel % block == 0.
  bool quantizes(const Tensor& p) const;
  /// Bytes of optimizer state now held (codes, scales and plain states; code books excluded).
  int64_t state_bytes() const;
  /// "<state>_codes" uint8 (numel, or numel/2 for 4-bit) and "<state>_scale" float32 (numel /
  /// block) for quantized parameters; "<state>" in the parameter's shape and dtype otherwise.
  bool state_layout(const Tensor& p, const std::string& key, Shape& shape, DType& dtype) const override;

 private:
  StateFormat format_;
  int64_t block_;
  bool decoupled_, stochastic_round_;
};

/// The code book of a state: exp_avg (signed) or the squares (unsigned), for Int8 / Int4.
const core::Codebook& state_codebook(StateFormat format, bool is_signed);

/// torchao's classes by name: "Adam8bit", "AdamW8bit", "Adam4bit", "AdamW4bit", "AdamFp8",
/// "AdamWFp8"; throws naming them.
std::unique_ptr<LowBitAdam> make_low_bit_adam(const std::string& name, std::vector<ParamGroup> groups,
                                              LowBitAdamOptions o = {});

}  // namespace lowbit::optim
