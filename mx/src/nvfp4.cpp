// NVFP4Tensor (spec §4.7, §9 item 9): e4m3 block scales over 16 fp4 elements, optional
// per-tensor scale.
#include "lowbit/mx/nvfp4.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/minifloat.h"
#include "lowbit/core/blocks.h"
#include "lowbit/core/format.h"
#include "lowbit/core/scale.h"

namespace lowbit::mx {

namespace {
constexpr int64_t kBlock = 16;
Tensor as_f32(const Tensor& x) { return x.dtype() == kFloat32 ? x : x.to(kFloat32); }
}  // namespace

float nvfp4_per_tensor_scale_of(const Tensor& x) {
  LOWBIT_CHECK(x.defined() && (x.dtype() == kFloat32 || x.dtype() == kBFloat16),
               "nvfp4_per_tensor_scale_of: input must be float32 or bfloat16, got {}",
               x.defined() ? lowbit::detail::desc(x) : "undefined");
  const Tensor f = as_f32(x);
  return core::nvfp4_per_tensor_scale(core::amax_of_run(f.data_ptr<float>(), f.numel()));
}

NVFP4Tensor to_nvfp4(const Tensor& x_in, std::optional<float> pts) {
  const char* op = "to_nvfp4";
  LOWBIT_CHECK(x_in.defined() && (x_in.dtype() == kFloat32 || x_in.dtype() == kBFloat16) && x_in.dim() >= 1,
               "{}: input must be a float32 or bfloat16 tensor of at least 1 dim, got {}", op,
               x_in.defined() ? lowbit::detail::desc(x_in) : "undefined");
  const int64_t K = x_in.size(-1);
  LOWBIT_CHECK(K % kBlock == 0, "{}: the last dim ({}) of {} must be a multiple of the block size 16", op, K,
               shape_str(x_in.shape()));
  const Tensor x = as_f32(x_in);
  const int64_t nb = x.numel() / kBlock;
  NVFP4Tensor t;
  t.per_tensor_scale = pts;
  t.orig_dtype = x_in.dtype();
  t.shape = x_in.shape();
  Shape sshape = t.shape, qshape = t.shape;
  sshape.back() = K / kBlock;
  qshape.back() = K / 2;
  t.scale = empty(sshape, kFloat8_e4m3fn);
  t.qdata = empty(qshape, kFloat4_e2m1fn_x2);
  const core::Format& fp4 = core::format(core::FormatId::Float4E2M1FN);
  const float* xp = x.data_ptr<float>();
  uint8_t* sb = static_cast<uint8_t*>(t.scale.raw_data());
  uint8_t* qp = static_cast<uint8_t*>(t.qdata.raw_data());
  const float p = pts.value_or(0.0f);  // <= 0: single level (core::nvfp4_block_scale)
  LOWBIT_CHECK(!pts || !(*pts <= 0.0f), "{}: per_tensor_scale must be positive (or NaN/inf, which propagate), got {}",
               op, *pts);
  lowbit::detail::parallel_for(nb, core::grain_for(kBlock), [&](int64_t b0, int64_t b1) {
    float v[kBlock];
    uint8_t c[kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const float* blk = xp + b * kBlock;
      const core::NVFP4BlockScale s = core::nvfp4_block_scale(core::amax_of_run(blk, kBlock), p);
      sb[b] = s.e4m3_byte;
      for (int64_t i = 0; i < kBlock; ++i) {  // x * multiplier clamped to +-6 (NaN stays), then RNE
        const float y = blk[i] * s.multiplier;
        v[i] = y != y ? y : std::min(std::max(y, -6.0f), 6.0f);
      }
      minifloat_encode_n(*fp4.minifloat, v, c, kBlock, true);
      for (int64_t i = 0; i < kBlock / 2; ++i)
        qp[b * kBlock / 2 + i] = static_cast<uint8_t>(c[2 * i] | (c[2 * i + 1] << 4));
    }
  });
  return t;
}

Tensor NVFP4Tensor::hp_scales() const {
  const MinifloatSpec& e4m3 = *minifloat_spec(kFloat8_e4m3fn);
  Tensor out = empty(scale.shape(), kFloat32);
  const uint8_t* sb = static_cast<const uint8_t*>(scale.raw_data());
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < out.numel(); ++i) {
    const float s8 = minifloat_decode(e4m3, sb[i]);
    o[i] = per_tensor_scale ? *per_tensor_scale * s8 : s8;  // RN(pts * s8) in float32
  }
  return out;
}

Tensor NVFP4Tensor::dequantize(std::optional<DType> dtype) const {
  const DType to = dtype.value_or(orig_dtype);
  LOWBIT_CHECK(to == kFloat32 || to == kBFloat16,
               "NVFP4Tensor::dequantize: target dtype must be float32 or bfloat16, got {}", dtype_name(to));
  const core::Format& fp4 = core::format(core::FormatId::Float4E2M1FN);
  float value[16];
  for (uint32_t c = 0; c < 16; ++c) value[c] = core::decode(fp4, c);
  const Tensor hp = hp_scales();
  const float* h = hp.data_ptr<float>();
  const uint8_t* q = static_cast<const uint8_t*>(qdata.raw_data());
  Tensor out = empty(shape, kFloat32);
  float* o = out.data_ptr<float>();
  const int64_t nb = out.numel() / kBlock;
  lowbit::detail::parallel_for(nb, core::grain_for(kBlock), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t i = 0; i < kBlock; ++i) {
        const int64_t e = b * kBlock + i;
        const uint8_t byte = q[e / 2];
        o[e] = value[(e % 2 ? byte >> 4 : byte) & 0xF] * h[b];
      }
  });
  return to == kFloat32 ? out : out.to(to);
}

}  // namespace lowbit::mx
