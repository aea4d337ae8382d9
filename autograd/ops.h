// Differentiable ops. Every op checks shapes/dtypes up front and throws lowbit::Error naming the
// op, the operands' shapes and dtypes, and the violated rule. Floating ops accept float32,
// float64 and bfloat16 (computed in float32, rounded back to nearest even).
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/autograd/tensor.h"

namespace lowbit {

// ---- elementwise, broadcasting like NumPy/PyTorch ----
Tensor add(const Tensor& a, const Tensor& b, double alpha = 1.0);  // a + alpha * b
Tensor sub(const Tensor& a, const Tensor& b, double alpha = 1.0);  // a - alpha * b
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double b);
Tensor mul(const Tensor& a, double b);
Tensor maximum(const Tensor& a, const Tensor& b);  // gradient goes half/half on ties, like PyTorch
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor neg(const Tensor& a);
Tensor abs(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor rsqrt(const Tensor& a);
Tensor pow(const Tensor& a, double exponent);
Tensor square(const Tensor& a);
Tensor tanh(const Tensor& a);
Tensor sigmoid(const Tensor& a);
Tensor relu(const Tensor& a);
/// approximate: "none" (erf) or "tanh".
Tensor gelu(const Tensor& a, const std::string& approximate = "none");
Tensor silu(const Tensor& a);
/// Clamps to [min, max]; gradient passes where min <= x <= max (PyTorch's rule).
Tensor clamp(const Tensor& a, std::optional<double> min, std::optional<double> max);
/// cond ? a : b (cond is bool; all three broadcast).
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
/// Fills positions where mask (bool, broadcast to a) is true.
Tensor masked_fill(const Tensor& a, const Tensor& mask, double value);
/// Rounds half to even (no gradient: use a custom Function for straight-through).
Tensor round(const Tensor& a);

// ---- comparisons (bool result, never differentiable) ----
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, double b);
Tensor lt(const Tensor& a, double b);
Tensor gt(const Tensor& a, double b);

// ---- reductions (dims may be negative; empty dims = all) ----
Tensor sum(const Tensor& a);
Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& a);
Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim = false);
/// Gradient of amax/amin is split evenly between tied extrema (PyTorch's rule).
Tensor amax(const Tensor& a, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor amin(const Tensor& a, const std::vector<int64_t>& dims = {}, bool keepdim = false);
/// Variance with Bessel correction by default (correction = 1).
Tensor var(const Tensor& a, const std::vector<int64_t>& dims = {}, double correction = 1.0, bool keepdim = false);
/// (values, indices) of the maximum along dim; the first index wins ties.
std::pair<Tensor, Tensor> max(const Tensor& a, int64_t dim, bool keepdim = false);
Tensor max(const Tensor& a);
Tensor argmax(const Tensor& a, int64_t dim, bool keepdim = false);
Tensor softmax(const Tensor& a, int64_t dim);
Tensor log_softmax(const Tensor& a, int64_t dim);

// ---- linear algebra (oneDNN for float32; transposes folded into the primitive) ----
/// 1-D·1-D, 2-D @ 2-D, batched (>2-D) with broadcasting over batch dims, 1-D promoted like torch.
Tensor matmul(const Tensor& a, const Tensor& b);
/// x: (*, in), weight: (out, in), bias: (out) or undefined -> (*, out) = x·Wᵀ + b.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());
/// C = op(A)·op(B) (+ bias) for 2-D bfloat16 A and B (op = transpose when trans_*, expressed as strides), float32
/// accumulation and output, float32 bias: oneDNN's bf16 matmul (avx512_core_bf16 on this CPU class: about twice its
/// float32 rate). Every product of two bfloat16 values is exact in float32, so the result differs from a float32 GEMM
/// of the same values only by summation order. A kernel for exact low-precision emulation (fp8, fp6, fp4 values are
/// exact in bfloat16): no autograd. Reference mode (set_reference_kernels) sums in float64.
Tensor gemm_bf16(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias = Tensor());
/// C = op(A)·op(B) (+ bias) for float32 A and B, 2-D, or 3-D with the same batch count (or 1, broadcast): oneDNN's
/// float32 matmul, transposes as strides, no autograd (the GEMM that linear/matmul and their backward passes run).
Tensor gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias = Tensor());

// ---- shape ----
Tensor reshape(const Tensor& a, const Shape& shape);
Tensor transpose(const Tensor& a, int64_t dim0, int64_t dim1);
Tensor permute(const Tensor& a, const std::vector<int64_t>& dims);
Tensor narrow(const Tensor& a, int64_t dim, int64_t start, int64_t length);
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& a, int64_t split_size, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int64_t dim = 0);
std::vector<Tensor> chunk(const Tensor& a, int64_t chunks, int64_t dim = 0);
/// Rows of a along dim picked by index (int32/int64, 1-D).
Tensor index_select(const Tensor& a, int64_t dim, const Tensor& index);
/// weight: (num, dim); indices: any shape of int32/int64 -> indices.shape + (dim).
Tensor embedding(const Tensor& weight, const Tensor& indices);

// ---- neural-network functions ----
enum class Reduction { None, Mean, Sum };
/// Zeroes elements with probability p and scales the rest by 1/(1-p) when training.
Tensor dropout(const Tensor& a, double p, bool training = true, Generator* gen = nullptr);
/// logits (N, C) or (N, C, d...) / target int64 class indices (N) or (N, d...).
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index = -100,
                     double label_smoothing = 0.0, Reduction reduction = Reduction::Mean);
Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::Mean);
/// Normalizes over the trailing dims given by normalized_shape; weight/bias optional.
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = Tensor(),
                  const Tensor& bias = Tensor(), double eps = 1e-5);
/// x / sqrt(mean(x², trailing dims) + eps) * weight. eps defaults to float32 machine epsilon (torch).
Tensor rms_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = Tensor(),
                std::optional<double> eps = std::nullopt);
/// q: (..., L, E), k: (..., S, E), v: (..., S, Ev) -> (..., L, Ev). attn_mask: bool (true = keep)
/// or float (added). is_causal masks j > i (top-left aligned, like PyTorch).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& attn_mask = Tensor(), double dropout_p = 0.0, bool is_causal = false,
                                    std::optional<double> scale = std::nullopt, Generator* gen = nullptr);
/// Multi-head self-attention over packed projections: qkv (B, T, 3·C) holds q | k | v along the last dim, each
/// split into n_heads heads of C / n_heads -> (B, T, C), the heads merged back. The same values as permuting to
/// (3, B, H, T, D), scaled_dot_product_attention per head and permuting back, without the permutes (float32 without
/// dropout runs a fused kernel; other cases that composition).
Tensor attention_qkv(const Tensor& qkv, int64_t n_heads, bool is_causal = false, double dropout_p = 0.0,
                     std::optional<double> scale = std::nullopt, Generator* gen = nullptr);

// ---- operators ----
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator*(double a, const Tensor& b);

/// torch.set_float32_matmul_precision: "highest" (default: float32 GEMMs in float32) or "medium"
/// (float32 GEMMs -- linear, matmul, attention and their backward passes -- round their operands
/// to bfloat16 and run oneDNN's bfloat16 GEMM with float32 accumulation and output: bf16 mixed
/// precision for the GEMMs, everything else in float32). "high" (TF32 on GPUs) means "highest"
/// on this CPU. Process-wide; throws on another name.
void set_float32_matmul_precision(const std::string& precision);
std::string get_float32_matmul_precision();

/// Reference kernels: when on, every op uses its plain scalar implementation (tests compare the
/// optimized kernels against these).
void set_reference_kernels(bool on);
bool reference_kernels();

}  // namespace lowbit
