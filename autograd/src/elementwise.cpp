// Elementwise ops: broadcasting binary arithmetic, comparisons, where/masked_fill, unary math
// and activations with their backward kernels.
//
// Each op is a small functor with a scalar `ref` (the reference, used for float64 and when
// reference kernels are forced) and, where worth it, a vectorized float32 `fast` over a
// contiguous chunk (Eigen packet math for exp/log/tanh/erf). bfloat16 inputs are computed in
// float32 and rounded back to nearest even.
#include <cmath>
#include <limits>

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include "internal.h"

namespace lowbit {

namespace {
bool g_reference = false;
using ArrF = Eigen::Map<Eigen::ArrayXf>;
using CArrF = Eigen::Map<const Eigen::ArrayXf>;
constexpr int64_t kChunk = 4096;
}  // namespace

void set_reference_kernels(bool on) { g_reference = on; }
bool reference_kernels() { return g_reference; }

namespace detail {
void check_floating(const Tensor& t, const char* op, const char* what) {
  LOWBIT_CHECK(t.defined(), "{}: {} is undefined", op, what);
  LOWBIT_CHECK(is_floating(t.dtype()), "{}: {} must be a floating tensor (float32, bfloat16 or float64), got {} {}", op,
               what, shape_str(t.shape()), dtype_name(t.dtype()));
}
void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  LOWBIT_CHECK(a.dtype() == b.dtype(), "{}: expected both operands to have the same dtype, got {} {} and {} {}", op,
               shape_str(a.shape()), dtype_name(a.dtype()), shape_str(b.shape()), dtype_name(b.dtype()));
}
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    LOWBIT_CHECK(da == db || da == 1 || db == 1,
                 "{}: shapes {} and {} are not broadcastable: the size of tensor a ({}) must match the size of tensor "
                 "b ({}) at non-singleton dimension {}",
                 op, shape_str(a), shape_str(b), da, db, i);
    out[i] = da == 1 ? db : da;
  }
  return out;
}
std::vector<int64_t> broadcast_strides(const Shape& in, const Shape& out) {
  std::vector<int64_t> st(out.size(), 0);
  const auto cs = contiguous_strides(in);
  const size_t lead = out.size() - in.size();
  for (size_t i = 0; i < in.size(); ++i) st[lead + i] = in[i] == 1 ? 0 : cs[i];
  return st;
}
}  // namespace detail

namespace {
using detail::parallel_for;

using detail::upcast;

// ---------- broadcasting N-ary loop ----------
// Visits every output element with the element offsets of each operand (row-wise: the last
// dim is walked with per-operand inner strides, the outer dims by a multi-index).
template <size_t N, typename F>
void broadcast_loop(const Shape& out_shape, const std::array<std::vector<int64_t>, N>& strides, F&& row_fn) {
  const int64_t nd = static_cast<int64_t>(out_shape.size());
  const int64_t n = detail::numel_of(out_shape);
  if (n == 0) return;
  const int64_t inner = nd ? out_shape[nd - 1] : 1;
  const int64_t rows = n / inner;
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / inner), [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      std::array<int64_t, N> off{};
      int64_t rem = r;
      for (int64_t d = nd - 2; d >= 0; --d) {
        const int64_t idx = rem % out_shape[d];
        rem /= out_shape[d];
        for (size_t k = 0; k < N; ++k) off[k] += idx * strides[k][d];
      }
      std::array<int64_t, N> inner_stride{};
      for (size_t k = 0; k < N; ++k) inner_stride[k] = nd ? strides[k][nd - 1] : 0;
      row_fn(r * inner, off, inner_stride, inner);
    }
  });
}

// ---------- binary arithmetic ----------
struct AddOp {
  double alpha;
  template <class T>
  T operator()(T a, T b) const {
    return a + static_cast<T>(alpha) * b;
  }
};
struct SubOp {
  double alpha;
  template <class T>
  T operator()(T a, T b) const {
    return a - static_cast<T>(alpha) * b;
  }
};
struct MulOp {
  template <class T>
  T operator()(T a, T b) const {
    return a * b;
  }
};
struct DivOp {
  template <class T>
  T operator()(T a, T b) const {
    return a / b;
  }
};
struct MaxOp {
  template <class T>
  T operator()(T a, T b) const {
    return (a != a || b != b) ? std::numeric_limits<T>::quiet_NaN() : (a > b ? a : b);
  }
};
struct MinOp {
  template <class T>
  T operator()(T a, T b) const {
    return (a != a || b != b) ? std::numeric_limits<T>::quiet_NaN() : (a < b ? a : b);
  }
};
struct EqOp {
  template <class T>
  bool operator()(T a, T b) const {
    return a == b;
  }
};
struct NeOp {
  template <class T>
  bool operator()(T a, T b) const {
    return a != b;
  }
};
struct LtOp {
  template <class T>
  bool operator()(T a, T b) const {
    return a < b;
  }
};
struct LeOp {
  template <class T>
  bool operator()(T a, T b) const {
    return a <= b;
  }
};
struct GtOp {
  template <class T>
  bool operator()(T a, T b) const {
    return a > b;
  }
};
struct GeOp {
  template <class T>
  bool operator()(T a, T b) const {
    return a >= b;
  }
};

template <typename T, typename R, typename F>
void binary_kernel(const Tensor& a, const Tensor& b, Tensor& out, F f) {
  const T* x = reinterpret_cast<const T*>(a.raw_data());
  const T* y = reinterpret_cast<const T*>(b.raw_data());
  R* o = reinterpret_cast<R*>(out.raw_data());
  const int64_t n = out.numel();
  if (!g_reference) {
    if (a.shape() == b.shape()) {
      parallel_for(n, kParallelGrain, [&](int64_t s, int64_t e) {
#pragma omp simd
        for (int64_t i = s; i < e; ++i) o[i] = f(x[i], y[i]);
      });
      return;
    }
    if (b.numel() == 1 && a.numel() == n) {
      const T yv = y[0];
      parallel_for(n, kParallelGrain, [&](int64_t s, int64_t e) {
#pragma omp simd
        for (int64_t i = s; i < e; ++i) o[i] = f(x[i], yv);
      });
      return;
    }
    if (a.numel() == 1 && b.numel() == n) {
      const T xv = x[0];
      parallel_for(n, kParallelGrain, [&](int64_t s, int64_t e) {
#pragma omp simd
        for (int64_t i = s; i < e; ++i) o[i] = f(xv, y[i]);
      });
      return;
    }
    std::array<std::vector<int64_t>, 2> st{detail::broadcast_strides(a.shape(), out.shape()),
                                           detail::broadcast_strides(b.shape(), out.shape())};
    broadcast_loop<2>(
        out.shape(), st,
        [&](int64_t base, const std::array<int64_t, 2>& off, const std::array<int64_t, 2>& is, int64_t m) {
          const T* xp = x + off[0];
          const T* yp = y + off[1];
          R* op = o + base;
          if (is[0] == 1 && is[1] == 1) {
#pragma omp simd
            for (int64_t j = 0; j < m; ++j) op[j] = f(xp[j], yp[j]);
          } else if (is[0] == 1 && is[1] == 0) {
            const T yv = yp[0];
#pragma omp simd
            for (int64_t j = 0; j < m; ++j) op[j] = f(xp[j], yv);
          } else if (is[0] == 0 && is[1] == 1) {
            const T xv = xp[0];
#pragma omp simd
            for (int64_t j = 0; j < m; ++j) op[j] = f(xv, yp[j]);
          } else {
            for (int64_t j = 0; j < m; ++j) op[j] = f(xp[j * is[0]], yp[j * is[1]]);
          }
        });
    return;
  }
  // reference: per-element multi-index, serial
  const auto sa = detail::broadcast_strides(a.shape(), out.shape());
  const auto sb = detail::broadcast_strides(b.shape(), out.shape());
  const Shape& os = out.shape();
  for (int64_t i = 0; i < n; ++i) {
    int64_t rem = i, oa = 0, ob = 0;
    for (int64_t d = static_cast<int64_t>(os.size()) - 1; d >= 0; --d) {
      const int64_t idx = rem % os[d];
      rem /= os[d];
      oa += idx * sa[d];
      ob += idx * sb[d];
    }
    o[i] = f(x[oa], y[ob]);
  }
}

// Arithmetic forward on floating tensors (bf16 via f32) returning the broadcast result.
template <typename F>
Tensor arith(const Tensor& a_in, const Tensor& b_in, F f, const char* op) {
  detail::check_floating(a_in, op, "a");
  detail::check_floating(b_in, op, "b");
  detail::check_same_dtype(a_in, b_in, op);
  const Shape out_shape = detail::broadcast_shapes(a_in.shape(), b_in.shape(), op);
  const Tensor a = upcast(a_in), b = upcast(b_in);
  Tensor out = empty(out_shape, a.dtype());
  LOWBIT_DISPATCH_FLOAT(a.dtype(), T, binary_kernel<T, T>(a, b, out, f));
  return a_in.dtype() == kBFloat16 ? out.to(kBFloat16) : out;
}

template <typename F>
Tensor compare(const Tensor& a_in, const Tensor& b_in, F f, const char* op) {
  LOWBIT_CHECK(a_in.defined() && b_in.defined(), "{}: operand is undefined", op);
  detail::check_same_dtype(a_in, b_in, op);
  const Shape out_shape = detail::broadcast_shapes(a_in.shape(), b_in.shape(), op);
  const Tensor a = upcast(a_in), b = upcast(b_in);
  Tensor out = empty(out_shape, kBool);
  LOWBIT_DISPATCH_ALL(a.dtype(), T, {
    if constexpr (!std::is_same_v<T, BFloat16>) binary_kernel<T, bool>(a, b, out, f);
  });
  return out;
}

Tensor scalar_like(const Tensor& a, double v) { return full({}, v, a.dtype()); }

// ---------- unary ----------
// Op: ref(T) scalar; optional fast(const float*, float*, n) for float32 chunks.
template <typename Op>
Tensor unary(const Tensor& a_in, const Op& op, const char* name) {
  detail::check_floating(a_in, name);
  const Tensor a = upcast(a_in);
  Tensor out = empty(a.shape(), a.dtype());
  const int64_t n = a.numel();
  LOWBIT_DISPATCH_FLOAT(a.dtype(), T, {
    const T* x = a.data_ptr<T>();
    T* y = out.data_ptr<T>();
    if constexpr (std::is_same_v<T, float>) {
      if (!g_reference) {
        parallel_for(n, kParallelGrain, [&](int64_t s, int64_t e) {
          for (int64_t c = s; c < e; c += kChunk) op.fast(x + c, y + c, std::min(kChunk, e - c));
        });
        break;
      }
    }
    for (int64_t i = 0; i < n; ++i) y[i] = op.ref(x[i]);
  });
  return a_in.dtype() == kBFloat16 ? out.to(kBFloat16) : out;
}

// Same-shape binary (gradient kernels): out = op(g, x).
template <typename Op>
Tensor grad_kernel(const Tensor& g_in, const Tensor& x_in, const Op& op) {
  const Tensor g = upcast(g_in), x = upcast(x_in);
  LOWBIT_ASSERT(g.shape() == x.shape() && g.dtype() == x.dtype());
  Tensor out = empty(x.shape(), x.dtype());
  const int64_t n = x.numel();
  LOWBIT_DISPATCH_FLOAT(x.dtype(), T, {
    const T* gp = g.data_ptr<T>();
    const T* xp = x.data_ptr<T>();
    T* o = out.data_ptr<T>();
    if constexpr (std::is_same_v<T, float>) {
      if (!g_reference) {
        parallel_for(n, kParallelGrain, [&](int64_t s, int64_t e) {
          for (int64_t c = s; c < e; c += kChunk) op.fast(gp + c, xp + c, o + c, std::min(kChunk, e - c));
        });
        break;
      }
    }
    for (int64_t i = 0; i < n; ++i) o[i] = op.ref(gp[i], xp[i]);
  });
  return out;
}

// Simple ops vectorize from the scalar form.
#define LOWBIT_SIMPLE_FAST                                                \
  void fast(const float* x, float* y, int64_t n) const {                  \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) y[i] = ref(x[i]); \
  }
#define LOWBIT_SIMPLE_FAST2                                                     \
  void fast(const float* g, const float* x, float* o, int64_t n) const {        \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) o[i] = ref(g[i], x[i]); \
  }

// Unary ops whose float32 kernel is the scalar formula vectorized: Name, ref(x).
#define LOWBIT_SIMPLE_UNARY(Name, expr) \
  struct Name {                         \
    template <class T>                  \
    T ref(T x) const {                  \
      return expr;                      \
    }                                   \
    LOWBIT_SIMPLE_FAST                  \
  };
// clang-format off
LOWBIT_SIMPLE_UNARY(NegOp, -x)
LOWBIT_SIMPLE_UNARY(AbsOp, x < 0 ? -x : (x == 0 ? T(0) : x))
LOWBIT_SIMPLE_UNARY(SignOp, x > 0 ? T(1) : (x < 0 ? T(-1) : (x == x ? T(0) : x)))
LOWBIT_SIMPLE_UNARY(SquareOp, x * x)
LOWBIT_SIMPLE_UNARY(SqrtOp, std::sqrt(x))
LOWBIT_SIMPLE_UNARY(RsqrtOp, T(1) / std::sqrt(x))
LOWBIT_SIMPLE_UNARY(RoundOp, std::nearbyint(x))
LOWBIT_SIMPLE_UNARY(ReluOp, x > 0 ? x : (x == x ? T(0) : x))
// clang-format on
#undef LOWBIT_SIMPLE_UNARY
struct ExpOp {
  template <class T>
  T ref(T x) const {
    return std::exp(x);
  }
  void fast(const float* x, float* y, int64_t n) const { ArrF(y, n) = CArrF(x, n).exp(); }
};
struct LogOp {
  template <class T>
  T ref(T x) const {
    return std::log(x);
  }
  void fast(const float* x, float* y, int64_t n) const { ArrF(y, n) = CArrF(x, n).log(); }
};
struct TanhOp {
  template <class T>
  T ref(T x) const {
    return std::tanh(x);
  }
  void fast(const float* x, float* y, int64_t n) const { ArrF(y, n) = CArrF(x, n).tanh(); }
};
struct SigmoidOp {
  template <class T>
  T ref(T x) const {
    return T(1) / (T(1) + std::exp(-x));
  }
  void fast(const float* x, float* y, int64_t n) const { ArrF(y, n) = CArrF(x, n).logistic(); }
};
struct SiluOp {
  template <class T>
  T ref(T x) const {
    return x / (T(1) + std::exp(-x));
  }
  void fast(const float* x, float* y, int64_t n) const { ArrF(y, n) = CArrF(x, n) * CArrF(x, n).logistic(); }
};
struct PowOp {
  double p;
  template <class T>
  T ref(T x) const {
    return std::pow(x, static_cast<T>(p));
  }
  void fast(const float* x, float* y, int64_t n) const {
    if (p == 2.0) {
      ArrF(y, n) = CArrF(x, n).square();
      return;
    }
    if (p == 0.5) {
      ArrF(y, n) = CArrF(x, n).sqrt();
      return;
    }
    for (int64_t i = 0; i < n; ++i) y[i] = ref(x[i]);
  }
};
struct ClampOp {
  double lo, hi;  // +-inf when absent
  template <class T>
  T ref(T x) const {
    if (x != x) return x;
    const T l = static_cast<T>(lo), h = static_cast<T>(hi);
    return x < l ? l : (x > h ? h : x);
  }
  LOWBIT_SIMPLE_FAST
};
constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
struct GeluOp {
  template <class T>
  T ref(T x) const {
    return T(0.5) * x * (T(1) + std::erf(x * T(kSqrt1_2)));
  }
  void fast(const float* x, float* y, int64_t n) const {
    CArrF xa(x, n);
    ArrF(y, n) = 0.5f * xa * (1.0f + (xa * static_cast<float>(kSqrt1_2)).erf());
  }
};
struct GeluTanhOp {
  template <class T>
  T ref(T x) const {
    return T(0.5) * x * (T(1) + std::tanh(T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x)));
  }
  void fast(const float* x, float* y, int64_t n) const {
    CArrF xa(x, n);
    ArrF(y, n) = 0.5f * xa * (1.0f + (static_cast<float>(kSqrt2OverPi) * (xa + 0.044715f * xa.cube())).tanh());
  }
};

// ---- gradient kernels: o = dL/dx given g and the saved input or output ----
struct ReluBack {
  template <class T>
  T ref(T g, T x) const {
    return x > 0 ? g : T(0);
  }
  LOWBIT_SIMPLE_FAST2
};
struct TanhBack {
  template <class T>
  T ref(T g, T y) const {
    return g * (T(1) - y * y);
  }
  LOWBIT_SIMPLE_FAST2
};
struct SigmoidBack {
  template <class T>
  T ref(T g, T y) const {
    return g * y * (T(1) - y);
  }
  LOWBIT_SIMPLE_FAST2
};
struct ClampBack {
  double lo, hi;
  template <class T>
  T ref(T g, T x) const {
    return (x >= static_cast<T>(lo) && x <= static_cast<T>(hi)) ? g : T(0);
  }
  LOWBIT_SIMPLE_FAST2
};
struct SiluBack {
  template <class T>
  T ref(T g, T x) const {
    const T s = T(1) / (T(1) + std::exp(-x));
    return g * s * (T(1) + x * (T(1) - s));
  }
  void fast(const float* g, const float* x, float* o, int64_t n) const {
    CArrF xa(x, n);
    const Eigen::ArrayXf s = xa.logistic();
    ArrF(o, n) = CArrF(g, n) * s * (1.0f + xa * (1.0f - s));
  }
};
struct GeluBack {
  template <class T>
  T ref(T g, T x) const {
    const T cdf = T(0.5) * (T(1) + std::erf(x * T(kSqrt1_2)));
    const T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
    return g * (cdf + x * pdf);
  }
  void fast(const float* g, const float* x, float* o, int64_t n) const {
    CArrF xa(x, n);
    ArrF(o, n) = CArrF(g, n) * (0.5f * (1.0f + (xa * static_cast<float>(kSqrt1_2)).erf()) +
                                xa * static_cast<float>(kInvSqrt2Pi) * (-0.5f * xa.square()).exp());
  }
};
struct GeluTanhBack {
  template <class T>
  T ref(T g, T x) const {
    const T k = T(kSqrt2OverPi), c = T(0.044715);
    const T t = std::tanh(k * (x + c * x * x * x));
    return g * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * k * (T(1) + T(3) * c * x * x));
  }
  void fast(const float* g, const float* x, float* o, int64_t n) const {
    const float k = static_cast<float>(kSqrt2OverPi), c = 0.044715f;
    CArrF xa(x, n);
    const Eigen::ArrayXf t = (k * (xa + c * xa.cube())).tanh();
    ArrF(o, n) =
        CArrF(g, n) * (0.5f * (1.0f + t) + 0.5f * xa * (1.0f - t.square()) * k * (1.0f + 3.0f * c * xa.square()));
  }
};

// Records a unary op whose backward is grad_kernel(g, saved) with Back.
template <typename Back>
Tensor with_grad(Tensor out, const Tensor& a, const char* name, const Tensor& saved, Back back) {
  if (detail::any_requires_grad({&a})) {
    Tensor s = saved.detach();
    const DType dt = a.dtype();
    detail::record(out, name, {a}, [s, back, dt](const Tensor& g) {
      Tensor r = grad_kernel(g, s, back);
      return std::vector<Tensor>{dt == kBFloat16 ? r.to(kBFloat16) : r};
    });
  }
  return out;
}
}  // namespace

// ---------------- binary ops with autograd ----------------
Tensor add(const Tensor& a, const Tensor& b, double alpha) {
  Tensor out = arith(a, b, AddOp{alpha}, "add");
  if (detail::any_requires_grad({&a, &b})) {
    const Shape sa = a.shape(), sb = b.shape();
    detail::record(out, "AddBackward0", {a, b}, [sa, sb, alpha](const Tensor& g) {
      return std::vector<Tensor>{detail::sum_to(g, sa),
                                 alpha == 1.0 ? detail::sum_to(g, sb) : detail::sum_to(mul(g, alpha), sb)};
    });
  }
  return out;
}
Tensor sub(const Tensor& a, const Tensor& b, double alpha) {
  Tensor out = arith(a, b, SubOp{alpha}, "sub");
  if (detail::any_requires_grad({&a, &b})) {
    const Shape sa = a.shape(), sb = b.shape();
    detail::record(out, "SubBackward0", {a, b}, [sa, sb, alpha](const Tensor& g) {
      return std::vector<Tensor>{detail::sum_to(g, sa), detail::sum_to(mul(g, -alpha), sb)};
    });
  }
  return out;
}
Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = arith(a, b, MulOp{}, "mul");
  if (detail::any_requires_grad({&a, &b})) {
    const Tensor sa = a.detach(), sb = b.detach();
    const bool ga = a.requires_grad(), gb = b.requires_grad();
    detail::record(out, "MulBackward0", {a, b}, [sa, sb, ga, gb](const Tensor& g) {
      return std::vector<Tensor>{ga ? detail::sum_to(mul(g, sb), sa.shape()) : Tensor(),
                                 gb ? detail::sum_to(mul(g, sa), sb.shape()) : Tensor()};
    });
  }
  return out;
}
Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = arith(a, b, DivOp{}, "div");
  if (detail::any_requires_grad({&a, &b})) {
    const Tensor sa = a.detach(), sb = b.detach();
    const bool ga = a.requires_grad(), gb = b.requires_grad();
    detail::record(out, "DivBackward0", {a, b}, [sa, sb, ga, gb](const Tensor& g) {
      Tensor gq = div(g, sb);
      return std::vector<Tensor>{ga ? detail::sum_to(gq, sa.shape()) : Tensor(),
                                 gb ? detail::sum_to(neg(mul(gq, div(sa, sb))), sb.shape()) : Tensor()};
    });
  }
  return out;
}
Tensor add(const Tensor& a, double b) { return add(a, scalar_like(a, b)); }
Tensor mul(const Tensor& a, double b) { return mul(a, scalar_like(a, b)); }

namespace {
// maximum/minimum: the gradient goes to the selected operand, half/half on ties (PyTorch).
Tensor max_min(const Tensor& a, const Tensor& b, bool is_max) {
  Tensor out = is_max ? arith(a, b, MaxOp{}, "maximum") : arith(a, b, MinOp{}, "minimum");
  if (detail::any_requires_grad({&a, &b})) {
    const Tensor sa = a.detach(), sb = b.detach();
    detail::record(out, is_max ? "MaximumBackward0" : "MinimumBackward0", {a, b}, [sa, sb, is_max](const Tensor& g) {
      const Tensor wins_a = (is_max ? gt(sa, sb) : lt(sa, sb)).to(g.dtype());
      const Tensor ties = eq(sa, sb).to(g.dtype());
      const Tensor wa = add(wins_a, mul(ties, 0.5));
      const Tensor wb = sub(ones_like(wa), wa);
      return std::vector<Tensor>{detail::sum_to(mul(g, wa), sa.shape()), detail::sum_to(mul(g, wb), sb.shape())};
    });
  }
  return out;
}
}  // namespace
Tensor maximum(const Tensor& a, const Tensor& b) { return max_min(a, b, true); }
Tensor minimum(const Tensor& a, const Tensor& b) { return max_min(a, b, false); }

Tensor eq(const Tensor& a, const Tensor& b) { return compare(a, b, EqOp{}, "eq"); }
Tensor ne(const Tensor& a, const Tensor& b) { return compare(a, b, NeOp{}, "ne"); }
Tensor lt(const Tensor& a, const Tensor& b) { return compare(a, b, LtOp{}, "lt"); }
Tensor le(const Tensor& a, const Tensor& b) { return compare(a, b, LeOp{}, "le"); }
Tensor gt(const Tensor& a, const Tensor& b) { return compare(a, b, GtOp{}, "gt"); }
Tensor ge(const Tensor& a, const Tensor& b) { return compare(a, b, GeOp{}, "ge"); }
Tensor eq(const Tensor& a, double b) { return eq(a, scalar_like(a, b)); }
Tensor lt(const Tensor& a, double b) { return lt(a, scalar_like(a, b)); }
Tensor gt(const Tensor& a, double b) { return gt(a, scalar_like(a, b)); }

// ---------------- unary ops ----------------
Tensor neg(const Tensor& a) {
  Tensor out = unary(a, NegOp{}, "neg");
  if (detail::any_requires_grad({&a}))
    detail::record(out, "NegBackward0", {a}, [](const Tensor& g) { return std::vector<Tensor>{neg(g)}; });
  return out;
}
Tensor abs(const Tensor& a) {
  Tensor out = unary(a, AbsOp{}, "abs");
  if (detail::any_requires_grad({&a})) {
    Tensor sa = a.detach();
    detail::record(out, "AbsBackward0", {a},
                   [sa](const Tensor& g) { return std::vector<Tensor>{mul(g, unary(sa, SignOp{}, "sign"))}; });
  }
  return out;
}
Tensor exp(const Tensor& a) {
  Tensor out = unary(a, ExpOp{}, "exp");
  if (detail::any_requires_grad({&a})) {
    Tensor y = out.detach();
    detail::record(out, "ExpBackward0", {a}, [y](const Tensor& g) { return std::vector<Tensor>{mul(g, y)}; });
  }
  return out;
}
Tensor log(const Tensor& a) {
  Tensor out = unary(a, LogOp{}, "log");
  if (detail::any_requires_grad({&a})) {
    Tensor x = a.detach();
    detail::record(out, "LogBackward0", {a}, [x](const Tensor& g) { return std::vector<Tensor>{div(g, x)}; });
  }
  return out;
}
Tensor sqrt(const Tensor& a) {
  Tensor out = unary(a, SqrtOp{}, "sqrt");
  if (detail::any_requires_grad({&a})) {
    Tensor y = out.detach();
    detail::record(out, "SqrtBackward0", {a},
                   [y](const Tensor& g) { return std::vector<Tensor>{div(mul(g, 0.5), y)}; });
  }
  return out;
}
Tensor rsqrt(const Tensor& a) {
  Tensor out = unary(a, RsqrtOp{}, "rsqrt");
  if (detail::any_requires_grad({&a})) {
    Tensor y = out.detach();
    detail::record(out, "RsqrtBackward0", {a}, [y](const Tensor& g) {
      return std::vector<Tensor>{mul(mul(g, unary(y, PowOp{3.0}, "pow")), -0.5)};
    });
  }
  return out;
}
Tensor pow(const Tensor& a, double p) {
  Tensor out = unary(a, PowOp{p}, "pow");
  if (detail::any_requires_grad({&a})) {
    Tensor x = a.detach();
    detail::record(out, "PowBackward0", {a}, [x, p](const Tensor& g) {
      if (p == 0.0) return std::vector<Tensor>{zeros_like(g)};
      return std::vector<Tensor>{mul(g, mul(unary(x, PowOp{p - 1.0}, "pow"), p))};
    });
  }
  return out;
}
Tensor square(const Tensor& a) {
  Tensor out = unary(a, SquareOp{}, "square");
  if (detail::any_requires_grad({&a})) {
    Tensor x = a.detach();
    detail::record(out, "PowBackward0", {a}, [x](const Tensor& g) { return std::vector<Tensor>{mul(g, mul(x, 2.0))}; });
  }
  return out;
}
Tensor round(const Tensor& a) { return unary(a, RoundOp{}, "round"); }
Tensor tanh(const Tensor& a) {
  Tensor out = unary(a, TanhOp{}, "tanh");
  return with_grad(out, a, "TanhBackward0", out, TanhBack{});
}
Tensor sigmoid(const Tensor& a) {
  Tensor out = unary(a, SigmoidOp{}, "sigmoid");
  return with_grad(out, a, "SigmoidBackward0", out, SigmoidBack{});
}
Tensor relu(const Tensor& a) { return with_grad(unary(a, ReluOp{}, "relu"), a, "ReluBackward0", a, ReluBack{}); }
Tensor silu(const Tensor& a) { return with_grad(unary(a, SiluOp{}, "silu"), a, "SiluBackward0", a, SiluBack{}); }
Tensor gelu(const Tensor& a, const std::string& approximate) {
  LOWBIT_CHECK(approximate == "none" || approximate == "tanh", "gelu: approximate must be 'none' or 'tanh', got '{}'",
               approximate);
  if (approximate == "tanh") return with_grad(unary(a, GeluTanhOp{}, "gelu"), a, "GeluBackward0", a, GeluTanhBack{});
  return with_grad(unary(a, GeluOp{}, "gelu"), a, "GeluBackward0", a, GeluBack{});
}
Tensor clamp(const Tensor& a, std::optional<double> mn, std::optional<double> mx) {
  LOWBIT_CHECK(mn || mx, "clamp: at least one of 'min' or 'max' must not be None");
  const double lo = mn ? *mn : -std::numeric_limits<double>::infinity();
  const double hi = mx ? *mx : std::numeric_limits<double>::infinity();
  return with_grad(unary(a, ClampOp{lo, hi}, "clamp"), a, "ClampBackward1", a, ClampBack{lo, hi});
}

// ---------------- where / masked_fill ----------------
Tensor where(const Tensor& cond, const Tensor& a_in, const Tensor& b_in) {
  LOWBIT_CHECK(cond.defined() && cond.dtype() == kBool, "where: condition must be a bool tensor, got {}",
               cond.defined() ? detail::desc(cond) : "undefined");
  detail::check_floating(a_in, "where", "input");
  detail::check_floating(b_in, "where", "other");
  detail::check_same_dtype(a_in, b_in, "where");
  const Shape s1 = detail::broadcast_shapes(a_in.shape(), b_in.shape(), "where");
  const Shape out_shape = detail::broadcast_shapes(cond.shape(), s1, "where");
  const Tensor a = upcast(a_in), b = upcast(b_in);
  Tensor out = empty(out_shape, a.dtype());
  LOWBIT_DISPATCH_FLOAT(a.dtype(), T, {
    const bool* c = cond.data_ptr<bool>();
    const T* x = a.data_ptr<T>();
    const T* y = b.data_ptr<T>();
    T* o = out.data_ptr<T>();
    std::array<std::vector<int64_t>, 3> st{detail::broadcast_strides(cond.shape(), out_shape),
                                           detail::broadcast_strides(a.shape(), out_shape),
                                           detail::broadcast_strides(b.shape(), out_shape)};
    broadcast_loop<3>(
        out_shape, st,
        [&](int64_t base, const std::array<int64_t, 3>& off, const std::array<int64_t, 3>& is, int64_t m) {
          for (int64_t j = 0; j < m; ++j)
            o[base + j] = c[off[0] + j * is[0]] ? x[off[1] + j * is[1]] : y[off[2] + j * is[2]];
        });
  });
  if (a_in.dtype() == kBFloat16) out = out.to(kBFloat16);
  if (detail::any_requires_grad({&a_in, &b_in})) {
    const Tensor c = cond;
    const Shape sa = a_in.shape(), sb = b_in.shape();
    detail::record(out, "WhereBackward0", {a_in, b_in}, [c, sa, sb](const Tensor& g) {
      const Tensor z = zeros({}, g.dtype());
      return std::vector<Tensor>{detail::sum_to(where(c, g, z), sa), detail::sum_to(where(c, z, g), sb)};
    });
  }
  return out;
}
Tensor masked_fill(const Tensor& a, const Tensor& mask, double value) {
  LOWBIT_CHECK(mask.defined() && mask.dtype() == kBool, "masked_fill: mask must be a bool tensor, got {}",
               mask.defined() ? detail::desc(mask) : "undefined");
  detail::check_floating(a, "masked_fill");
  const Shape bs = detail::broadcast_shapes(a.shape(), mask.shape(), "masked_fill");
  LOWBIT_CHECK(bs == a.shape(), "masked_fill: mask {} must be broadcastable to the input's shape {} without growing it",
               shape_str(mask.shape()), shape_str(a.shape()));
  return where(mask, full({}, value, a.dtype()), a);
}

// ---------------- operators ----------------
Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& a) { return neg(a); }
Tensor operator+(const Tensor& a, double b) { return add(a, b); }
Tensor operator-(const Tensor& a, double b) { return add(a, -b); }
Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
Tensor operator/(const Tensor& a, double b) { return div(a, scalar_like(a, b)); }
Tensor operator*(double a, const Tensor& b) { return mul(b, a); }

}  // namespace lowbit
