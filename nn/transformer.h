// Causal multi-head self-attention, a pre-norm transformer block and a small GPT.
#pragma once
#include "lowbit/nn/layers.h"

namespace lowbit::nn {

// Forwards call their children through the module tree, so QAT prepare / convert (which swap
// children with replace_module) take effect; the typed members follow a swap when the new child
// has their type (FakeQuantizedLinear is a Linear) and become null otherwise (QuantizedLinear).

/// x (B, T, C) -> (B, T, C). qkv = Linear(C, 3C); heads split C; proj = Linear(C, C).
class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(int64_t d_model, int64_t n_heads, double dropout = 0.0, bool causal = true,
                      Generator* gen = nullptr);
  CausalSelfAttention(int64_t d_model, int64_t n_heads, double dropout, bool causal, Unbuilt);
  std::string type_name() const override { return "CausalSelfAttention"; }
  std::string extra_repr() const override;
  Attributes checkpoint_attributes() const override;
  void check_loaded() const override;
  Tensor forward(const Tensor& x) override;
  int64_t d_model, n_heads;
  double dropout_p;
  bool causal;
  std::shared_ptr<Linear> qkv, proj;

 protected:
  void on_child_replaced(const std::string& name, const std::shared_ptr<Module>& child) override;
};

/// Pre-norm block: x + attn(ln1(x)), then x + mlp(ln2(x)); mlp = Linear(C, ff) · GELU · Linear(ff, C).
class TransformerBlock : public Module {
 public:
  TransformerBlock(int64_t d_model, int64_t n_heads, int64_t d_ff, double dropout = 0.0, bool causal = true,
                   Generator* gen = nullptr);
  explicit TransformerBlock(Unbuilt) {}
  std::string type_name() const override { return "TransformerBlock"; }
  void check_loaded() const override;
  Tensor forward(const Tensor& x) override;
  std::shared_ptr<LayerNorm> ln1, ln2;
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<Sequential> mlp;
  std::shared_ptr<Dropout> drop;

 protected:
  void on_child_replaced(const std::string& name, const std::shared_ptr<Module>& child) override;
};

struct GPTConfig {
  int64_t vocab_size = 256;
  int64_t context = 128;
  int64_t d_model = 256;
  int64_t n_heads = 4;
  int64_t n_layers = 4;
  int64_t d_ff = 0;  // 0: 4 * d_model
  double dropout = 0.0;
  bool tie_weights = true;
};

/// Token + position embeddings, N blocks, final LayerNorm, LM head (optionally tied to wte).
class GPT : public Module {
 public:
  explicit GPT(const GPTConfig& cfg, Generator* gen = nullptr);
  GPT(const GPTConfig& cfg, Unbuilt) : cfg(cfg) {}
  std::string type_name() const override { return "GPT"; }
  Attributes checkpoint_attributes() const override;
  void check_loaded() const override;
  /// idx (B, T) int64 -> logits (B, T, vocab)
  Tensor forward(const Tensor& idx) override;
  /// Appends max_new_tokens sampled tokens to idx (B, T); temperature > 0; top_k 0 = all.
  Tensor generate(const Tensor& idx, int64_t max_new_tokens, double temperature = 1.0, int64_t top_k = 0,
                  Generator* gen = nullptr);
  GPTConfig cfg;
  std::shared_ptr<Embedding> wte, wpe;
  std::shared_ptr<ModuleList> blocks;
  std::shared_ptr<LayerNorm> ln_f;
  std::shared_ptr<Linear> lm_head;

 protected:
  void on_child_replaced(const std::string& name, const std::shared_ptr<Module>& child) override;
};

}  // namespace lowbit::nn
