// Affine quantization primitives with torchao's numerics (spec: shared/spec/torchao-numerics.md
// §0-1; golden vectors: shared/golden/affine.h5).
//
// Rules reproduced bit for bit for float32 inputs:
//  * qparams are computed in float32: per-block amin/amax (NaN propagates), range forced to
//    include 0, SYMMETRIC scale = amax / ((qmax - qmin) / 2) (a true division), ASYMMETRIC
//    scale = (max_pos - min_neg) / (qmax - qmin), both clamped below by eps; the asymmetric
//    zero point is clamp(qmin - round(min_neg / scale), qmin, qmax).
//  * quantize multiplies by the float32 reciprocal of the scale, rounds half to even, adds the
//    zero point, clamps, then casts.
//  * dequantize is (float(q) - float(zp)) * scale in float32.
//  * Non-finite values: a NaN in a block makes its scale NaN; float -> integer casts follow
//    x86 (and PyTorch's CPU kernels): NaN or out-of-range -> INT32_MIN, then truncation to the
//    container, so a NaN code is stored as 0 and a NaN zero point as -2147483648.
#pragma once
#include <optional>
#include <string>
#include <utility>

#include "lowbit/autograd/tensor.h"

namespace lowbit::qat {

enum class MappingType { SYMMETRIC = 1, SYMMETRIC_NO_CLIPPING_ERR = 2, ASYMMETRIC = 3 };
enum class ZeroPointDomain { INT = 1, FLOAT = 2, NONE = 3 };

const char* to_string(MappingType m);
const char* to_string(ZeroPointDomain d);

/// Integer range of a target dtype name: "int1".."int8" (-2^(n-1) .. 2^(n-1)-1), "uint1".."uint8"
/// (0 .. 2^n - 1), "int16", "int32". Throws for unknown names.
std::pair<int64_t, int64_t> quant_range(const std::string& dtype);

/// Checks block_size against shape (same rank; each entry divides its dim) and returns the
/// number of blocks per dim (the shape of scales and zero points).
Shape blocks_shape(const Shape& shape, const Shape& block_size, const char* op);

/// (scale float32, zero_point int32 — or float32 for ZeroPointDomain::FLOAT) with shape
/// blocks_shape(x.shape(), block_size). eps defaults to float32's smallest normal (torchao HEAD).
/// zero_point_dtype: int32 (torchao's default) or float32 (e.g. the 8da4w activation config;
/// integral values, NaN kept as NaN).
/// x may be float32 or bfloat16: as torchao, the arithmetic runs in x's dtype (every bf16 result
/// rounded to bf16) and the scale is cast to scale_dtype at the end (default: x's dtype).
std::pair<Tensor, Tensor> choose_qparams_affine(const Tensor& x, MappingType mapping, const Shape& block_size,
                                                int64_t quant_min, int64_t quant_max,
                                                std::optional<double> eps = std::nullopt,
                                                ZeroPointDomain domain = ZeroPointDomain::INT,
                                                DType zero_point_dtype = kInt32,
                                                std::optional<DType> scale_dtype = std::nullopt);
/// Codes in `out_dtype` (int8, uint8 or int32 containers).
Tensor quantize_affine(const Tensor& x, const Shape& block_size, const Tensor& scale, const Tensor& zero_point,
                       DType out_dtype, int64_t quant_min, int64_t quant_max,
                       ZeroPointDomain domain = ZeroPointDomain::INT);
/// Values of codes q in output_dtype (float32 or bfloat16; torchao's order of casts).
Tensor dequantize_affine(const Tensor& q, const Shape& block_size, const Tensor& scale, const Tensor& zero_point,
                         int64_t quant_min, int64_t quant_max, ZeroPointDomain domain = ZeroPointDomain::INT,
                         DType output_dtype = kFloat32);
/// quantize without the integer cast, then dequantize; differentiable: straight-through with
/// the clamping mask (the gradient is zero where the rounded code was clamped).
Tensor fake_quantize_affine(const Tensor& x, const Shape& block_size, const Tensor& scale, const Tensor& zero_point,
                            int64_t quant_min, int64_t quant_max, ZeroPointDomain domain = ZeroPointDomain::INT);

/// fake_quantize_affine (INT domain) with learnable qparams — torchao's range learning (spec §2.2):
/// y = (clamp(round(x * (1/scale)) + zp, qmin, qmax) - zp) * scale with a float32 zero point that
/// need not be integral. Gradients: to x straight-through with the clamp mask (as
/// fake_quantize_affine); to scale, per block, sum(g * (c - zp)) - sum(g * scale * mask * x) / scale^2
/// (through (c - zp) * scale and x * (1/scale), round being the identity); to zero_point, per block,
/// sum(g * scale * mask) - sum(g * scale) (through +zp and -zp). zero_point must be float32.
Tensor fake_quantize_affine_learnable(const Tensor& x, const Shape& block_size, const Tensor& scale,
                                      const Tensor& zero_point, int64_t quant_min, int64_t quant_max);

/// Result of quantize_affine_dynamic.
struct Quantized {
  Tensor q, scale, zero_point;
};
/// choose_qparams_affine followed by quantize_affine (float32 x), bit-identical to the two calls
/// and fused into one pass per block when blocks are short contiguous runs: dynamic activation
/// quantization (per token) for integer kernels.
Quantized quantize_affine_dynamic(const Tensor& x, MappingType mapping, const Shape& block_size, DType out_dtype,
                                  int64_t quant_min, int64_t quant_max, std::optional<double> eps = std::nullopt,
                                  DType zero_point_dtype = kInt32);

/// Result of fake_quantize_affine_dynamic.
struct FakeQuantized {
  Tensor y, scale, zero_point;
};
/// choose_qparams_affine followed by fake_quantize_affine, bit-identical to the two calls (the
/// returned scale / zero point are choose_qparams_affine's), fused into one pass over x when the
/// blocks are short contiguous runs (per-group, per-token, per-row): what dynamic fake
/// quantizers run every step. Differentiable in x like fake_quantize_affine (qparams are not).
FakeQuantized fake_quantize_affine_dynamic(const Tensor& x, MappingType mapping, const Shape& block_size,
                                           int64_t quant_min, int64_t quant_max,
                                           std::optional<double> eps = std::nullopt,
                                           ZeroPointDomain domain = ZeroPointDomain::INT,
                                           DType zero_point_dtype = kInt32,
                                           std::optional<DType> scale_dtype = std::nullopt);

}  // namespace lowbit::qat
