// Dynamic float8 casts (spec §3.3, §9 items 3-4): amax, scale, saturating RNE cast, dequantize.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cast_internal.h"
#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/core/blocks.h"
#include "lowbit/core/cast2d.h"
#include "lowbit/core/format.h"
#include "lowbit/core/scale.h"

namespace lowbit::float8 {
namespace detail {

const MinifloatSpec& float8_spec(DType d, const char* what) {
  const bool ok = d == DType::Float8_e4m3fn || d == DType::Float8_e5m2 || d == DType::Float8_e4m3fnuz ||
                  d == DType::Float8_e5m2fnuz;
  LOWBIT_CHECK(ok, "{}: the target dtype must be float8_e4m3fn, float8_e5m2 or a fnuz variant, got {}", what,
               dtype_name(d));
  return *minifloat_spec(d);
}

const core::Format& float8_format(DType d) {
  float8_spec(d, "float8 format");
  for (size_t i = 0; i < core::kNumFormats; ++i)
    if (core::formats()[i].storage_dtype == d && core::formats()[i].minifloat) return core::formats()[i];
  throw Error(fmt::format("no float8 format for dtype {}", dtype_name(d)));
}

namespace {
float to_scale(float amax, const core::Format& f, bool pow2) {
  const float s = core::float8_amax_to_scale(static_cast<double>(amax), f);
  return pow2 ? core::round_scale_to_power_of_2(s) : s;
}
void combine_column_max(const std::vector<float>& part, int64_t parts, int64_t cols, std::vector<float>& out) {
  out.assign(static_cast<size_t>(cols), 0.0f);
  for (int64_t p = 0; p < parts; ++p)
    for (int64_t j = 0; j < cols; ++j)
      out[static_cast<size_t>(j)] = core::nan_max(out[static_cast<size_t>(j)], part[static_cast<size_t>(p * cols + j)]);
}

}  // namespace

namespace {
Cast2D cast_2d_impl(const float* x, int64_t rows, int64_t cols, DType fp8, ScaleAxis axis, bool pow2, CastOutput output,
                    std::vector<float>* column_amax) {
  float8_spec(fp8, "float8 cast");
  LOWBIT_ASSERT(output != CastOutput::Bf16Dequantized || pow2);
  const core::Format& f = float8_format(fp8);
  Cast2D c{empty({rows, cols}, output == CastOutput::Codes ? fp8 : kBFloat16), Tensor(), axis, output, 0, false, &f};
  void* out = c.values.raw_data();
  const int64_t grain_rows = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1));
  const int nt = std::max(1, get_num_threads());
  if (axis == ScaleAxis::Row) {
    c.scale = empty({rows}, kFloat32);
    float* sp = c.scale.data_ptr<float>();
    if (!column_amax) {
      lowbit::detail::parallel_for(rows, grain_rows, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {  // the row stays in cache between its amax and its cast
          sp[r] = to_scale(core::amax_of_run(x + r * cols, cols), f, pow2);
          core::cast_run(f, output, out, x + r * cols, sp + r, false, cols, r * cols);
        }
      });
      return c;
    }
    // the same, and each thread's column maxima over its rows while they are in cache
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(nt, rows));
    std::vector<float> part(static_cast<size_t>(parts * cols), 0.0f);
    lowbit::detail::parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t r = rows * p / parts; r < rows * (p + 1) / parts; ++r) {
          sp[r] = to_scale(core::amax_of_run(x + r * cols, cols), f, pow2);
          core::cast_run(f, output, out, x + r * cols, sp + r, false, cols, r * cols);
          core::column_max_update(x + r * cols, cols, part.data() + p * cols);
        }
    });
    combine_column_max(part, parts, cols, *column_amax);
    return c;
  }
  if (axis == ScaleAxis::Tensor) {
    std::vector<float> part(static_cast<size_t>(nt) * 16, 0.0f);  // one cache line per thread
    const int64_t n = rows * cols;
    lowbit::detail::parallel_for(nt, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = n * t / nt, e = n * (t + 1) / nt;
        part[static_cast<size_t>(t) * 16] = core::amax_of_run(x + b, e - b);
      }
    });
    float amax = 0.0f;
    for (int t = 0; t < nt; ++t) amax = core::nan_max(amax, part[static_cast<size_t>(t) * 16]);
    const float s = to_scale(amax, f, pow2);
    c.scale = full({1}, s, kFloat32);
    lowbit::detail::parallel_for(
        n, kParallelGrain, [&](int64_t b, int64_t e) { core::cast_run(f, output, out, x + b, &s, false, e - b, b); });
    return c;
  }
  // per column: each thread keeps the maxima of every column over its block of rows (walking
  // memory in order), the blocks' maxima are combined -- unless a row cast of the same matrix
  // gathered them already (column_amax) -- then every row is cast with the column multipliers
  c.scale = empty({cols}, kFloat32);
  float* sp = c.scale.data_ptr<float>();
  std::vector<float> local;
  std::vector<float>& cm = column_amax ? *column_amax : local;
  if (static_cast<int64_t>(cm.size()) != cols) {
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(nt, rows));
    std::vector<float> part(static_cast<size_t>(parts * cols), 0.0f);
    lowbit::detail::parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t r = rows * p / parts; r < rows * (p + 1) / parts; ++r)
          core::column_max_update(x + r * cols, cols, part.data() + p * cols);
    });
    combine_column_max(part, parts, cols, cm);
  }
  std::vector<float> inv(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {
    sp[j] = to_scale(cm[static_cast<size_t>(j)], f, pow2);
    inv[static_cast<size_t>(j)] = 1.0f / sp[j];
  }
  lowbit::detail::parallel_for(rows, grain_rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      core::cast_run(f, output, out, x + r * cols, sp, true, cols, r * cols, inv.data());
  });
  return c;
}
}  // namespace

Cast2D cast_2d(const float* x, int64_t rows, int64_t cols, DType fp8, ScaleAxis axis, bool pow2, CastOutput output,
               std::vector<float>* column_amax) {
  LOWBIT_ASSERT(axis != ScaleAxis::Tile);
  Cast2D c = cast_2d_impl(x, rows, cols, fp8, axis, pow2, output, column_amax);
  core::flag_bf16_subnormal(c);
  return c;
}

Cast2D cast_blocked_2d(const float* x, int64_t rows, int64_t cols, DType fp8, ScaleAxis axis, int64_t block, bool pow2,
                       CastOutput output) {
  float8_spec(fp8, "float8 blockwise cast");
  LOWBIT_ASSERT(output != CastOutput::Bf16Dequantized || pow2);
  const core::Format& f = float8_format(fp8);
  return core::cast_blocked_2d(
      x, rows, cols, f, axis, block, [&f, pow2](float amax) { return core::te_amax_to_scale(amax, f, pow2); }, output);
}

}  // namespace detail

using detail::Cast2D;
using detail::ScaleAxis;

Float8Tensor to_float8_dynamic(const Tensor& x_in, DType fp8, ScalingGranularity granularity, int64_t axiswise_dim,
                               bool pow2) {
  const char* op = "to_float8_dynamic";
  LOWBIT_CHECK(x_in.defined() && (x_in.dtype() == kFloat32 || x_in.dtype() == kBFloat16),
               "{}: input must be float32 or bfloat16, got {}", op,
               x_in.defined() ? dtype_name(x_in.dtype()) : "undefined");
  detail::float8_spec(fp8, op);
  const Tensor x = x_in.dtype() == kFloat32 ? x_in : x_in.to(kFloat32);
  const Shape& shape = x.shape();
  Float8Tensor t;
  t.orig_dtype = x_in.dtype();
  if (granularity == ScalingGranularity::Tensorwise || x.dim() == 0) {
    const int64_t n = x.numel();
    Cast2D c = detail::cast_2d(x.data_ptr<float>(), 1, n, fp8, ScaleAxis::Tensor, pow2);
    t.data = c.values.reshape(shape);
    t.scale = c.scale.reshape({});
  } else {
    const int64_t d = axiswise_dim < 0 ? axiswise_dim + x.dim() : axiswise_dim;
    LOWBIT_CHECK(d >= 0 && d < x.dim(), "{}: axiswise_dim {} is out of range for an input of shape {}", op,
                 axiswise_dim, shape_str(shape));
    int64_t outer = 1, inner = 1;
    for (int64_t i = 0; i < d; ++i) outer *= shape[i];
    for (int64_t i = d + 1; i < x.dim(); ++i) inner *= shape[i];
    const int64_t a = shape[d];
    Shape sshape = shape;
    sshape[d] = 1;
    t.axiswise_dim = d;
    if (inner == 1) {  // the reduced dim is the last: one scale per row
      Cast2D c = detail::cast_2d(x.data_ptr<float>(), outer, a, fp8, ScaleAxis::Row, pow2);
      t.data = c.values.reshape(shape);
      t.scale = c.scale.reshape(sshape);
    } else if (outer == 1) {  // per column
      Cast2D c = detail::cast_2d(x.data_ptr<float>(), a, inner, fp8, ScaleAxis::Col, pow2);
      t.data = c.values.reshape(shape);
      t.scale = c.scale.reshape(sshape);
    } else {  // per column of each (a x inner) slab
      t.data = empty(shape, fp8);
      t.scale = empty(sshape, kFloat32);
      for (int64_t o = 0; o < outer; ++o) {
        Cast2D c = detail::cast_2d(x.data_ptr<float>() + o * a * inner, a, inner, fp8, ScaleAxis::Col, pow2);
        std::memcpy(static_cast<uint8_t*>(t.data.raw_data()) + o * a * inner, c.values.raw_data(),
                    static_cast<size_t>(a * inner));
        std::memcpy(t.scale.data_ptr<float>() + o * inner, c.scale.raw_data(), static_cast<size_t>(inner) * 4);
      }
    }
  }
  return t;
}

Float8Tensor to_float8_blockwise(const Tensor& x_in, DType fp8, int64_t block_rows, int64_t block_cols, bool pow2) {
  const char* op = "to_float8_blockwise";
  LOWBIT_CHECK(x_in.defined() && (x_in.dtype() == kFloat32 || x_in.dtype() == kBFloat16) && x_in.dim() >= 1,
               "{}: input must be a float32 or bfloat16 tensor of at least 1 dim, got {}", op,
               x_in.defined() ? lowbit::detail::desc(x_in) : "undefined");
  LOWBIT_CHECK((block_rows == 1 && block_cols >= 1) || (block_rows >= 1 && block_rows == block_cols),
               "{}: blocks must be 1 x B runs or B x B tiles, got {} x {}", op, block_rows, block_cols);
  detail::float8_spec(fp8, op);
  const Tensor x = x_in.dtype() == kFloat32 ? x_in : x_in.to(kFloat32);
  const int64_t cols = x.size(-1), rows = cols == 0 ? 0 : x.numel() / cols;
  Cast2D c = detail::cast_blocked_2d(x.data_ptr<float>(), rows, cols, fp8,
                                     block_rows == 1 ? ScaleAxis::Row : ScaleAxis::Tile, block_cols, pow2);
  Float8Tensor t;
  t.orig_dtype = x_in.dtype();
  t.data = c.values.reshape(x_in.shape());
  t.scale = c.scale;
  t.block_rows = block_rows;
  t.block_cols = block_cols;
  return t;
}

Float8Tensor to_float8_with_scale(const Tensor& x_in, const Tensor& scale, DType fp8) {
  const char* op = "to_float8_with_scale";
  LOWBIT_CHECK(x_in.defined() && (x_in.dtype() == kFloat32 || x_in.dtype() == kBFloat16),
               "{}: input must be float32 or bfloat16, got {}", op,
               x_in.defined() ? dtype_name(x_in.dtype()) : "undefined");
  LOWBIT_CHECK(scale.defined() && scale.dtype() == kFloat32, "{}: scale must be float32, got {}", op,
               scale.defined() ? dtype_name(scale.dtype()) : "undefined");
  const MinifloatSpec& spec = detail::float8_spec(fp8, op);
  NoGradGuard ng;
  const Tensor scaled = mul(x_in.to(kFloat32), scale);  // broadcasting checked by mul
  LOWBIT_CHECK(scaled.shape() == x_in.shape(), "{}: scale {} does not broadcast to the input {}", op,
               shape_str(scale.shape()), shape_str(x_in.shape()));
  Float8Tensor t;
  t.orig_dtype = x_in.dtype();
  t.scale = scale;
  t.data = empty(x_in.shape(), fp8);
  minifloat_encode_n(spec, scaled.data_ptr<float>(), static_cast<uint8_t*>(t.data.raw_data()), scaled.numel(), true);
  if (scale.dim() > 0 && scale.numel() > 1)
    for (int64_t d = 0; d < scale.dim(); ++d)
      if (scale.size(d) == 1 && x_in.size(d) != 1) t.axiswise_dim = d;
  return t;
}

Tensor Float8Tensor::dequantize() const {
  NoGradGuard ng;
  if (block_cols > 0) {  // blockwise: the codes as a rows x cols matrix, one scale per block
    const int64_t cols = data.size(-1), rows = cols == 0 ? 0 : data.numel() / cols;
    const Cast2D c{data.reshape({rows, cols}),          scale,      block_rows == 1 ? ScaleAxis::Row : ScaleAxis::Tile,
                   detail::CastOutput::Codes,           block_cols, false,
                   &detail::float8_format(data.dtype())};
    return core::dequantize_f32(c).reshape(data.shape());
  }
  const bool tensorwise = scale.dim() == 0;
  // data.to(orig) is exact; the division runs in float32 and rounds to the result dtype
  const Tensor q = data.to(kFloat32);
  const Tensor out = div(q, scale);
  return tensorwise && orig_dtype == kBFloat16 ? out.to(kBFloat16) : out;
}

}  // namespace lowbit::float8
