#include "lowbit/nn/transformer.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"

namespace lowbit::nn {

CausalSelfAttention::CausalSelfAttention(int64_t d, int64_t h, double dropout, bool causal_, Generator* gen)
    : d_model(d), n_heads(h), dropout_p(dropout), causal(causal_) {
  LOWBIT_CHECK(h > 0 && d % h == 0, "CausalSelfAttention: d_model ({}) must be divisible by n_heads ({})", d, h);
  qkv = register_module("qkv", std::make_shared<Linear>(d, 3 * d, true, gen));
  proj = register_module("proj", std::make_shared<Linear>(d, d, true, gen));
}
CausalSelfAttention::CausalSelfAttention(int64_t d, int64_t h, double dropout, bool causal_, Unbuilt)
    : d_model(d), n_heads(h), dropout_p(dropout), causal(causal_) {
  LOWBIT_CHECK(h > 0 && d > 0 && d % h == 0,
               "CausalSelfAttention: d_model ({}) must be positive and divisible by n_heads ({})", d, h);
  LOWBIT_CHECK(dropout >= 0.0 && dropout <= 1.0, "CausalSelfAttention: dropout must be in [0, 1], got {}", dropout);
}
std::string CausalSelfAttention::extra_repr() const {
  return fmt::format("d_model={}, n_heads={}, dropout={}, causal={}", d_model, n_heads, dropout_p,
                     causal ? "True" : "False");
}
Tensor CausalSelfAttention::forward(const Tensor& x) {
  LOWBIT_CHECK(x.dim() == 3 && x.size(-1) == d_model, "CausalSelfAttention: expected input (B, T, {}), got {}", d_model,
               shape_str(x.shape()));
  // (B, T, 3C) -> heads -> attention -> (B, T, C): one op, no materialized permutes
  return child("proj").forward(
      attention_qkv(child("qkv").forward(x), n_heads, causal, is_training() ? dropout_p : 0.0));
}
namespace {
template <typename T>
void retarget(std::shared_ptr<T>& member, const std::shared_ptr<Module>& child) {
  member = std::dynamic_pointer_cast<T>(child);  // null when the new child is of another type
}
// a module built from a file: the children its forward calls must be there
void require_children(const Module& m, std::initializer_list<const char*> names) {
  for (const char* n : names) {
    bool found = false;
    for (const auto& [c, _] : m.named_children()) found |= c == n;
    LOWBIT_CHECK(found, "{}: missing child module '{}'", m.type_name(), n);
  }
}
}  // namespace
Attributes CausalSelfAttention::checkpoint_attributes() const {
  return {{"d_model", d_model}, {"n_heads", n_heads}, {"dropout", dropout_p}, {"causal", int64_t{causal}}};
}
void CausalSelfAttention::check_loaded() const { require_children(*this, {"qkv", "proj"}); }
namespace {}  // namespace
void CausalSelfAttention::on_child_replaced(const std::string& name, const std::shared_ptr<Module>& c) {
  if (name == "qkv") retarget(qkv, c);
  if (name == "proj") retarget(proj, c);
}

TransformerBlock::TransformerBlock(int64_t d, int64_t h, int64_t ff, double dropout, bool causal, Generator* gen) {
  ln1 = register_module("ln1", std::make_shared<LayerNorm>(d));
  attn = register_module("attn", std::make_shared<CausalSelfAttention>(d, h, dropout, causal, gen));
  ln2 = register_module("ln2", std::make_shared<LayerNorm>(d));
  mlp = register_module("mlp", std::make_shared<Sequential>(std::vector<std::shared_ptr<Module>>{
                                   std::make_shared<Linear>(d, ff, true, gen), std::make_shared<GELU>(),
                                   std::make_shared<Linear>(ff, d, true, gen)}));
  drop = register_module("drop", std::make_shared<Dropout>(dropout, gen));
}
Tensor TransformerBlock::forward(const Tensor& x) {
  Module& dr = child("drop");
  Tensor h = add(x, dr.forward(child("attn").forward(child("ln1").forward(x))));
  return add(h, dr.forward(child("mlp").forward(child("ln2").forward(h))));
}
void TransformerBlock::on_child_replaced(const std::string& name, const std::shared_ptr<Module>& c) {
  if (name == "ln1") retarget(ln1, c);
  if (name == "ln2") retarget(ln2, c);
  if (name == "attn") retarget(attn, c);
  if (name == "mlp") retarget(mlp, c);
  if (name == "drop") retarget(drop, c);
}

GPT::GPT(const GPTConfig& c, Generator* gen) : cfg(c) {
  LOWBIT_CHECK(c.vocab_size > 0 && c.context > 0 && c.n_layers >= 0,
               "GPT: vocab_size ({}), context ({}) must be positive", c.vocab_size, c.context);
  const int64_t ff = c.d_ff > 0 ? c.d_ff : 4 * c.d_model;
  wte = register_module("wte", std::make_shared<Embedding>(c.vocab_size, c.d_model, gen));
  wpe = register_module("wpe", std::make_shared<Embedding>(c.context, c.d_model, gen));
  blocks = register_module("blocks", std::make_shared<ModuleList>());
  for (int64_t i = 0; i < c.n_layers; ++i)
    blocks->push_back(std::make_shared<TransformerBlock>(c.d_model, c.n_heads, ff, c.dropout, true, gen));
  ln_f = register_module("ln_f", std::make_shared<LayerNorm>(c.d_model));
  lm_head = register_module("lm_head", std::make_shared<Linear>(c.d_model, c.vocab_size, false, gen));
  // GPT-2 initialization (as nanoGPT): N(0, 0.02) for embeddings and linear weights, zero biases
  NoGradGuard ng;
  for (auto& [name, p] : named_parameters()) {
    if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0)
      p.zero_();
    else if (p.dim() == 2)
      p.normal_(0.0, 0.02, gen);
  }
  if (c.tie_weights) {  // the head shares the embedding matrix
    lm_head->weight = wte->weight;
    lm_head->replace_parameter("weight", wte->weight);
  }
}
void TransformerBlock::check_loaded() const { require_children(*this, {"ln1", "attn", "ln2", "mlp", "drop"}); }
Attributes GPT::checkpoint_attributes() const {
  return {{"vocab_size", cfg.vocab_size}, {"context", cfg.context},
          {"d_model", cfg.d_model},       {"n_heads", cfg.n_heads},
          {"n_layers", cfg.n_layers},     {"d_ff", cfg.d_ff},
          {"dropout", cfg.dropout},       {"tie_weights", int64_t{cfg.tie_weights}}};
}
void GPT::check_loaded() const {
  require_children(*this, {"wte", "wpe", "blocks", "ln_f", "lm_head"});
  const int64_t n = static_cast<int64_t>(child("blocks").children().size());
  LOWBIT_CHECK(n == cfg.n_layers, "GPT: n_layers is {} but the file holds {} blocks", cfg.n_layers, n);
}
Tensor GPT::forward(const Tensor& idx) {
  LOWBIT_CHECK(idx.dim() == 2 && (idx.dtype() == kInt64 || idx.dtype() == kInt32),
               "GPT: expected token ids (B, T) of int64, got {} {}", shape_str(idx.shape()), dtype_name(idx.dtype()));
  const int64_t T = idx.size(1);
  LOWBIT_CHECK(T <= cfg.context, "GPT: sequence length {} exceeds the context size {}", T, cfg.context);
  Tensor pos = arange(static_cast<double>(T));
  Tensor h = add(child("wte").forward(idx), child("wpe").forward(pos));
  for (auto& b : child("blocks").children()) h = b->forward(h);
  h = child("ln_f").forward(h);
  return child("lm_head").forward(h);
}
void GPT::on_child_replaced(const std::string& name, const std::shared_ptr<Module>& c) {
  if (name == "wte") retarget(wte, c);
  if (name == "wpe") retarget(wpe, c);
  if (name == "blocks") retarget(blocks, c);
  if (name == "ln_f") retarget(ln_f, c);
  if (name == "lm_head") retarget(lm_head, c);
}
Tensor GPT::generate(const Tensor& idx_in, int64_t max_new_tokens, double temperature, int64_t top_k, Generator* gen) {
  LOWBIT_CHECK(temperature > 0.0, "GPT::generate: temperature must be > 0, got {}", temperature);
  NoGradGuard ng;
  const bool was_training = is_training();
  eval();
  Tensor idx = idx_in.to(kInt64);
  Generator& g = gen ? *gen : default_generator();
  for (int64_t s = 0; s < max_new_tokens; ++s) {
    const int64_t T = idx.size(1), B = idx.size(0);
    Tensor ctx = T > cfg.context ? narrow(idx, 1, T - cfg.context, cfg.context) : idx;
    Tensor logits = forward(ctx).select(1, -1).to(kFloat32);  // (B, V); a bfloat16 model samples in float32
    logits = mul(logits, 1.0 / temperature);
    const int64_t V = logits.size(-1);
    Tensor probs = softmax(logits, -1);
    Tensor next = empty({B, 1}, kInt64);
    const float* lp = logits.data_ptr<float>();
    const float* pp = probs.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      std::vector<float> p(pp + b * V, pp + (b + 1) * V);
      if (top_k > 0 && top_k < V) {
        std::vector<float> sorted(lp + b * V, lp + (b + 1) * V);
        std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<float>());
        const float kth = sorted[top_k - 1];
        for (int64_t j = 0; j < V; ++j)
          if (lp[b * V + j] < kth) p[j] = 0.0f;
      }
      double total = 0;
      for (float v : p) total += v;
      const double u = Generator::uniform01(g.seed(), g.reserve(1)) * total;
      double acc = 0;
      int64_t choice = V - 1;
      for (int64_t j = 0; j < V; ++j) {
        acc += p[j];
        if (u < acc) {
          choice = j;
          break;
        }
      }
      next.data_ptr<int64_t>()[b] = choice;
    }
    idx = cat({idx, next}, 1);
  }
  train(was_training);
  return idx;
}

}  // namespace lowbit::nn
