// NVFP4 (torchao's NVFP4Tensor; spec §4.7, §9 item 9): blocks of 16 consecutive fp4 e2m1 elements
// along the last dim with an e4m3fn block scale, and an optional float32 per-tensor scale
// (two-level scaling). Quantization and dequantization bit-exact with torchao.
#pragma once
#include <optional>

#include "lowbit/autograd/tensor.h"

namespace lowbit::mx {

/// torchao's NVFP4Tensor.
struct NVFP4Tensor {
  /// float4_e2m1fn_x2, (..., K/2): element 2i in the low nibble.
  Tensor qdata;
  /// float8_e4m3fn, (..., K/16): s8 = e4m3(clamp(amax / 6 [/ per_tensor_scale], 2^-6, 448)).
  Tensor scale;
  /// Two-level scaling: the float32 per-tensor scale (torchao's per_tensor_scale).
  std::optional<float> per_tensor_scale;
  int64_t block_size = 16;
  DType orig_dtype = DType::Float32;
  Shape shape;
  /// fp32(s8) [* per_tensor_scale] per block (torchao's get_hp_scales), float32 (..., K/16).
  Tensor hp_scales() const;
  /// element value * hp_scale in float32, then cast to dtype (default orig_dtype).
  Tensor dequantize(std::optional<DType> dtype = std::nullopt) const;
};

/// torchao's per_tensor_amax_to_scale: fp32(amax) / (448 * 6) of the whole tensor (NaN / inf
/// propagate: a tensor holding one gives a NaN / inf scale and dequantizes to NaN).
float nvfp4_per_tensor_scale_of(const Tensor& x);

/// NVFP4Tensor.to_nvfp4(x, block_size=16, per_tensor_scale): x float32 or bfloat16 (computed in
/// float32), last dim a multiple of 16. Per block: amax, the e4m3 scale (core::nvfp4_block_scale:
/// 2^-6 floor, 448 cap, so an inf block saturates), elements x * multiplier clamped to +-6 and
/// cast to fp4 with round-to-nearest-even. A NaN block's codes are unspecified in torchao (its
/// scale is NaN); lowbit writes the encoder's.
NVFP4Tensor to_nvfp4(const Tensor& x, std::optional<float> per_tensor_scale = std::nullopt);

}  // namespace lowbit::mx
