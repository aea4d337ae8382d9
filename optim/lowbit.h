// Low-bit optimizers: optimizer state kept as block-quantized codes.
//
// torchao.optim (spec §5, §9 items 11-12): Adam8bit / AdamW8bit (block 256, the dynamic 8-bit
// maps), Adam4bit / AdamW4bit (block 128, the 4-bit maps, two codes per byte high nibble first),
// AdamFp8 / AdamWFp8 (e4m3 codes, block 256). Beyond torchao, the same 8-bit state for SGD with
// momentum (SGD8bit) and for Lion (Lion8bit; Lion itself with float32 state), as bitsandbytes has
// them.
//
// A parameter's states are quantized only when it has >= 4096 elements, its size divides by the
// block size and it is not kept in full precision (keep_full_precision: bitsandbytes'
// GlobalOptimManager override, e.g. for embeddings); otherwise they are plain tensors of the
// parameter's dtype (torchao's _new_buffer).
//
// Adam's update is torchao's single_param_adam in float32 (§5.2): decay (AdamW: p -= lr*wd*p;
// Adam: g += wd*p), bias corrections from the step, m = lerp(m_deq, g, 1-b1), v = lerp(v_deq,
// g^2, 1-b2), states re-quantized, amsgrad's vmax = max(vmax_deq, v), p -= lr*(m/bc1)/(sqrt(v or
// vmax)/sqrt(bc2) + eps) from the unquantized m and v, written back to the parameter's dtype
// (bfloat16: round to nearest even, or stochastically with bf16_stochastic_round). amsgrad with
// quantized states works (torchao raises for it).
//
// State tensors per parameter (ParamState::tensors), for checkpoints: quantized
// "<state>_codes" (uint8; 4-bit: numel/2 bytes) and "<state>_scale" (float32, one per block),
// whose checkpoint attributes name the code book and block size (state_attributes); plain
// "<state>" (the parameter's dtype). <state>: exp_avg, exp_avg_sq, max_exp_avg_sq (Adam);
// momentum_buffer (SGD8bit); exp_avg (Lion).
#pragma once
#include <functional>
#include <limits>
#include <memory>
#include <set>

#include "lowbit/core/codebook.h"
#include "lowbit/optim/optimizer.h"

namespace lowbit::optim {

/// Fp32: states kept plain (Lion's full-precision variant).
enum class StateFormat { Int8, Int4, Fp8, Fp32 };

/// What the low-bit optimizers share: the state format and block, which parameters get quantized
/// states, state bytes, checkpoint layouts and attributes, and the blockwise update loop.
class LowBitOptimizer : public Optimizer {
 public:
  StateFormat format() const { return format_; }
  int64_t block_size() const { return block_; }
  /// Whether p's states are (or would be) quantized: >= 4096 elements, numel % block == 0, not
  /// kept in full precision.
  bool quantizes(const Tensor& p) const;
  /// Keeps p's states plain (the parameter's dtype) whatever its size: call before the first
  /// step. Throws for a tensor that is not one of the optimizer's parameters.
  void keep_full_precision(const Tensor& p);
  /// Bytes of optimizer state now held (codes, scales and plain states; code books excluded), in
  /// total or for one parameter.
  int64_t state_bytes() const;
  int64_t state_bytes(const Tensor& p) const;
  /// "<state>_codes" uint8 (numel, or numel/2 for 4-bit) and "<state>_scale" float32 (numel /
  /// block) for quantized parameters; "<state>" in the parameter's shape and dtype otherwise.
  bool state_layout(const Tensor& p, const std::string& key, Shape& shape, DType& dtype) const override;
  /// For "<state>_codes": "codebook" (the code book's name, or "float8_e4m3fn"), "block_size",
  /// and for 4-bit "packing" = "two_per_byte_high_nibble_first".
  std::vector<StateAttribute> state_attributes(const Tensor& p, const std::string& key) const override;
  /// The code book of a state (Int8 / Int4): signed for first moments and momenta, unsigned for
  /// second moments.
  const core::Codebook& codebook_of(const std::string& state) const;

 protected:
  LowBitOptimizer(std::vector<ParamGroup> groups, Options defaults, std::string name, StateFormat format,
                  int64_t block_size, std::vector<std::string> state_names);
  /// fn(i0, len, w, g, bufs): one block's update -- w[0..len) updated, g[0..len) read-only,
  /// bufs[s][0..len) the dequantized states, updated in place and re-quantized after fn.
  using BlockFn = std::function<void(int64_t i0, int64_t len, float* w, const float* g, float* const* bufs)>;
  /// Queues one update of p (a float32 view: bf16 parameters are copied and written back,
  /// stochastically rounded when asked) with its first `nstates` states (state_names() order);
  /// states are created here. run_updates() then runs every queued parameter's blocks in one
  /// parallel region (threads take chunks of blocks as they finish: one barrier per step, not
  /// one per parameter) and writes bf16 parameters back in queue order.
  void update_blocks(Tensor& p, int nstates, bool stochastic_round, BlockFn fn);
  void run_updates();
  struct PendingUpdate;
  std::vector<std::shared_ptr<PendingUpdate>> pending_;
  /// Second-moment states (the unsigned ones) of 8-bit and fp8 formats: positive values keep the
  /// smallest nonzero code (LowBitAdamOptions::second_moment_floor).
  bool second_moment_floor_ = false;
  StateFormat format_;
  int64_t block_;
  std::vector<std::string> state_names_;
  std::set<const TensorImpl*> full_precision_;
};

struct LowBitAdamOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  /// Adam*: 0 (added to the gradient); AdamW*: 1e-2 (decoupled). NaN here = the class default.
  double weight_decay = std::numeric_limits<double>::quiet_NaN();
  bool amsgrad = false;
  /// 0 = the format's default (8-bit 256, 4-bit 128, fp8 256).
  int64_t block_size = 0;
  bool bf16_stochastic_round = false;
  /// 8-bit and fp8 states: a positive second moment (exp_avg_sq, max_exp_avg_sq) below half the
  /// smallest nonzero entry of its block keeps that entry's code instead of rounding to 0, as
  /// torchao's does. A zero there makes the next step's sqrt(v) about sqrt(1 - beta2) = 3% of its
  /// true size for that element, i.e. a ~30x update, in every block whose range spans more than
  /// the map's (7 decades for the 8-bit map, about 5 for e4m3); with the floor the Fashion-MNIST
  /// MLP trains to fp32 AdamW's accuracy (docs/optim.md). false: torchao's codes bit for bit.
  bool second_moment_floor = true;
};

class LowBitAdam : public LowBitOptimizer {
 public:
  LowBitAdam(std::vector<ParamGroup> groups, LowBitAdamOptions o, StateFormat format, bool decoupled);
  void step() override;
  bool decoupled() const { return decoupled_; }

 private:
  bool decoupled_, stochastic_round_;
};

/// SGD with momentum (PyTorch's semantics: buf = g on the first step, then momentum * buf + (1 -
/// dampening) * g; nesterov; L2 weight decay added to the gradient) with the momentum buffer in
/// 8-bit dynamic-map blocks of 256 (bitsandbytes' SGD8bit).
struct SGD8bitOptions {
  double lr = 1e-3, momentum = 0.9, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false;
  int64_t block_size = 0;  // 0 = 256
  bool bf16_stochastic_round = false;
};
class SGD8bit : public LowBitOptimizer {
 public:
  SGD8bit(std::vector<ParamGroup> groups, SGD8bitOptions o);
  void step() override;

 private:
  bool stochastic_round_;
};

/// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): c = b1*m + (1-b1)*g,
/// p = p*(1 - lr*wd) - lr*sign(c), m = b2*m + (1-b2)*g; one state. Lion keeps m in the
/// parameter's dtype, Lion8bit in 8-bit dynamic-map blocks of 256 (bitsandbytes' Lion8bit).
struct LionOptions {
  double lr = 1e-4, beta1 = 0.9, beta2 = 0.99, weight_decay = 0.0;
  int64_t block_size = 0;  // 0 = 256
  bool bf16_stochastic_round = false;
};
class Lion : public LowBitOptimizer {
 public:
  Lion(std::vector<ParamGroup> groups, LionOptions o, StateFormat format = StateFormat::Fp32);
  void step() override;

 private:
  bool stochastic_round_;
};

/// The code book of a state: exp_avg (signed) or the squares (unsigned), for Int8 / Int4.
const core::Codebook& state_codebook(StateFormat format, bool is_signed);

/// torchao's classes by name: "Adam8bit", "AdamW8bit", "Adam4bit", "AdamW4bit", "AdamFp8",
/// "AdamWFp8"; throws naming them.
std::unique_ptr<LowBitAdam> make_low_bit_adam(const std::string& name, std::vector<ParamGroup> groups,
                                              LowBitAdamOptions o = {});

}  // namespace lowbit::optim
