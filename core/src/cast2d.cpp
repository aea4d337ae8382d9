// The shared 2-D cast kernels (core/cast2d.h).
#include "lowbit/core/cast2d.h"

#include <algorithm>
#include <cmath>

#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/minifloat.h"
#include "lowbit/core/blocks.h"

namespace lowbit::core {

DType code_dtype(const Format& elem) { return elem.bits == 8 ? elem.storage_dtype : kUInt8; }

void cast_run(const Format& elem, CastOutput output, void* out, const float* x, const float* s, bool each, int64_t n,
              int64_t at, const float* inv) {
  const MinifloatSpec& spec = *elem.minifloat;
  if (output == CastOutput::Codes) {
    minifloat_encode_scaled(spec, x, s[0], each ? s : nullptr, static_cast<uint8_t*>(out) + at, n, true);
    return;
  }
  // the bfloat16 forms round on the float itself (no code bytes in between; bit-identical)
  uint16_t* dst = static_cast<uint16_t*>(out) + at;
  if (output == CastOutput::Bf16Codes)
    minifloat_round_scaled_bf16(spec, x, s[0], each ? s : nullptr, 1.0f, nullptr, dst, n);
  else
    minifloat_round_scaled_bf16(spec, x, s[0], each ? s : nullptr, 1.0f / s[0], each ? inv : nullptr, dst, n);
}

void flag_bf16_subnormal(Cast2D& c) {
  if (c.output != CastOutput::Bf16Dequantized) return;
  const double smallest = minifloat_decode(*c.elem->minifloat, 1), limit = std::ldexp(1.0, -126);
  const float* s = c.scale.data_ptr<float>();
  for (int64_t i = 0; i < c.scale.numel() && !c.bf16_subnormal; ++i) c.bf16_subnormal = smallest / s[i] < limit;
}

Cast2D cast_blocked_2d(const float* x, int64_t rows, int64_t cols, const Format& elem, ScaleAxis axis, int64_t block,
                       const AmaxToMultiplier& rule, CastOutput output) {
  LOWBIT_CHECK(elem.minifloat != nullptr, "cast_blocked_2d: {} is not a minifloat format", elem.name);
  LOWBIT_ASSERT(block > 0 && axis != ScaleAxis::Tensor);
  const int64_t rb = (rows + block - 1) / block, cb = (cols + block - 1) / block;
  const Shape sshape = axis == ScaleAxis::Row   ? Shape{rows, cb}
                       : axis == ScaleAxis::Col ? Shape{rb, cols}
                                                : Shape{rb, cb};
  Cast2D c{empty({rows, cols}, output == CastOutput::Codes ? code_dtype(elem) : kBFloat16),
           empty(sshape, kFloat32),
           axis,
           output,
           block,
           false,
           &elem};
  void* out = c.values.raw_data();
  float* sp = c.scale.data_ptr<float>();
  if (axis == ScaleAxis::Row) {  // a row's runs: amax and multiplier, cast while the row is in cache --
                                 // run by run for long runs; for short ones (MX's 32) the row's
                                 // multipliers spread per element and one cast of the whole row,
                                 // since a kernel call per 32 elements costs more than the work
    const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1));
    const bool spread = block < 128;
    lowbit::detail::parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
      std::vector<float> mult(spread ? static_cast<size_t>(cols) : 0), inv(mult.size());
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t b = 0; b < cb; ++b) {
          const int64_t o = b * block, n = std::min(block, cols - o);
          float* s = sp + r * cb + b;
          *s = rule(amax_of_run(x + r * cols + o, n));
          if (!spread) {
            cast_run(elem, output, out, x + r * cols + o, s, false, n, r * cols + o);
            continue;
          }
          std::fill_n(mult.data() + o, n, *s);
          std::fill_n(inv.data() + o, n, 1.0f / *s);
        }
        if (spread) cast_run(elem, output, out, x + r * cols, mult.data(), true, cols, r * cols, inv.data());
      }
    });
  } else {  // a strip of `block` rows at a time: the column (Col) or tile (Tile) maxima over the
            // strip, then its rows cast with them -- the strip is still in cache
    lowbit::detail::parallel_for(rb, 1, [&](int64_t s0, int64_t s1) {
      std::vector<float> m(static_cast<size_t>(axis == ScaleAxis::Col ? cols : cb));
      std::vector<float> mult(static_cast<size_t>(cols)), inv(static_cast<size_t>(cols));
      for (int64_t st = s0; st < s1; ++st) {
        const int64_t r_begin = st * block, r_end = std::min(rows, r_begin + block);
        std::fill(m.begin(), m.end(), 0.0f);
        for (int64_t r = r_begin; r < r_end; ++r) {
          if (axis == ScaleAxis::Col) {
            column_max_update(x + r * cols, cols, m.data());
          } else {
            for (int64_t b = 0; b < cb; ++b)
              m[static_cast<size_t>(b)] = nan_max(
                  m[static_cast<size_t>(b)], amax_of_run(x + r * cols + b * block, std::min(block, cols - b * block)));
          }
        }
        // the strip's multiplier of every column (the same for each of its rows)
        float* s = sp + st * static_cast<int64_t>(m.size());
        for (size_t j = 0; j < m.size(); ++j) s[j] = rule(m[j]);
        for (int64_t j = 0; j < cols; ++j) {
          mult[static_cast<size_t>(j)] = axis == ScaleAxis::Col ? s[j] : s[j / block];
          inv[static_cast<size_t>(j)] = 1.0f / mult[static_cast<size_t>(j)];
        }
        for (int64_t r = r_begin; r < r_end; ++r)
          cast_run(elem, output, out, x + r * cols, mult.data(), true, cols, r * cols, inv.data());
      }
    });
  }
  flag_bf16_subnormal(c);
  return c;
}

float Cast2D::scale_at(int64_t r, int64_t col) const {
  const float* s = scale.data_ptr<float>();
  const int64_t cols = values.size(1);
  if (block == 0) return axis == ScaleAxis::Row ? s[r] : axis == ScaleAxis::Col ? s[col] : s[0];
  const int64_t cb = (cols + block - 1) / block;
  switch (axis) {
    case ScaleAxis::Row: return s[r * cb + col / block];
    case ScaleAxis::Col: return s[(r / block) * cols + col];
    default: return s[(r / block) * cb + col / block];
  }
}

Tensor dequantize_f32(const Cast2D& c) {
  LOWBIT_ASSERT(c.output == CastOutput::Codes && c.elem != nullptr);
  float table[256];
  for (uint32_t code = 0; code < 256; ++code)
    table[code] = code < (1u << c.elem->bits) ? minifloat_decode(*c.elem->minifloat, code) : 0.0f;
  const int64_t rows = c.values.size(0), cols = c.values.size(1);
  Tensor out = empty({rows, cols}, kFloat32);
  const uint8_t* q = static_cast<const uint8_t*>(c.values.raw_data());
  float* o = out.data_ptr<float>();
  const float* sp = c.scale.data_ptr<float>();
  lowbit::detail::parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)),
                               [&](int64_t r0, int64_t r1) {
                                 std::vector<float> buf(static_cast<size_t>(cols));
                                 for (int64_t r = r0; r < r1; ++r) {
                                   const float* s = buf.data();  // the row's multipliers
                                   if (c.axis == ScaleAxis::Col) {
                                     s = sp + (c.block > 0 ? (r / c.block) * cols : 0);
                                   } else if (c.block == 0) {
                                     std::fill(buf.begin(), buf.end(), c.axis == ScaleAxis::Row ? sp[r] : sp[0]);
                                   } else {
                                     const int64_t cb = (cols + c.block - 1) / c.block;
                                     const float* row = sp + (c.axis == ScaleAxis::Row ? r : r / c.block) * cb;
                                     for (int64_t j = 0; j < cols; ++j) buf[static_cast<size_t>(j)] = row[j / c.block];
                                   }
                                   const uint8_t* qr = q + r * cols;
                                   float* orow = o + r * cols;
#pragma omp simd
                                   for (int64_t j = 0; j < cols; ++j) orow[j] = table[qr[j]] / s[j];
                                 }
                               });
  return out;
}

}  // namespace lowbit::core
