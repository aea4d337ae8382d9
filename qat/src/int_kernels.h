// Integer kernels behind converted linears (not installed).
//
// * gemm_u8s8_grouped: int8 dynamic activations x int8 weight codes (int2..int8 values) with one
//   float scale per (row, group of K). Per-channel weights (one group = K) run oneDNN's u8 x s8 ->
//   s32 matmul (brgemm, weights reordered once to its blocked layout, K contiguous on both sides);
//   per-group weights an AVX-512 VNNI (vpdpbusd) micro-kernel on weights packed as
//   [N/16][K/4][16][4]. Either way the int32 sum of every group is scaled once, so the result is
//   the exact integer dot product per group up to float32 rounding in the scaling and the sum over
//   groups.
// * gemv_weight_only: float activations (a few rows) x int4 (nibble-packed, low nibble first) or
//   int8 weight codes with per-group scales and zero points, reading the packed codes directly
//   (the batch-1 decode path: memory-bound on the codes).
// * gemm_mx_int8: MX activations x MX weights whose element values are integers once multiplied by
//   a power of two (fp4 e2m1 x 2, fp6 e2m3 x 8: int8), one power-of-two scale per block of K on
//   each side. Activations come as u8 (value + 128), weights as int8 -- fp4 weights stay two per
//   byte and are expanded per 48-column panel with a byte shuffle. Each block's int32 sum is exact;
//   it is scaled by (activation scale x weight scale) and summed over blocks in float32.
// Each has a scalar reference implementation (used where AVX-512 VNNI is not compiled in and by
// the tests).
#pragma once
#include <cstdint>
#include <memory>

#include "lowbit/autograd/tensor.h"

namespace lowbit::qat::kernels {

/// True when the AVX-512 (VNNI, BW) kernels are compiled into this build.
bool simd_available();

struct OnednnS8Matmul;  // oneDNN u8 x s8 -> s32 matmul with prepacked weights (int_kernels.cpp)

struct GroupedS8Weight {
  int64_t n = 0, k = 0, group = 0;         // group: the kernel's (sub-)group (see pack_grouped_s8)
  std::shared_ptr<OnednnS8Matmul> onednn;  // per-channel schemes (one group = K): oneDNN's int8 matmul
  Tensor packed;                           // int8 [N/16][K/4][16][4] (VNNI kernel; undefined when onednn is set)
  Tensor scales;                           // float32 [N/16][K/group][16] (VNNI kernel; undefined when onednn is set)
  Tensor corr;                             // float32 [N]: sum_g s[n,g] * sum_{k in g} w[n,k]
  Tensor codes;                            // int8 [N, K] row-major (reference path)
  Tensor scales_rowmajor;                  // float32 [N, K/group] (reference path)
};
/// Whether (n, k, group) fits the packed layout (n % 16 == 0, group % 4 == 0, k % group == 0).
bool grouped_s8_supported(int64_t n, int64_t k, int64_t group);
GroupedS8Weight pack_grouped_s8(const int8_t* codes, const float* scales, int64_t n, int64_t k, int64_t group);
/// out[m, n] = row_scale[m] * (sum_g s[n,g] * sum_{k in g} a[m,k] w[n,k] - row_offset[m] * corr[n]) + bias[n]
/// for unsigned activation codes a (M, K). bias may be null. reference=true runs the scalar path.
void gemm_u8s8_grouped(const uint8_t* a, int64_t m, const GroupedS8Weight& w, const float* row_scale,
                       const float* row_offset, const float* bias, float* out, bool reference = false);

/// Whether the decode kernel handles these codes (4-bit signed nibbles or int8; group % 32 == 0).
bool weight_only_supported(int bits, bool is_signed, int64_t k, int64_t group);
/// out[m, n] = sum_g s[n,g] * sum_{k in g} x[m,k] * (w[n,k] - z[n,g]) + bias[n], for m < rows.
/// qdata: (N, K/2) nibbles (bits == 4) or (N, K) int8; scales (N, K/group); zero_points int8
/// (N, K/group), or null when all are zero (skips the correction).
void gemv_weight_only(const float* x, int64_t rows, const uint8_t* qdata, int bits, int64_t n, int64_t k, int64_t group,
                      const float* scales, const int8_t* zero_points, const float* bias, float* out,
                      bool reference = false);

/// An MX weight in the VNNI kernel's layout. Values are int8 (the element value x a power of two);
/// `nibbles`: 4-bit codes packed [N/16][K/8][16][4] (low nibbles: K-steps 2p, high nibbles: 2p + 1)
/// and decoded through `lut`; else int8 values [N/16][K/4][16][4].
struct MXInt8Weight {
  int64_t n = 0, k = 0, block = 0;
  bool nibbles = false;
  int8_t lut[16] = {};  // nibble code -> int8 value (nibbles only)
  Tensor packed;        // uint8 nibbles or int8 values, as above
  Tensor scales;        // float32 [N/16][K/block][16]: each block's scale / the value multiplier
  Tensor comp;          // int32 [N/16][K/block][16]: -128 x the block's sum of values (the u8 offset)
  /// The int8 value of element (row, col) (reference path, tests).
  int8_t value_at(int64_t row, int64_t col) const;
};
/// Whether (n, k, block) fits the layout: n % 16 == 0, k % block == 0, block % 8 == 0 (nibbles)
/// or % 4 == 0.
bool mx_int8_supported(int64_t n, int64_t k, int64_t block, bool nibbles);
/// codes: N x K element codes, one per byte; lut: code -> int8 value (lut_size entries; 16 packs
/// nibbles); scales: N x K/block floats (the block's scale already divided by the multiplier that
/// made the values integers).
MXInt8Weight pack_mx_int8(const uint8_t* codes, const int8_t* lut, int lut_size, const float* scales, int64_t n,
                          int64_t k, int64_t block);
/// out[i] = lut[codes[i]] for codes below 64 (the activation's codes -> u8 values + 128).
void lookup_u8(const uint8_t* codes, int64_t n, const uint8_t lut[64], uint8_t* out);
/// out[m, n] = sum_b (sa[m,b] * sw[n,b]) * (sum_{k in b} (a[m,k] - 128) w[n,k]) + bias[n], the
/// products of scales and the float32 sum over blocks b in order (one fma per block). a: M x K
/// u8 (value + 128); a_scales: M x K/block (scale / multiplier, as the weight's). bias may be null.
void gemm_mx_int8(const uint8_t* a, int64_t m, const float* a_scales, const MXInt8Weight& w, const float* bias,
                  float* out, bool reference = false);

}  // namespace lowbit::qat::kernels
