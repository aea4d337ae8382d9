// Reductions (sum/mean/amax/amin/var/max/argmax) and softmax/log_softmax.
// A reduction over one dim sees the tensor as (outer, R, inner). Full sums split R into fixed
// 4096-element blocks summed in float and combined in double, so the result is the same bits
// for any thread count.
#include <cmath>
#include <limits>

#include <Eigen/Core>

#include "internal.h"

namespace lowbit {

namespace {
using detail::parallel_for;
constexpr int64_t kBlock = 4096;

struct Geometry {
  int64_t outer = 1, size = 1, inner = 1;
};
Geometry geometry(const Shape& s, int64_t d) {
  Geometry g;
  for (int64_t i = 0; i < d; ++i) g.outer *= s[i];
  g.size = s.empty() ? 1 : s[d];
  for (size_t i = d + 1; i < s.size(); ++i) g.inner *= s[i];
  return g;
}

// Sum of n contiguous floats: 16 lanes per block, blocks combined in double.
double block_sum(const float* x, int64_t n) {
  float lanes[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
#pragma omp simd
    for (int k = 0; k < 16; ++k) lanes[k] += x[i + k];
  double s = 0;
  for (int k = 0; k < 16; ++k) s += lanes[k];
  for (; i < n; ++i) s += x[i];
  return s;
}

template <typename T>
void sum_dim_kernel(const T* x, T* y, const Geometry& g) {
  if (g.inner == 1) {
    const bool big_rows = g.size >= 2 * kBlock && g.outer < get_num_threads() * 2;
    if constexpr (std::is_same_v<T, float>) {
      if (!reference_kernels() && big_rows) {
        for (int64_t o = 0; o < g.outer; ++o) {
          const float* row = x + o * g.size;
          const int64_t nb = (g.size + kBlock - 1) / kBlock;
          std::vector<double> partial(nb);
          parallel_for(nb, 1, [&](int64_t b, int64_t e) {
            for (int64_t k = b; k < e; ++k)
              partial[k] = block_sum(row + k * kBlock, std::min(kBlock, g.size - k * kBlock));
          });
          double s = 0;
          for (double p : partial) s += p;
          y[o] = static_cast<float>(s);
        }
        return;
      }
    }
    parallel_for(g.outer, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.size, 1)),
                 [&](int64_t b, int64_t e) {
                   for (int64_t o = b; o < e; ++o) {
                     const T* row = x + o * g.size;
                     if constexpr (std::is_same_v<T, float>) {
                       if (!reference_kernels()) {
                         double s = 0;
                         for (int64_t k = 0; k < g.size; k += kBlock)
                           s += block_sum(row + k, std::min(kBlock, g.size - k));
                         y[o] = static_cast<float>(s);
                         continue;
                       }
                     }
                     double s = 0;
                     for (int64_t r = 0; r < g.size; ++r) s += static_cast<double>(row[r]);
                     y[o] = static_cast<T>(s);
                   }
                 });
    return;
  }
  // inner > 1: accumulate rows (vectorized over inner)
  parallel_for(g.outer * g.inner, kParallelGrain / 8, [&](int64_t b, int64_t e) {
    for (int64_t idx = b; idx < e;) {
      const int64_t o = idx / g.inner, i0 = idx % g.inner;
      const int64_t i1 = std::min(g.inner, i0 + (e - idx));
      T* out = y + o * g.inner;
      for (int64_t i = i0; i < i1; ++i) out[i] = T(0);
      for (int64_t r = 0; r < g.size; ++r) {
        const T* row = x + (o * g.size + r) * g.inner;
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) out[i] += row[i];
      }
      idx += i1 - i0;
    }
  });
}

template <typename T, bool IsMax>
void extreme_dim_kernel(const T* x, T* y, int64_t* arg, const Geometry& g) {
  parallel_for(g.outer * g.inner, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.size, 1)),
               [&](int64_t b, int64_t e) {
                 for (int64_t idx = b; idx < e; ++idx) {
                   const int64_t o = idx / g.inner, i = idx % g.inner;
                   const T* p = x + o * g.size * g.inner + i;
                   T best = p[0];
                   int64_t bi = 0;
                   for (int64_t r = 1; r < g.size && best == best; ++r) {
                     const T v = p[r * g.inner];
                     if (v != v || (IsMax ? v > best : v < best)) {
                       best = v;
                       bi = r;
                     }
                   }
                   y[idx] = best;
                   if (arg) arg[idx] = bi;
                 }
               });
}

std::vector<int64_t> normalize_dims(const Tensor& a, const std::vector<int64_t>& dims, const char* op) {
  std::vector<int64_t> out;
  if (dims.empty()) {
    for (int64_t i = 0; i < a.dim(); ++i) out.push_back(i);
    return out;
  }
  std::vector<bool> seen(std::max<int64_t>(a.dim(), 1), false);
  for (int64_t d : dims) {
    const int64_t w = detail::wrap_dim(d, a.dim(), op);
    LOWBIT_CHECK(!seen[w], "{}: dim {} appears multiple times in the list of dims for input {}", op, w,
                 shape_str(a.shape()));
    seen[w] = true;
    out.push_back(w);
  }
  std::sort(out.begin(), out.end());
  if (a.dim() == 0) out.clear();
  return out;
}

Shape reduced_shape(const Shape& s, const std::vector<int64_t>& dims, bool keepdim) {
  Shape out;
  for (int64_t i = 0; i < static_cast<int64_t>(s.size()); ++i) {
    const bool r = std::find(dims.begin(), dims.end(), i) != dims.end();
    if (!r)
      out.push_back(s[i]);
    else if (keepdim)
      out.push_back(1);
  }
  return out;
}

enum class RKind { Sum, Max, Min };

// Reduces `a` over sorted dims (no autograd); result has keepdim shape.
Tensor reduce_raw(const Tensor& a_in, const std::vector<int64_t>& dims, RKind kind) {
  Tensor cur = a_in.dtype() == kBFloat16 ? a_in.to(kFloat32) : a_in;
  // reduce each run of adjacent dims as one collapsed dim, last run first
  size_t k = dims.size();
  while (k > 0) {
    size_t j = k - 1;
    while (j > 0 && dims[j - 1] == dims[j] - 1) --j;
    const int64_t lo = dims[j], end = dims[k - 1];
    k = j;
    // collapse [lo, end] into one dim
    Shape s = cur.shape();
    Geometry g;
    for (int64_t i = 0; i < lo; ++i) g.outer *= s[i];
    g.size = 1;
    for (int64_t i = lo; i <= end; ++i) g.size *= s[i];
    for (size_t i = end + 1; i < s.size(); ++i) g.inner *= s[i];
    Shape out_shape = s;
    for (int64_t i = lo; i <= end; ++i) out_shape[i] = 1;
    LOWBIT_CHECK(g.size > 0 || kind == RKind::Sum, "{}: expected reduction dim to have non-zero size (input {})",
                 kind == RKind::Max ? "amax" : "amin", shape_str(a_in.shape()));
    Tensor out = empty(out_shape, cur.dtype());
    LOWBIT_DISPATCH_FLOAT(cur.dtype(), T, {
      const T* x = cur.data_ptr<T>();
      T* y = out.data_ptr<T>();
      if (kind == RKind::Sum)
        sum_dim_kernel<T>(x, y, g);
      else if (kind == RKind::Max)
        extreme_dim_kernel<T, true>(x, y, nullptr, g);
      else
        extreme_dim_kernel<T, false>(x, y, nullptr, g);
    });
    cur = out;
  }
  return cur;
}

Tensor finish(Tensor r, const Tensor& a, const Shape& keep_shape, const Shape& out_shape) {
  if (r.shape() != keep_shape) r = r.reshape(keep_shape);
  r = r.reshape(out_shape);
  return a.dtype() == kBFloat16 ? r.to(kBFloat16) : r;
}
}  // namespace

Tensor sum(const Tensor& a, const std::vector<int64_t>& dims_in, bool keepdim) {
  detail::check_floating(a, "sum");
  const auto dims = normalize_dims(a, dims_in, "sum");
  const Shape keep = reduced_shape(a.shape(), dims, true), out_shape = reduced_shape(a.shape(), dims, keepdim);
  Tensor out = finish(dims.empty() ? a.detach().clone() : reduce_raw(a, dims, RKind::Sum), a, keep, out_shape);
  if (detail::any_requires_grad({&a})) {
    const Shape in_shape = a.shape();
    detail::record(out, "SumBackward1", {a}, [in_shape, keep](const Tensor& g) {
      return std::vector<Tensor>{detail::expand_copy(g.reshape(keep), in_shape)};
    });
  }
  return out;
}
Tensor sum(const Tensor& a) { return sum(a, {}, false); }
Tensor mean(const Tensor& a, const std::vector<int64_t>& dims_in, bool keepdim) {
  detail::check_floating(a, "mean");
  const auto dims = normalize_dims(a, dims_in, "mean");
  int64_t count = 1;
  for (int64_t d : dims) count *= a.shape()[d];
  return mul(sum(a, dims_in, keepdim),
             count == 0 ? std::numeric_limits<double>::quiet_NaN() : 1.0 / static_cast<double>(count));
}
Tensor mean(const Tensor& a) { return mean(a, {}, false); }

namespace {
Tensor extreme(const Tensor& a, const std::vector<int64_t>& dims_in, bool keepdim, bool is_max) {
  const char* op = is_max ? "amax" : "amin";
  detail::check_floating(a, op);
  const auto dims = normalize_dims(a, dims_in, op);
  LOWBIT_CHECK(a.numel() > 0 || !dims.empty(), "{}: expected a non-empty input, got {}", op, shape_str(a.shape()));
  const Shape keep = reduced_shape(a.shape(), dims, true), out_shape = reduced_shape(a.shape(), dims, keepdim);
  Tensor out = finish(dims.empty() ? a.detach().clone() : reduce_raw(a, dims, is_max ? RKind::Max : RKind::Min), a,
                      keep, out_shape);
  if (detail::any_requires_grad({&a})) {
    const Tensor x = a.detach(), y = out.detach().reshape(keep);
    const std::vector<int64_t> d = dims;
    detail::record(out, is_max ? "AmaxBackward0" : "AminBackward0", {a}, [x, y, keep, d](const Tensor& g) {
      NoGradGuard ng;
      const Tensor mask = eq(x, y).to(g.dtype());
      const Tensor count = d.empty() ? ones(keep, g.dtype()) : sum(mask, d, true);
      return std::vector<Tensor>{mul(mask, div(g.reshape(keep), count))};
    });
  }
  return out;
}
}  // namespace
Tensor amax(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) { return extreme(a, dims, keepdim, true); }
Tensor amin(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  return extreme(a, dims, keepdim, false);
}

Tensor var(const Tensor& a, const std::vector<int64_t>& dims_in, double correction, bool keepdim) {
  detail::check_floating(a, "var");
  const auto dims = normalize_dims(a, dims_in, "var");
  int64_t count = 1;
  for (int64_t d : dims) count *= a.shape()[d];
  const Tensor mu = mean(a, dims_in, true);
  const Tensor d = sub(a, mu);
  const double denom = std::max(0.0, static_cast<double>(count) - correction);
  return div(sum(mul(d, d), dims_in, keepdim), full({}, denom, a.dtype()));
}

std::pair<Tensor, Tensor> max(const Tensor& a_in, int64_t dim, bool keepdim) {
  detail::check_floating(a_in, "max");
  LOWBIT_CHECK(a_in.dim() > 0, "max: dim given for a 0-dim tensor");
  const int64_t d = detail::wrap_dim(dim, a_in.dim(), "max");
  LOWBIT_CHECK(a_in.shape()[d] > 0, "max: cannot compute the max over an empty dimension {} of input {}", d,
               shape_str(a_in.shape()));
  const Tensor a = a_in.dtype() == kBFloat16 ? a_in.to(kFloat32) : a_in;
  const Geometry g = geometry(a.shape(), d);
  const Shape keep = reduced_shape(a.shape(), {d}, true), out_shape = reduced_shape(a.shape(), {d}, keepdim);
  Tensor values = empty(keep, a.dtype()), indices = empty(keep, kInt64);
  LOWBIT_DISPATCH_FLOAT(
      a.dtype(), T, extreme_dim_kernel<T, true>(a.data_ptr<T>(), values.data_ptr<T>(), indices.data_ptr<int64_t>(), g));
  values = values.reshape(out_shape);
  indices = indices.reshape(out_shape);
  if (a_in.dtype() == kBFloat16) values = values.to(kBFloat16);
  if (detail::any_requires_grad({&a_in})) {
    const Tensor idx = indices.reshape(keep);
    const Shape in_shape = a_in.shape();
    detail::record(values, "MaxBackward0", {a_in}, [idx, in_shape, keep, g](const Tensor& gr) {
      Tensor full = zeros(in_shape, gr.dtype());
      Tensor gk = gr.reshape(keep);
      LOWBIT_DISPATCH_FLOAT(gr.dtype(), T, {
        const int64_t* ip = idx.data_ptr<int64_t>();
        const T* gp = gk.data_ptr<T>();
        T* fp = full.data_ptr<T>();
        for (int64_t k = 0; k < g.outer * g.inner; ++k) {
          const int64_t o = k / g.inner, i = k % g.inner;
          fp[(o * g.size + ip[k]) * g.inner + i] = gp[k];
        }
      });
      return std::vector<Tensor>{full};
    });
  }
  return {values, indices};
}
Tensor max(const Tensor& a) { return amax(a); }
Tensor argmax(const Tensor& a, int64_t dim, bool keepdim) {
  NoGradGuard ng;
  return max(a, dim, keepdim).second;
}

// ---------------- softmax / log_softmax ----------------
namespace detail {
// one float32 row: max, exp (Eigen), float sum, then scale by 1/sum (or the log form); y may be
// x for the softmax (not for the log form, which reads x again)
void softmax_row_f32(const float* x, float* y, int64_t n, bool log) {
  // the max in a register (a vector reduction); a NaN anywhere in the row makes the whole row NaN
  // whichever element the max picks
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < n; ++j) mx = x[j] > mx ? x[j] : mx;
  const float m = std::isfinite(mx) ? mx : (mx == mx ? 0.0f : mx);
  Eigen::Map<Eigen::ArrayXf> ya(y, n);
  ya = (Eigen::Map<const Eigen::ArrayXf>(x, n) - m).exp();
  const double s = static_cast<double>(ya.sum());
  if (log)
    ya = Eigen::Map<const Eigen::ArrayXf>(x, n) - (m + static_cast<float>(std::log(s)));
  else
    ya *= static_cast<float>(1.0 / s);
}
// gx = y * (g - sum(g * y)) over one float32 row; gx may be g
void softmax_backward_row_f32(const float* y, const float* g, float* gx, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += g[j] * y[j];
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) gx[j] = y[j] * (g[j] - s);
}
}  // namespace detail

namespace {
// rows of length n (the softmax dim is last and contiguous)
template <typename T>
void softmax_rows(const T* x, T* y, int64_t rows, int64_t n, bool log) {
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(n, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* xr = x + r * n;
      T* yr = y + r * n;
      if constexpr (std::is_same_v<T, float>) {
        if (!reference_kernels()) {
          detail::softmax_row_f32(xr, yr, n, log);
          continue;
        }
      }
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < n; ++j) m = xr[j] > m ? xr[j] : m;
      if (!std::isfinite(static_cast<double>(m))) m = (m == m) ? T(0) : m;
      double s = 0;
      for (int64_t j = 0; j < n; ++j) {
        yr[j] = std::exp(xr[j] - m);
        s += yr[j];
      }
      if (log) {
        const T ls = static_cast<T>(std::log(s));
        for (int64_t j = 0; j < n; ++j) yr[j] = xr[j] - m - ls;
      } else {
        const T inv = static_cast<T>(1.0 / s);
        for (int64_t j = 0; j < n; ++j) yr[j] *= inv;
      }
    }
  });
}

template <typename T>
void softmax_backward_rows(const T* y, const T* g, T* gx, int64_t rows, int64_t n, bool log) {
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(n, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* yr = y + r * n;
      const T* gr = g + r * n;
      T* o = gx + r * n;
      T s = 0;
      if (log) {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < n; ++j) s += gr[j];
        for (int64_t j = 0; j < n; ++j) o[j] = gr[j] - std::exp(yr[j]) * s;
      } else if constexpr (std::is_same_v<T, float>) {
        detail::softmax_backward_row_f32(yr, gr, o, n);
      } else {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < n; ++j) s += gr[j] * yr[j];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) o[j] = yr[j] * (gr[j] - s);
      }
    }
  });
}

Tensor softmax_impl(const Tensor& a_in, int64_t dim, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  detail::check_floating(a_in, op);
  if (a_in.dim() == 0) return softmax_impl(a_in.reshape({1}), 0, log).reshape({});
  const int64_t d = detail::wrap_dim(dim, a_in.dim(), op);
  const int64_t last = a_in.dim() - 1;
  Tensor a;
  {
    NoGradGuard ng;
    a = a_in.dtype() == kBFloat16 ? a_in.to(kFloat32) : a_in;
    if (d != last) a = transpose(a, d, last);
  }
  Tensor y = empty(a.shape(), a.dtype());
  const int64_t n = a.shape()[last];
  const int64_t rows = n ? a.numel() / n : 0;
  LOWBIT_DISPATCH_FLOAT(a.dtype(), T, softmax_rows<T>(a.data_ptr<T>(), y.data_ptr<T>(), rows, n, log));
  {
    NoGradGuard ng;
    if (d != last) y = transpose(y, d, last);
    if (a_in.dtype() == kBFloat16) y = y.to(kBFloat16);
  }
  if (detail::any_requires_grad({&a_in})) {
    const Tensor ys = y.detach();
    const bool rows_last = d == last && detail::is_compute(ys.dtype());
    detail::record(y, log ? "LogSoftmaxBackward0" : "SoftmaxBackward0", {a_in},
                   [ys, d, log, rows_last](const Tensor& g) {
                     if (rows_last && g.dtype() == ys.dtype() && g.shape() == ys.shape()) {
                       const int64_t n = ys.size(-1), rows = n ? ys.numel() / n : 0;
                       Tensor gx = empty(ys.shape(), ys.dtype());
                       LOWBIT_DISPATCH_FLOAT(
                           ys.dtype(), T,
                           softmax_backward_rows<T>(ys.data_ptr<T>(), g.data_ptr<T>(), gx.data_ptr<T>(), rows, n, log));
                       return std::vector<Tensor>{gx};
                     }
                     if (log) return std::vector<Tensor>{sub(g, mul(exp(ys), sum(g, {d}, true)))};
                     const Tensor gy = mul(g, ys);
                     return std::vector<Tensor>{sub(gy, mul(ys, sum(gy, {d}, true)))};
                   });
  }
  return y;
}
}  // namespace
Tensor softmax(const Tensor& a, int64_t dim) { return softmax_impl(a, dim, false); }
Tensor log_softmax(const Tensor& a, int64_t dim) { return softmax_impl(a, dim, true); }

namespace detail {
Tensor expand_copy(const Tensor& t, const Shape& shape) {
  if (t.shape() == shape) return t.clone();
  Tensor zero = zeros(shape, t.dtype());
  NoGradGuard ng;
  return add(zero, t);
}
}  // namespace detail

}  // namespace lowbit
