// to_mx and MXTensor (spec §4.1-4.3, §9 item 6): per block amax -> e8m0 scale -> scaled
// elements cast with round-to-nearest-even; dequantization in float32.
#include "lowbit/mx/mx.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/minifloat.h"
#include "lowbit/core/blocks.h"

namespace lowbit::mx {

namespace {
constexpr FormatId kElements[] = {FormatId::Float8E4M3FN, FormatId::Float8E5M2, FormatId::Float6E2M3FN,
                                  FormatId::Float6E3M2FN, FormatId::Float4E2M1FN};
bool is_element(FormatId id) {
  for (FormatId e : kElements)
    if (e == id) return true;
  return false;
}
template <int B>
void blocks_amax(const float* x, int64_t blocks, uint32_t* amax) {
  for (int64_t b = 0; b < blocks; ++b) amax[b] = core::amax_bits_of_run(x + b * B, B);
}
template <int B>
void spread(const float* block_value, int64_t blocks, float* out) {
  for (int64_t b = 0; b < blocks; ++b) {
    const float v = block_value[b];
#pragma omp simd
    for (int i = 0; i < B; ++i) out[b * B + i] = v;
  }
}
}  // namespace

const char* element_name(FormatId id) {
  switch (id) {
    case FormatId::Float8E4M3FN: return "float8_e4m3fn";
    case FormatId::Float8E5M2: return "float8_e5m2";
    case FormatId::Float6E2M3FN: return "fp6_e2m3";
    case FormatId::Float6E3M2FN: return "fp6_e3m2";
    case FormatId::Float4E2M1FN: return "fp4_e2m1";
    default: return "?";
  }
}

std::string mx_element_names() {
  std::string s;
  for (FormatId e : kElements) s += (s.empty() ? "" : ", ") + std::string(element_name(e));
  return s;
}

const core::Format& mx_element(FormatId id) {
  LOWBIT_CHECK(is_element(id), "MX element format must be one of {}, got {}", mx_element_names(),
               core::format(id).name);
  return core::format(id);
}

const core::Format& mx_element(std::string_view name) {
  const core::Format* f = core::find_format(name);
  LOWBIT_CHECK(f != nullptr && is_element(f->id), "MX element format must be one of {}, got '{}'", mx_element_names(),
               name);
  return *f;
}

E8M0Rounding parse_scale_mode(std::string_view name) {
  for (E8M0Rounding m : {E8M0Rounding::Floor, E8M0Rounding::Ceil, E8M0Rounding::Even, E8M0Rounding::RCeil})
    if (name == core::to_string(m)) return m;
  throw Error(fmt::format("MX scale_calculation_mode must be FLOOR, CEIL, EVEN or RCEIL, got '{}'", name));
}

namespace {
// What to_mx and to_mx_transposed check and allocate: the element format, x's dtype, the blocked
// dim's length (K) against the block size, fp4's even length; x as float32.
struct MXSetup {
  const core::Format* e;
  Tensor x;
};
MXSetup check_mx_input(const char* op, const Tensor& x_in, FormatId elem, int64_t block_size, int64_t k,
                       const char* dim) {
  const core::Format& e = mx_element(elem);
  LOWBIT_CHECK(block_size >= 1 && block_size <= (int64_t{1} << 20), "{}: block_size must be in [1, 2^20], got {}", op,
               block_size);
  LOWBIT_CHECK(k % block_size == 0, "{}: the {} ({}) of {} must be a multiple of block_size {}", op, dim, k,
               shape_str(x_in.shape()), block_size);
  LOWBIT_CHECK(e.per_byte != 2 || k % 2 == 0, "{}: {} packs two elements per byte; the {} must be even, got {}", op,
               element_name(elem), dim, k);
  return {&e, x_in.dtype() == kFloat32 ? x_in : x_in.to(kFloat32)};
}
void check_mx_dtype(const char* op, const Tensor& x_in, int64_t min_dim) {
  LOWBIT_CHECK(x_in.defined() && (x_in.dtype() == kFloat32 || x_in.dtype() == kBFloat16) && x_in.dim() >= min_dim,
               "{}: input must be a float32 or bfloat16 tensor of {} dim{}, got {}", op,
               min_dim == 1 ? "at least 1" : "2", min_dim == 1 ? "" : "s",
               x_in.defined() ? lowbit::detail::desc(x_in) : "undefined");
}
MXTensor empty_mx(const core::Format& e, FormatId elem, int64_t block_size, DType orig, Shape shape) {
  MXTensor t;
  t.elem = elem;
  t.block_size = block_size;
  t.orig_dtype = orig;
  t.shape = shape;
  const int64_t k = shape.back();
  Shape sshape = shape;
  sshape.back() = k / block_size;
  t.scale = empty(sshape, kFloat8_e8m0fnu);
  const bool packed = e.per_byte == 2;
  if (packed) shape.back() = k / 2;
  t.qdata = empty(shape, packed ? kFloat4_e2m1fn_x2 : e.storage_dtype);
  return t;
}

// Consecutive blocks of x (nbk of block_size values) -> their e8m0 scale bytes and element codes
// (packed for fp4): each block's amax as an integer max, the scales in one vectorized call, the
// multipliers spread per element, one encode (compiled for the element format). The scratch is
// the caller's, sized for its largest call.
struct BlockEncoder {
  const core::Format& e;
  E8M0Rounding mode;
  int64_t block;
  bool packed, saturate;
  std::vector<float> mult, block_mult;
  std::vector<uint32_t> amax;
  std::vector<uint8_t> tmp;
  BlockEncoder(const core::Format& f, E8M0Rounding m, int64_t bs, int64_t max_blocks)
      : e(f),
        mode(m),
        block(bs),
        packed(f.per_byte == 2),
        // fp8: FLOOR/CEIL/EVEN clamp to +-max before PyTorch's cast, RCEIL does not; fp6/fp4 saturate
        saturate(m != E8M0Rounding::RCeil || f.bits < 8),
        mult(static_cast<size_t>(max_blocks * bs)),
        block_mult(static_cast<size_t>(max_blocks)),
        amax(static_cast<size_t>(max_blocks)),
        tmp(packed ? mult.size() : 0) {}
  // qp: the codes' first byte (packed: x's first element must be even)
  void run(const float* x, int64_t nbk, uint8_t* scales, uint8_t* qp) {
    const int64_t len = nbk * block;
    // the default block of 32: fixed trip counts unroll into a few vector ops
    if (block == 32)
      blocks_amax<32>(x, nbk, amax.data());
    else
      for (int64_t b = 0; b < nbk; ++b) amax[static_cast<size_t>(b)] = core::amax_bits_of_run(x + b * block, block);
    core::e8m0_scales(amax.data(), nbk, e, mode, scales, block_mult.data());
    if (block == 32)
      spread<32>(block_mult.data(), nbk, mult.data());
    else
      for (int64_t b = 0; b < nbk; ++b) std::fill_n(mult.data() + b * block, block, block_mult[static_cast<size_t>(b)]);
    uint8_t* dst = packed ? tmp.data() : qp;
    minifloat_encode_scaled(*e.minifloat, x, 0.0f, mult.data(), dst, len, saturate);
    if (packed) core::pack(e, tmp.data(), qp, len);
  }
};
}  // namespace

MXTensor to_mx(const Tensor& x_in, FormatId elem, int64_t block_size, E8M0Rounding mode) {
  const char* op = "to_mx";
  check_mx_dtype(op, x_in, 1);
  const auto [e, x] = check_mx_input(op, x_in, elem, block_size, x_in.size(-1), "last dim");
  MXTensor t = empty_mx(*e, elem, block_size, x_in.dtype(), x_in.shape());
  const int64_t nb = x.numel() / block_size;
  const bool packed = e->per_byte == 2;
  const float* xp = x.data_ptr<float>();
  uint8_t* sb = static_cast<uint8_t*>(t.scale.raw_data());
  uint8_t* qp = static_cast<uint8_t*>(t.qdata.raw_data());
  // chunks of whole blocks (about 1024 elements, 4 KB: short enough that the DRAM stream of the
  // amax pass and the encoder's compute interleave; 4096 measured slower)
  int64_t per_chunk = std::max<int64_t>(1, 1024 / block_size);
  if (packed && per_chunk * block_size % 2 != 0) ++per_chunk;  // chunks start on whole bytes
  const int64_t chunks = (nb + per_chunk - 1) / per_chunk;
  lowbit::detail::parallel_for(chunks, std::max<int64_t>(1, 8), [&](int64_t c0, int64_t c1) {
    BlockEncoder enc(*e, mode, block_size, per_chunk);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b0 = c * per_chunk, b1 = std::min(nb, b0 + per_chunk);
      if (c + 2 < c1)  // two chunks ahead: the amax pass would otherwise wait on each line
        for (int64_t i = (c + 2) * per_chunk * block_size; i < (c + 3) * per_chunk * block_size; i += 16)
          __builtin_prefetch(xp + i);
      enc.run(xp + b0 * block_size, b1 - b0, sb + b0, qp + (packed ? b0 * block_size / 2 : b0 * block_size));
    }
  });
  return t;
}

namespace {
#if defined(__AVX512F__)
// 16 rows of 16 floats -> their transpose, in registers
inline void transpose16x16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]),
                  c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
  }
}
#endif
// t[c * rows + r] = x[r * ld + c] for r < rows, c < width (width <= 16)
void transpose_tile(const float* x, int64_t ld, int64_t rows, int64_t width, float* t) {
  int64_t r = 0;
#if defined(__AVX512F__)
  if (width == 16)
    for (; r + 16 <= rows; r += 16) {
      __m512 v[16];
      for (int i = 0; i < 16; ++i) v[i] = _mm512_loadu_ps(x + (r + i) * ld);
      transpose16x16(v);
      for (int c = 0; c < 16; ++c) _mm512_storeu_ps(t + c * rows + r, v[c]);
    }
#endif
  for (; r < rows; ++r)
    for (int64_t c = 0; c < width; ++c) t[c * rows + r] = x[r * ld + c];
}
}  // namespace

MXTensor to_mx_transposed(const Tensor& x_in, FormatId elem, int64_t block_size, E8M0Rounding mode) {
  const char* op = "to_mx_transposed";
  check_mx_dtype(op, x_in, 2);
  LOWBIT_CHECK(x_in.dim() == 2, "{}: input must be 2-D (rows x cols), got {}", op, shape_str(x_in.shape()));
  const int64_t m = x_in.size(0), k = x_in.size(1);
  const auto [e, x] = check_mx_input(op, x_in, elem, block_size, m, "first dim");
  MXTensor t = empty_mx(*e, elem, block_size, x_in.dtype(), {k, m});
  if (t.qdata.numel() == 0) return t;
  const bool packed = e->per_byte == 2;
  // strips of whole blocks, at least 256 rows (each output row gets 256 codes per visit: 64-row
  // strips measured 0.6x of this), in panels of 256 columns copied row by row (1 KB runs), 16
  // columns at a time transposed in registers into a buffer (column-major: its blocks
  // consecutive), encoded like to_mx's chunks, each column's codes and scales copied to their
  // output rows. x is read from memory once.
  const int64_t per_strip = std::max<int64_t>(1, (256 + block_size - 1) / block_size);
  const int64_t strip = per_strip * block_size, strips = (m / block_size + per_strip - 1) / per_strip;
  const float* xp = x.data_ptr<float>();
  uint8_t* sb = static_cast<uint8_t*>(t.scale.raw_data());
  uint8_t* qp = static_cast<uint8_t*>(t.qdata.raw_data());
  const int64_t mb = m / block_size, qrow = packed ? m / 2 : m;
  constexpr int64_t kPanel = 256;
  lowbit::detail::parallel_for(strips, 1, [&](int64_t s0, int64_t s1) {
    std::vector<float> tile(static_cast<size_t>(16 * strip)), panel(static_cast<size_t>(strip * kPanel));
    std::vector<uint8_t> codes(static_cast<size_t>(16 * (packed ? strip / 2 : strip))), scales(16 * per_strip);
    BlockEncoder enc(*e, mode, block_size, 16 * per_strip);
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t r0 = s * strip, rows = std::min(strip, m - r0), nbk = rows / block_size;
      const int64_t crow = packed ? rows / 2 : rows;
      for (int64_t p0 = 0; p0 < k; p0 += kPanel) {
        // the strip's panel copied row by row (sequential runs of 1 KB: the DRAM streams stay long)
        const int64_t pw = std::min(kPanel, k - p0);
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(panel.data() + r * kPanel, xp + (r0 + r) * k + p0, static_cast<size_t>(pw) * 4);
        for (int64_t jj = 0; jj < pw; jj += 16) {
          const int64_t j = p0 + jj, width = std::min<int64_t>(16, pw - jj);
          transpose_tile(panel.data() + jj, kPanel, rows, width, tile.data());
          enc.run(tile.data(), width * nbk, scales.data(), codes.data());
          for (int64_t c = 0; c < width; ++c) {
            std::memcpy(qp + (j + c) * qrow + (packed ? r0 / 2 : r0), codes.data() + c * crow,
                        static_cast<size_t>(crow));
            std::memcpy(sb + (j + c) * mb + r0 / block_size, scales.data() + c * nbk, static_cast<size_t>(nbk));
          }
        }
      }
    }
  });
  return t;
}

Tensor MXTensor::codes() const {
  const core::Format& e = mx_element(elem);
  if (qdata.dtype() == kUInt8) return qdata;
  Tensor out = empty(shape, kUInt8);
  if (e.per_byte != 2) {  // fp8: the same bytes
    std::memcpy(out.raw_data(), qdata.raw_data(), static_cast<size_t>(out.numel()));
    return out;
  }
  core::unpack(e, static_cast<const uint8_t*>(qdata.raw_data()), static_cast<uint8_t*>(out.raw_data()), out.numel());
  return out;
}

Tensor MXTensor::dequantize(std::optional<DType> dtype) const {
  const DType to = dtype.value_or(orig_dtype);
  LOWBIT_CHECK(to == kFloat32 || to == kBFloat16,
               "MXTensor::dequantize: target dtype must be float32 or bfloat16, got {}", dtype_name(to));
  const core::Format& e = mx_element(elem);
  float value[256];
  for (uint32_t c = 0; c < 256; ++c) value[c] = c < (1u << e.bits) ? core::decode(e, c) : 0.0f;
  const Tensor q = codes();
  Tensor out = empty(shape, kFloat32);
  const uint8_t* qp = static_cast<const uint8_t*>(q.raw_data());
  const uint8_t* sb = static_cast<const uint8_t*>(scale.raw_data());
  float* o = out.data_ptr<float>();
  const int64_t nb = out.numel() / block_size;
  lowbit::detail::parallel_for(nb, core::grain_for(block_size), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float f = sb[b] == 255 ? std::numeric_limits<float>::quiet_NaN() : std::ldexp(1.0f, sb[b] - 127);
      for (int64_t i = b * block_size; i < (b + 1) * block_size; ++i) o[i] = value[qp[i]] * f;
    }
  });
  return to == kFloat32 ? out : out.to(to);
}

}  // namespace lowbit::mx
