// Neural-network functions: dropout, cross_entropy (fused log-softmax + NLL with ignore_index and
// label smoothing), mse_loss, layer_norm (fused for float32/float64), rms_norm (a composition of
// primitives). Attention is in attention.cpp.
#include <cmath>
#include <limits>

#include "internal.h"
#include "lowbit/autograd/generator.h"

namespace lowbit {

Tensor dropout(const Tensor& a, double p, bool training, Generator* gen) {
  detail::check_floating(a, "dropout");
  LOWBIT_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability has to be between 0 and 1, but got {}", p);
  if (!training || p == 0.0) return a;
  if (p == 1.0) return mul(a, 0.0);
  Tensor mask = empty(a.shape(), detail::compute_dtype(a.dtype()));
  Generator& g = gen ? *gen : default_generator();
  const uint64_t seed = g.seed(), base = g.reserve(static_cast<uint64_t>(a.numel()));
  const double scale = 1.0 / (1.0 - p);
  LOWBIT_DISPATCH_FLOAT(mask.dtype(), T, {
    T* m = mask.data_ptr<T>();
    detail::parallel_for(a.numel(), kParallelGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        m[i] = Generator::uniform01(seed, base + static_cast<uint64_t>(i)) < p ? T(0) : static_cast<T>(scale);
    });
  });
  return mul(a, a.dtype() == kBFloat16 ? mask.to(kBFloat16) : mask);
}

namespace {
// logits (N, C) contiguous; loss per row; probs kept for backward.
template <typename T>
void ce_forward(const T* x, const int64_t* tgt, T* probs, double* row_loss, int64_t n, int64_t c, int64_t ignore,
                double eps) {
  detail::parallel_for(n, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(c, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T* xr = x + i * c;
      T* pr = probs + i * c;
      if (tgt[i] == ignore) {
        row_loss[i] = 0;
        continue;
      }
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < c; ++j) m = std::max(m, static_cast<double>(xr[j]));
      double s = 0;
      for (int64_t j = 0; j < c; ++j) {
        const double v = std::exp(static_cast<double>(xr[j]) - m);
        pr[j] = static_cast<T>(v);
        s += v;
      }
      const double lse = m + std::log(s);
      const double inv = 1.0 / s;
      double sum_logp = 0;
      for (int64_t j = 0; j < c; ++j) {
        pr[j] = static_cast<T>(static_cast<double>(pr[j]) * inv);
        sum_logp += static_cast<double>(xr[j]) - lse;
      }
      const double nll = lse - static_cast<double>(xr[tgt[i]]);
      row_loss[i] = (1.0 - eps) * nll - eps * sum_logp / static_cast<double>(c);
    }
  });
}
}  // namespace

Tensor cross_entropy(const Tensor& logits_in, const Tensor& target_in, int64_t ignore_index, double eps,
                     Reduction reduction) {
  detail::check_floating(logits_in, "cross_entropy", "input");
  LOWBIT_CHECK(target_in.defined() && (target_in.dtype() == kInt64 || target_in.dtype() == kInt32),
               "cross_entropy: target must hold class indices as int64 (or int32), got {}",
               target_in.defined() ? detail::desc(target_in) : "undefined");
  LOWBIT_CHECK(logits_in.dim() >= 1, "cross_entropy: input must have at least 1 dimension, got {}",
               shape_str(logits_in.shape()));
  LOWBIT_CHECK(eps >= 0.0 && eps <= 1.0, "cross_entropy: label_smoothing must be between 0.0 and 1.0, got {}", eps);
  // (C) / (N, C) / (N, C, d1, ...) -> (rows, C) with class last
  Tensor logits = logits_in;
  Shape expect_target;
  if (logits_in.dim() == 1) {
    logits = logits_in.unsqueeze(0);
  } else if (logits_in.dim() > 2) {
    std::vector<int64_t> perm{0};
    for (int64_t i = 2; i < logits_in.dim(); ++i) perm.push_back(i);
    perm.push_back(1);
    logits = permute(logits_in, perm);
  }
  const int64_t c = logits.size(-1);
  for (int64_t i = 0; i < logits_in.dim(); ++i)
    if (i != (logits_in.dim() == 1 ? 0 : 1)) expect_target.push_back(logits_in.shape()[i]);
  LOWBIT_CHECK(target_in.shape() == expect_target, "cross_entropy: input {} expects target of shape {}, got target {}",
               shape_str(logits_in.shape()), shape_str(expect_target), shape_str(target_in.shape()));
  logits = logits.reshape({-1, c});
  const Tensor target = target_in.to(kInt64).reshape({-1});
  const int64_t n = logits.shape()[0];
  const int64_t* tp = target.data_ptr<int64_t>();
  int64_t valid = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (tp[i] == ignore_index) continue;
    LOWBIT_CHECK(tp[i] >= 0 && tp[i] < c, "cross_entropy: target {} at position {} is out of bounds for {} classes",
                 tp[i], i, c);
    ++valid;
  }
  const Tensor x = logits.detach().to(detail::compute_dtype(logits.dtype()));
  Tensor probs = empty(x.shape(), x.dtype());
  std::vector<double> row_loss(n);
  LOWBIT_DISPATCH_FLOAT(
      x.dtype(), T, ce_forward<T>(x.data_ptr<T>(), tp, probs.data_ptr<T>(), row_loss.data(), n, c, ignore_index, eps));
  Tensor out;
  if (reduction == Reduction::None) {
    out = empty({n}, x.dtype());
    LOWBIT_DISPATCH_FLOAT(x.dtype(), T,
                          for (int64_t i = 0; i < n; ++i) out.data_ptr<T>()[i] = static_cast<T>(row_loss[i]));
    out = out.reshape(target_in.shape());
  } else {
    double s = 0;
    for (double v : row_loss) s += v;
    if (reduction == Reduction::Mean)
      s = valid ? s / static_cast<double>(valid) : std::numeric_limits<double>::quiet_NaN();
    out = full({}, s, x.dtype());
  }
  if (logits_in.dtype() == kBFloat16) out = out.to(kBFloat16);
  if (detail::any_requires_grad({&logits})) {
    const double denom = reduction == Reduction::Mean ? static_cast<double>(valid) : 1.0;
    const Tensor tgt = target;
    detail::record(
        out, "NllLossBackward0", {logits}, [probs, tgt, denom, eps, ignore_index, reduction, n, c](const Tensor& g_in) {
          const Tensor g = g_in.to(probs.dtype());
          Tensor gx = empty(probs.shape(), probs.dtype());
          LOWBIT_DISPATCH_FLOAT(probs.dtype(), T, {
            const T* p = probs.data_ptr<T>();
            const T* gp = g.data_ptr<T>();
            const int64_t* t = tgt.data_ptr<int64_t>();
            T* o = gx.data_ptr<T>();
            const T smooth = static_cast<T>(eps / static_cast<double>(c));
            detail::parallel_for(
                n, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(c, 1)), [&](int64_t b, int64_t e) {
                  for (int64_t i = b; i < e; ++i) {
                    T* orow = o + i * c;
                    if (t[i] == ignore_index) {
                      std::fill(orow, orow + c, T(0));
                      continue;
                    }
                    const T scale = static_cast<T>(
                        (reduction == Reduction::None ? static_cast<double>(gp[i]) : static_cast<double>(gp[0])) /
                        denom);
                    const T* prow = p + i * c;
                    for (int64_t j = 0; j < c; ++j) orow[j] = (prow[j] - smooth) * scale;
                    orow[t[i]] -= static_cast<T>(1.0 - eps) * scale;
                  }
                });
          });
          return std::vector<Tensor>{gx};
        });
  }
  return out;
}

Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction) {
  detail::check_floating(input, "mse_loss", "input");
  detail::check_floating(target, "mse_loss", "target");
  LOWBIT_CHECK(input.shape() == target.shape(), "mse_loss: input {} and target {} must have the same shape",
               shape_str(input.shape()), shape_str(target.shape()));
  const Tensor d = sub(input, target);
  const Tensor sq = mul(d, d);
  if (reduction == Reduction::None) return sq;
  return reduction == Reduction::Sum ? sum(sq) : mean(sq);
}

namespace {
std::vector<int64_t> trailing_dims(const Tensor& x, const Shape& normalized_shape, const char* op) {
  const int64_t k = static_cast<int64_t>(normalized_shape.size());
  LOWBIT_CHECK(k >= 1, "{}: normalized_shape must have at least one dimension", op);
  bool ok = x.dim() >= k;
  for (int64_t i = 0; ok && i < k; ++i) ok = x.shape()[x.dim() - k + i] == normalized_shape[i];
  LOWBIT_CHECK(ok, "{}: given normalized_shape={}, expected input with shape [*, {}], but got input of size {}", op,
               shape_str(normalized_shape),
               shape_str(normalized_shape).substr(1, shape_str(normalized_shape).size() - 2), shape_str(x.shape()));
  std::vector<int64_t> dims;
  for (int64_t i = x.dim() - k; i < x.dim(); ++i) dims.push_back(i);
  return dims;
}
void check_affine(const Tensor& p, const Shape& normalized_shape, const char* op, const char* what) {
  if (!p.defined()) return;
  LOWBIT_CHECK(p.shape() == normalized_shape, "{}: {} has shape {} but normalized_shape is {}", op, what,
               shape_str(p.shape()), shape_str(normalized_shape));
}
}  // namespace

namespace {
// One pass per row: mean, variance (of the centred values), 1/sqrt(var + eps), then
// y = (x - mean) * rstd * w + b; the row statistics are kept for the backward.
template <typename T>
void ln_forward(const T* x, const T* w, const T* b, T* y, T* mean_out, T* rstd_out, int64_t rows, int64_t n,
                double eps) {
  detail::parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(n, 1)),
                       [&](int64_t r0, int64_t r1) {
                         for (int64_t r = r0; r < r1; ++r) {
                           const T* xr = x + r * n;
                           T* yr = y + r * n;
                           T s = 0;
#pragma omp simd reduction(+ : s)
                           for (int64_t i = 0; i < n; ++i) s += xr[i];
                           const T mu = s / static_cast<T>(n);
                           T v = 0;
#pragma omp simd reduction(+ : v)
                           for (int64_t i = 0; i < n; ++i) v += (xr[i] - mu) * (xr[i] - mu);
                           const T rstd = static_cast<T>(1) / std::sqrt(v / static_cast<T>(n) + static_cast<T>(eps));
                           mean_out[r] = mu;
                           rstd_out[r] = rstd;
#pragma omp simd
                           for (int64_t i = 0; i < n; ++i) {
                             const T h = (xr[i] - mu) * rstd;
                             yr[i] = (w ? h * w[i] : h) + (b ? b[i] : static_cast<T>(0));
                           }
                         }
                       });
}
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w; dw = sum_rows dy * xhat,
// db = sum_rows dy, summed over fixed chunks of rows (the result does not depend on the threads).
template <typename T>
void ln_backward(const T* x, const T* w, const T* mean, const T* rstd, const T* dy, T* dx, T* dw, T* db, int64_t rows,
                 int64_t n) {
  constexpr int64_t kRowsPerChunk = 32;
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<T> pw(dw ? static_cast<size_t>(chunks * n) : 0), pb(db ? static_cast<size_t>(chunks * n) : 0);
  detail::parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      T* cw = dw ? pw.data() + c * n : nullptr;
      T* cb = db ? pb.data() + c * n : nullptr;
      if (cw) std::fill(cw, cw + n, static_cast<T>(0));
      if (cb) std::fill(cb, cb + n, static_cast<T>(0));
      for (int64_t r = c * kRowsPerChunk; r < std::min(rows, (c + 1) * kRowsPerChunk); ++r) {
        const T* xr = x + r * n;
        const T* gr = dy + r * n;
        T* dxr = dx + r * n;
        const T mu = mean[r], rs = rstd[r];
        T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t i = 0; i < n; ++i) {
          const T g = w ? gr[i] * w[i] : gr[i];
          s1 += g;
          s2 += g * ((xr[i] - mu) * rs);
        }
        const T m1 = s1 / static_cast<T>(n), m2 = s2 / static_cast<T>(n);
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const T h = (xr[i] - mu) * rs;
          const T g = w ? gr[i] * w[i] : gr[i];
          dxr[i] = rs * (g - m1 - h * m2);
          if (cw) cw[i] += gr[i] * h;
          if (cb) cb[i] += gr[i];
        }
      }
    }
  });
  for (int64_t i = 0; i < n; ++i) {
    if (dw) {
      T s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += pw[c * n + i];
      dw[i] = s;
    }
    if (db) {
      T s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += pb[c * n + i];
      db[i] = s;
    }
  }
}
}  // namespace

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias,
                  double eps) {
  detail::check_floating(x, "layer_norm");
  const auto dims = trailing_dims(x, normalized_shape, "layer_norm");
  check_affine(weight, normalized_shape, "layer_norm", "weight");
  check_affine(bias, normalized_shape, "layer_norm", "bias");
  const bool same_dtype =
      (!weight.defined() || weight.dtype() == x.dtype()) && (!bias.defined() || bias.dtype() == x.dtype());
  if (detail::is_compute(x.dtype()) && same_dtype) {
    // fused: one pass forward, one pass backward (float32 / float64; bfloat16 keeps the
    // composition below, which rounds after every op as PyTorch's bf16 ops do)
    int64_t n = 1;
    for (int64_t d : normalized_shape) n *= d;
    const int64_t rows = n ? x.numel() / n : 0;
    const Tensor xd = x.detach();
    Tensor y = empty(x.shape(), x.dtype()), mean_t = empty({rows}, x.dtype()), rstd_t = empty({rows}, x.dtype());
    LOWBIT_DISPATCH_FLOAT(x.dtype(), T,
                          ln_forward<T>(xd.data_ptr<T>(), weight.defined() ? weight.data_ptr<T>() : nullptr,
                                        bias.defined() ? bias.data_ptr<T>() : nullptr, y.data_ptr<T>(),
                                        mean_t.data_ptr<T>(), rstd_t.data_ptr<T>(), rows, n, eps));
    std::vector<Tensor> inputs{x};
    if (weight.defined()) inputs.push_back(weight);
    if (bias.defined()) inputs.push_back(bias);
    if (detail::any_requires_grad({&x, &weight, &bias})) {
      const Tensor w = weight.defined() ? weight.detach() : Tensor();
      const bool has_w = weight.defined(), has_b = bias.defined();
      const Shape ns = normalized_shape;
      detail::record(y, "NativeLayerNormBackward0", inputs,
                     [xd, w, mean_t, rstd_t, rows, n, has_w, has_b, ns](const Tensor& g_in) {
                       const Tensor g = g_in.to(xd.dtype());
                       Tensor dx = empty(xd.shape(), xd.dtype());
                       Tensor dw = has_w ? empty(ns, xd.dtype()) : Tensor(),
                              db = has_b ? empty(ns, xd.dtype()) : Tensor();
                       LOWBIT_DISPATCH_FLOAT(xd.dtype(), T,
                                             ln_backward<T>(xd.data_ptr<T>(), has_w ? w.data_ptr<T>() : nullptr,
                                                            mean_t.data_ptr<T>(), rstd_t.data_ptr<T>(), g.data_ptr<T>(),
                                                            dx.data_ptr<T>(), has_w ? dw.data_ptr<T>() : nullptr,
                                                            has_b ? db.data_ptr<T>() : nullptr, rows, n));
                       std::vector<Tensor> out{dx};
                       if (has_w) out.push_back(dw);
                       if (has_b) out.push_back(db);
                       return out;
                     });
    }
    return y;
  }
  const Tensor mu = mean(x, dims, true);
  const Tensor xc = sub(x, mu);
  const Tensor v = mean(mul(xc, xc), dims, true);
  Tensor y = mul(xc, rsqrt(add(v, eps)));
  if (weight.defined()) y = mul(y, weight);
  if (bias.defined()) y = add(y, bias);
  return y;
}

Tensor rms_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, std::optional<double> eps) {
  detail::check_floating(x, "rms_norm");
  const auto dims = trailing_dims(x, normalized_shape, "rms_norm");
  check_affine(weight, normalized_shape, "rms_norm", "weight");
  const double e = eps ? *eps
                       : static_cast<double>(x.dtype() == kFloat64 ? std::numeric_limits<double>::epsilon()
                                                                   : std::numeric_limits<float>::epsilon());
  Tensor y = mul(x, rsqrt(add(mean(mul(x, x), dims, true), e)));
  if (weight.defined()) y = mul(y, weight);
  return y;
}

}  // namespace lowbit
