// Code-book formats: a value is the index of the nearest entry of a sorted table, scaled per
// block -- torchao's low-bit optimizer states (spec §5.3-5.4; bitsandbytes' dynamic maps). The
// tables are generated the way torchao builds them (create_dynamic_map with PyTorch 2.11's
// float32 linspace) and tested equal to ../shared/spec/optim-codebooks.txt.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lowbit::core {

enum class CodebookId : uint8_t {
  Dynamic8Signed,    // create_dynamic_map(True, 7, 8): AdamW8bit's exp_avg
  Dynamic8Unsigned,  // create_dynamic_map(False, 7, 8): exp_avg_sq, max_exp_avg_sq
  Dynamic4Signed,    // create_dynamic_map(True, 3, 4): AdamW4bit's exp_avg
  Linear4Unsigned,   // linspace(0, 1, 17)[1:] = k/16, no zero: AdamW4bit's exp_avg_sq
  kCount
};

struct Codebook {
  CodebookId id;
  const char* name;  // "dynamic8_signed", ...
  int bits;          // 8 or 4
  bool is_signed;
  std::vector<float> values;  // 2^bits entries, ascending
};

const Codebook& codebook(CodebookId id);
/// By name; throws naming the known ones.
const Codebook& codebook_by_name(std::string_view name);
std::string codebook_names();

/// torch.linspace(start, end, n) in float32 as PyTorch 2.11's CPU kernel computes it: step =
/// (end - start) / (n - 1) in float32; entry i = fma(step, i, start) for i < n / 2, else
/// fma(-step, n - 1 - i, end).
std::vector<float> linspace_f32(float start, float end, int64_t n);
/// torchao's create_dynamic_map (bitsandbytes' dynamic map without zero padding), sorted.
std::vector<float> create_dynamic_map(bool is_signed, int max_exponent_bits, int total_bits);

/// The code of each normalized value: torchao's branchless binary search (the largest index whose
/// entry is <= x; 0 below the first entry), then one up when x - q[i] >= (q[i+1] - q[i]) / 2 (ties
/// go up; capped at the last entry). NaN gives 0.
void codebook_encode(const Codebook& cb, const float* x, uint8_t* codes, int64_t n);
/// The same codes by the search itself, one value at a time (what codebook_encode's tables are
/// built from and tested against). On AVX-512 builds codebook_encode computes the codes: the 8-bit
/// maps by arithmetic over runs of equal spacing (codebook_segment_margin) with a bucket table
/// (one lookup per value) near thresholds, the linear 4-bit map by floor(16x - 1/2), the signed
/// 4-bit map by a four-step register search (codebook_has_fast_encode: all four have the table).
void codebook_encode_reference(const Codebook& cb, const float* x, uint8_t* codes, int64_t n);
bool codebook_has_fast_encode(const Codebook& cb);
/// 8-bit maps also have an arithmetic encoder (runs of equally spaced entries, no lookup per
/// value; the bucket table only for values within `margin` of a threshold, in units of the local
/// spacing): its margin, or 0 where the code book does not qualify (4-bit maps).
float codebook_segment_margin(const Codebook& cb);

/// Blockwise state quantization (torchao's OptimState8bit / 4bit): per block of `block` values,
/// scale = max(amax, 1e-12) (NaN stays NaN), codes of x / scale (true division). n % block == 0.
/// codes: one per byte (see pack_nibbles_high_first for 4-bit storage).
void codebook_quantize_blocks(const Codebook& cb, const float* x, int64_t n, int64_t block, uint8_t* codes,
                              float* scales);
/// out = q[code] * scale of its block.
void codebook_dequantize_blocks(const Codebook& cb, const uint8_t* codes, const float* scales, int64_t n, int64_t block,
                                float* out);

/// One block, on the calling thread: its codes, and its scale returned / given.
float codebook_quantize_block(const Codebook& cb, const float* x, int64_t n, uint8_t* codes);
void codebook_dequantize_block(const Codebook& cb, const uint8_t* codes, float scale, int64_t n, float* out);

/// torchao's OptimStateFp8: per block scale = max(amax, 1e-12) / 448, codes = float8_e4m3fn(x / scale)
/// (round to nearest even).
void fp8_state_quantize_blocks(const float* x, int64_t n, int64_t block, uint8_t* codes, float* scales);
void fp8_state_dequantize_blocks(const uint8_t* codes, const float* scales, int64_t n, int64_t block, float* out);
float fp8_state_quantize_block(const float* x, int64_t n, uint8_t* codes);
void fp8_state_dequantize_block(const uint8_t* codes, float scale, int64_t n, float* out);

/// torchao's 4-bit state packing: byte k = (code[2k] << 4) | code[2k + 1] -- element 2k in the HIGH
/// nibble (the opposite of MX fp4's packing). n even.
void pack_nibbles_high_first(const uint8_t* codes, uint8_t* packed, int64_t n);
void unpack_nibbles_high_first(const uint8_t* packed, uint8_t* codes, int64_t n);

}  // namespace lowbit::core
