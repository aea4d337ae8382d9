// scaled_dot_product_attention and attention_qkv (multi-head self-attention over packed q|k|v).
//
// float32 inputs without a mask or dropout run a fused core: S = Q·Kᵀ as one batched GEMM (Kᵀ as
// strides, never copied), then one pass per row that scales, applies the causal mask and takes the
// softmax in place (the same row kernel softmax() runs), then O = P·V. Its backward is one node:
// dV = Pᵀ·dO, dP = dO·Vᵀ, dS = (softmax backward of dP, masked, times the scale) in place, dQ = dS·K,
// dK = dSᵀ·Q. The composition it replaces (matmul with a materialized transpose, mul by the scale,
// masked_fill, softmax, matmul) computes the same rows with the same row kernels: only the GEMMs'
// summation order may differ. attention_qkv splits the heads of (B, T, 3C) in one pass and merges
// them back in one (the permutes and the three selects of the composition, and their backward
// scatters, are gone). Masks, dropout and other dtypes keep the composition.
#include <algorithm>
#include <cmath>
#include <limits>

#include "internal.h"
#include "lowbit/autograd/generator.h"

namespace lowbit {

namespace {

Tensor sdpa_composed(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& attn_mask, double dropout_p,
                     bool is_causal, double s, Generator* gen) {
  const int64_t L = q.size(-2), S = k.size(-2);
  Tensor scores = mul(matmul(q, transpose(k, -2, -1)), s);
  if (is_causal) {
    Tensor m = empty({L, S}, kBool);
    bool* mp = m.data_ptr<bool>();
    for (int64_t i = 0; i < L; ++i)
      for (int64_t j = 0; j < S; ++j) mp[i * S + j] = j > i;
    scores = masked_fill(scores, m, -std::numeric_limits<double>::infinity());
  } else if (attn_mask.defined()) {
    if (attn_mask.dtype() == kBool) {
      const Tensor drop = eq(attn_mask.to(kUInt8), full({}, 0, kUInt8));  // true = masked out
      scores = masked_fill(scores, drop, -std::numeric_limits<double>::infinity());
    } else {
      scores = add(scores, attn_mask);
    }
  }
  Tensor p = softmax(scores, -1);
  if (dropout_p > 0.0) p = dropout(p, dropout_p, true, gen);
  return matmul(p, v);
}

// The number of keys row i of a query block may attend to.
inline int64_t keys_of_row(int64_t i, int64_t S, bool causal) { return causal ? std::min(i + 1, S) : S; }

// P = softmax(scale · Q·Kᵀ, masked) of contiguous q (n, L, E), k (n, S, E).
Tensor attention_probs(const Tensor& q, const Tensor& k, float scale, bool causal) {
  Tensor p = detail::gemm(q, false, k, true);
  const int64_t L = q.size(1), S = k.size(1);
  float* pp = p.data_ptr<float>();
  detail::parallel_for(p.numel() / std::max<int64_t>(S, 1),
                       std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(S, 1)), [&](int64_t r0, int64_t r1) {
                         for (int64_t r = r0; r < r1; ++r) {
                           float* row = pp + r * S;
                           const int64_t keys = keys_of_row(r % L, S, causal);
                           for (int64_t j = 0; j < keys; ++j) row[j] *= scale;
                           for (int64_t j = keys; j < S; ++j) row[j] = -std::numeric_limits<float>::infinity();
                           detail::softmax_row_f32(row, row, S, false);
                         }
                       });
  return p;
}

struct CoreGrads {
  Tensor dq, dk, dv;
};
// The backward of O = P·V with P = attention_probs(q, k): every input's gradient from dO (n, L, Ev).
CoreGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& p, const Tensor& dout,
                             float scale, bool causal, bool need_q, bool need_k, bool need_v) {
  CoreGrads g;
  if (need_v) g.dv = detail::gemm(p, true, dout, false);
  if (!need_q && !need_k) return g;
  Tensor ds = detail::gemm(dout, false, v, true);  // dP, turned into dS in place
  const int64_t L = q.size(1), S = k.size(1);
  const float* pp = p.data_ptr<float>();
  float* dp = ds.data_ptr<float>();
  detail::parallel_for(ds.numel() / std::max<int64_t>(S, 1),
                       std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(S, 1)), [&](int64_t r0, int64_t r1) {
                         for (int64_t r = r0; r < r1; ++r) {
                           float* row = dp + r * S;
                           detail::softmax_backward_row_f32(pp + r * S, row, row, S);
                           const int64_t keys = keys_of_row(r % L, S, causal);
                           for (int64_t j = 0; j < keys; ++j) row[j] *= scale;
                           for (int64_t j = keys; j < S; ++j) row[j] = 0.0f;  // masked_fill's backward
                         }
                       });
  if (need_q) g.dq = detail::gemm(ds, false, k, false);
  if (need_k) g.dk = detail::gemm(ds, true, q, false);
  return g;
}

Tensor to3d(const Tensor& t) { return t.detach().reshape({-1, t.size(-2), t.size(-1)}); }

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& attn_mask,
                                    double dropout_p, bool is_causal, std::optional<double> scale, Generator* gen) {
  const char* op = "scaled_dot_product_attention";
  detail::check_floating(q, op, "query");
  detail::check_floating(k, op, "key");
  detail::check_floating(v, op, "value");
  LOWBIT_CHECK(q.dim() >= 2 && k.dim() >= 2 && v.dim() >= 2, "{}: query {}, key {}, value {} must have at least 2 dims",
               op, shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
  LOWBIT_CHECK(q.size(-1) == k.size(-1), "{}: query {} and key {} must have the same embedding size (last dim)", op,
               shape_str(q.shape()), shape_str(k.shape()));
  LOWBIT_CHECK(k.size(-2) == v.size(-2), "{}: key {} and value {} must have the same sequence length (dim -2)", op,
               shape_str(k.shape()), shape_str(v.shape()));
  LOWBIT_CHECK(!(is_causal && attn_mask.defined()), "{}: pass either attn_mask or is_causal, not both", op);
  const double s = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  const Shape lead_q(q.shape().begin(), q.shape().end() - 2), lead_k(k.shape().begin(), k.shape().end() - 2),
      lead_v(v.shape().begin(), v.shape().end() - 2);
  const bool fused = q.dtype() == kFloat32 && k.dtype() == kFloat32 && v.dtype() == kFloat32 && !attn_mask.defined() &&
                     dropout_p == 0.0 && lead_q == lead_k && lead_q == lead_v && !reference_kernels();
  if (!fused) return sdpa_composed(q, k, v, attn_mask, dropout_p, is_causal, s, gen);
  const Tensor q3 = to3d(q), k3 = to3d(k), v3 = to3d(v);
  const float sc = static_cast<float>(s);  // as mul(scores, s) rounds it
  const Tensor p = attention_probs(q3, k3, sc, is_causal);
  Shape out_shape = lead_q;
  out_shape.insert(out_shape.end(), {q.size(-2), v.size(-1)});
  Tensor out = detail::gemm(p, false, v3, false).reshape(out_shape);
  if (detail::any_requires_grad({&q, &k, &v})) {
    const bool gq = q.requires_grad(), gk = k.requires_grad(), gv = v.requires_grad();
    const Shape qs = q.shape(), ks = k.shape(), vs = v.shape();
    detail::record(out, "ScaledDotProductAttentionBackward0", {q, k, v},
                   [q3, k3, v3, p, sc, is_causal, gq, gk, gv, qs, ks, vs](const Tensor& g) {
                     const CoreGrads c = attention_backward(q3, k3, v3, p, to3d(g), sc, is_causal, gq, gk, gv);
                     return std::vector<Tensor>{gq ? c.dq.reshape(qs) : Tensor(), gk ? c.dk.reshape(ks) : Tensor(),
                                                gv ? c.dv.reshape(vs) : Tensor()};
                   });
  }
  return out;
}

namespace {
// Copies between the packed layout (B, T, parts·C), C = H·D, and `parts` head-major tensors
// (B·H, T, D): to_heads splits (q, k, v from the projection), else merges (the output, the
// gradients). One pass either way.
void copy_heads(bool to_heads, float* packed, float* const* heads, int64_t B, int64_t T, int64_t H, int64_t D,
                int64_t parts) {
  const int64_t C = H * D;
  detail::parallel_for(B * T, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(parts * C, 1)),
                       [&](int64_t r0, int64_t r1) {
                         for (int64_t r = r0; r < r1; ++r) {
                           const int64_t b = r / T, t = r % T;
                           for (int64_t part = 0; part < parts; ++part)
                             for (int64_t h = 0; h < H; ++h) {
                               float* p = packed + r * parts * C + part * C + h * D;
                               float* q = heads[part] + ((b * H + h) * T + t) * D;
                               to_heads ? std::copy_n(p, D, q) : std::copy_n(q, D, p);
                             }
                         }
                       });
}
}  // namespace

Tensor attention_qkv(const Tensor& qkv, int64_t n_heads, bool is_causal, double dropout_p, std::optional<double> scale,
                     Generator* gen) {
  const char* op = "attention_qkv";
  detail::check_floating(qkv, op, "qkv");
  LOWBIT_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0,
               "{}: qkv must be (batch, seq, 3 * d_model) with q, k, v packed along the last dim, got {}", op,
               shape_str(qkv.shape()));
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3;
  LOWBIT_CHECK(n_heads > 0 && C % n_heads == 0, "{}: d_model ({}) must be divisible by n_heads ({})", op, C, n_heads);
  const int64_t H = n_heads, D = C / H;
  if (qkv.dtype() != kFloat32 || dropout_p > 0.0 || reference_kernels() || qkv.numel() == 0) {
    // the composition: (B, T, 3, H, D) -> (3, B, H, T, D), attention per head, heads merged
    const Tensor heads = permute(qkv.reshape({B, T, 3, H, D}), {2, 0, 3, 1, 4});
    const Tensor y = scaled_dot_product_attention(heads.select(0, 0), heads.select(0, 1), heads.select(0, 2), Tensor(),
                                                  dropout_p, is_causal, scale, gen);
    return permute(y, {0, 2, 1, 3}).reshape({B, T, C});
  }
  const float sc = static_cast<float>(scale ? *scale : 1.0 / std::sqrt(static_cast<double>(D)));
  Tensor q = empty({B * H, T, D}, kFloat32), k = empty({B * H, T, D}, kFloat32), v = empty({B * H, T, D}, kFloat32);
  {
    float* parts[3] = {q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>()};
    copy_heads(true, const_cast<float*>(qkv.data_ptr<float>()), parts, B, T, H, D, 3);  // read only
  }
  const Tensor p = attention_probs(q, k, sc, is_causal);
  const Tensor o = detail::gemm(p, false, v, false);
  Tensor out = empty({B, T, C}, kFloat32);
  {
    float* parts[1] = {const_cast<float*>(o.data_ptr<float>())};  // read only
    copy_heads(false, out.data_ptr<float>(), parts, B, T, H, D, 1);
  }
  if (detail::any_requires_grad({&qkv})) {
    detail::record(out, "AttentionQkvBackward0", {qkv}, [q, k, v, p, sc, is_causal, B, T, H, D](const Tensor& g) {
      const Tensor gc = g.dtype() == kFloat32 ? g : g.to(kFloat32);
      Tensor dout = empty({B * H, T, D}, kFloat32);
      {
        float* parts[1] = {dout.data_ptr<float>()};
        copy_heads(true, const_cast<float*>(gc.data_ptr<float>()), parts, B, T, H, D, 1);  // read only
      }
      const CoreGrads c = attention_backward(q, k, v, p, dout, sc, is_causal, true, true, true);
      Tensor dqkv = empty({B, T, 3 * H * D}, kFloat32);
      float* parts[3] = {c.dq.data_ptr<float>(), c.dk.data_ptr<float>(), c.dv.data_ptr<float>()};
      copy_heads(false, dqkv.data_ptr<float>(), parts, B, T, H, D, 3);
      return std::vector<Tensor>{dqkv};
    });
  }
  return out;
}

}  // namespace lowbit
