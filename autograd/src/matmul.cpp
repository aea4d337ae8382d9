// matmul / linear. float32 GEMMs run on oneDNN's matmul primitive; transposes are expressed as
// strides in the memory descriptors (never materialized); primitives are cached by
// (shape, transposes, bias, dtype). float64 and forced-reference mode use a plain loop.
#include <dnnl.hpp>

#include <atomic>
#include <map>
#include <mutex>
#include <tuple>

#include "internal.h"

namespace lowbit {

namespace {
dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, bool, bool>;
struct Cached {
  dnnl::matmul prim;
  dnnl::memory::desc a_md, b_md, c_md, bias_md;
};

// C[b] = op(A[b]) · op(B[b]) (+ bias), float32 C and bias; A and B float32 or, with bf16, bfloat16 (oneDNN
// accumulates in float32); batch counts ba, bb (one may be 1 = broadcast).
void onednn_gemm(const void* a, bool ta, const void* b, bool tb, const float* bias, float* c, int64_t ba, int64_t bb,
                 int64_t m, int64_t n, int64_t k, bool bf16 = false) {
  using dt = dnnl::memory::data_type;
  using dims = dnnl::memory::dims;
  static std::mutex mu;
  static std::map<Key, Cached> cache;
  // oneDNN fixes a primitive's thread count when it is created: the key includes it
  const Key key{ba, bb, m, n, k, get_num_threads(), ta, tb, bias != nullptr, bf16};
  Cached* entry;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it == cache.end()) {
      Cached cc;
      const int64_t bo = std::max(ba, bb);
      // A is stored (m, k) or, when ta, (k, m); strides express op(A) as (m, k).
      const dt in = bf16 ? dt::bf16 : dt::f32;
      cc.a_md = dnnl::memory::desc(dims{ba, m, k}, in, ta ? dims{m * k, 1, m} : dims{m * k, k, 1});
      cc.b_md = dnnl::memory::desc(dims{bb, k, n}, in, tb ? dims{k * n, 1, k} : dims{k * n, n, 1});
      cc.c_md = dnnl::memory::desc(dims{bo, m, n}, dt::f32, dims{m * n, n, 1});
      if (bias) cc.bias_md = dnnl::memory::desc(dims{1, 1, n}, dt::f32, dims{n, n, 1});
      auto d = bias ? dnnl::matmul::desc(cc.a_md, cc.b_md, cc.bias_md, cc.c_md)
                    : dnnl::matmul::desc(cc.a_md, cc.b_md, cc.c_md);
      cc.prim = dnnl::matmul(dnnl::matmul::primitive_desc(d, cpu_engine()));
      it = cache.emplace(key, std::move(cc)).first;
    }
    entry = &it->second;
  }
  auto& eng = cpu_engine();
  static thread_local dnnl::stream strm(eng);
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, dnnl::memory(entry->a_md, eng, const_cast<void*>(a))},
                                             {DNNL_ARG_WEIGHTS, dnnl::memory(entry->b_md, eng, const_cast<void*>(b))},
                                             {DNNL_ARG_DST, dnnl::memory(entry->c_md, eng, c)}};
  if (bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(entry->bias_md, eng, const_cast<float*>(bias)));
  entry->prim.execute(strm, args);
  strm.wait();
}

template <typename T>
void reference_gemm(const T* a, bool ta, const T* b, bool tb, const T* bias, T* c, int64_t ba, int64_t bb, int64_t m,
                    int64_t n, int64_t k) {
  const int64_t bo = std::max(ba, bb);
  for (int64_t p = 0; p < bo; ++p) {
    const T* ap = a + (ba == 1 ? 0 : p) * m * k;
    const T* bp = b + (bb == 1 ? 0 : p) * k * n;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = bias ? static_cast<double>(bias[j]) : 0.0;
        for (int64_t q = 0; q < k; ++q)
          s += static_cast<double>(ta ? ap[q * m + i] : ap[i * k + q]) *
               static_cast<double>(tb ? bp[j * k + q] : bp[q * n + j]);
        c[(p * m + i) * n + j] = static_cast<T>(s);
      }
  }
}
}  // namespace

namespace {
std::atomic<int> g_matmul_precision{0};  // 0 highest, 1 high, 2 medium
}  // namespace

void set_float32_matmul_precision(const std::string& p) {
  LOWBIT_CHECK(p == "highest" || p == "high" || p == "medium",
               "set_float32_matmul_precision: expected 'highest', 'high' or 'medium', got '{}'", p);
  g_matmul_precision = p == "highest" ? 0 : p == "high" ? 1 : 2;
}
std::string get_float32_matmul_precision() {
  const int p = g_matmul_precision;
  return p == 0 ? "highest" : p == 1 ? "high" : "medium";
}

namespace detail {
Tensor gemm(const Tensor& a_in, bool ta, const Tensor& b_in, bool tb, const Tensor& bias_in) {
  LOWBIT_ASSERT((a_in.dim() == 2 || a_in.dim() == 3) && a_in.dim() == b_in.dim());
  const Tensor a = a_in.dtype() == kBFloat16 ? a_in.to(kFloat32) : a_in;
  const Tensor b = b_in.dtype() == kBFloat16 ? b_in.to(kFloat32) : b_in;
  const Tensor bias = bias_in.defined() && bias_in.dtype() == kBFloat16 ? bias_in.to(kFloat32) : bias_in;
  const bool batched = a.dim() == 3;
  const int64_t ba = batched ? a.shape()[0] : 1, bb = batched ? b.shape()[0] : 1;
  const int64_t ar = a.shape()[a.dim() - 2], ac = a.shape()[a.dim() - 1];
  const int64_t br = b.shape()[b.dim() - 2], bc = b.shape()[b.dim() - 1];
  const int64_t m = ta ? ac : ar, k = ta ? ar : ac, n = tb ? br : bc;
  LOWBIT_ASSERT((tb ? bc : br) == k && (ba == bb || ba == 1 || bb == 1));
  const int64_t bo = std::max(ba, bb);
  Tensor c = batched ? empty({bo, m, n}, a.dtype()) : empty({m, n}, a.dtype());
  if (c.numel() == 0) return c;
  if (k == 0) {
    c.zero_();
    if (bias.defined()) {
      NoGradGuard ng;
      c = add(c, bias);
    }
    return c;
  }
  if (a.dtype() == kFloat32 && !reference_kernels() && g_matmul_precision == 2) {  // "medium": bf16 operands
    NoGradGuard ng;
    const Tensor a16 = a.to(kBFloat16), b16 = b.to(kBFloat16);
    onednn_gemm(a16.raw_data(), ta, b16.raw_data(), tb, bias.defined() ? bias.data_ptr<float>() : nullptr,
                c.data_ptr<float>(), ba, bb, m, n, k, /*bf16=*/true);
  } else if (a.dtype() == kFloat32 && !reference_kernels()) {
    onednn_gemm(a.data_ptr<float>(), ta, b.data_ptr<float>(), tb, bias.defined() ? bias.data_ptr<float>() : nullptr,
                c.data_ptr<float>(), ba, bb, m, n, k);
  } else {
    LOWBIT_DISPATCH_FLOAT(
        a.dtype(), T,
        reference_gemm<T>(a.data_ptr<T>(), ta, b.data_ptr<T>(), tb, bias.defined() ? bias.data_ptr<T>() : nullptr,
                          c.data_ptr<T>(), ba, bb, m, n, k));
  }
  return c;
}
}  // namespace detail

Tensor gemm_bf16(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& bias) {
  LOWBIT_CHECK(
      a.defined() && b.defined() && a.dtype() == kBFloat16 && b.dtype() == kBFloat16 && a.dim() == 2 && b.dim() == 2,
      "gemm_bf16: expects two 2-D bfloat16 tensors, got {} and {}", a.defined() ? detail::desc(a) : "undefined",
      b.defined() ? detail::desc(b) : "undefined");
  const int64_t m = ta ? a.size(1) : a.size(0), k = ta ? a.size(0) : a.size(1);
  const int64_t kb = tb ? b.size(1) : b.size(0), n = tb ? b.size(0) : b.size(1);
  LOWBIT_CHECK(k == kb, "gemm_bf16: op(A) is {}x{} but op(B) is {}x{} (trans_a={}, trans_b={}; A {}, B {})", m, k, kb,
               n, ta, tb, shape_str(a.shape()), shape_str(b.shape()));
  LOWBIT_CHECK(!bias.defined() || (bias.dtype() == kFloat32 && bias.dim() == 1 && bias.size(0) == n),
               "gemm_bf16: bias must be a float32 vector of {} elements, got {}", n, detail::desc(bias));
  const Tensor& ac = a;  // lowbit tensors are contiguous (transposes materialize or are strides of a GEMM)
  const Tensor& bc = b;
  Tensor c = empty({m, n}, kFloat32);
  if (c.numel() == 0) return c;
  if (k == 0 || reference_kernels()) {  // the reference: the same products, summed in float64
    NoGradGuard ng;
    const Tensor a32 = ac.to(kFloat32), b32 = bc.to(kFloat32);
    const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
    if (k == 0) {
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) c.data_ptr<float>()[i * n + j] = bp ? bp[j] : 0.0f;
    } else {
      reference_gemm<float>(a32.data_ptr<float>(), ta, b32.data_ptr<float>(), tb, bp, c.data_ptr<float>(), 1, 1, m, n,
                            k);
    }
    return c;
  }
  onednn_gemm(ac.raw_data(), ta, bc.raw_data(), tb, bias.defined() ? bias.data_ptr<float>() : nullptr,
              c.data_ptr<float>(), 1, 1, m, n, k, /*bf16=*/true);
  return c;
}

Tensor gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& bias) {
  LOWBIT_CHECK(a.defined() && b.defined() && a.dtype() == kFloat32 && b.dtype() == kFloat32 &&
                   (a.dim() == 2 || a.dim() == 3) && a.dim() == b.dim(),
               "gemm: expects two float32 tensors, both 2-D or both 3-D, got {} and {}",
               a.defined() ? detail::desc(a) : "undefined", b.defined() ? detail::desc(b) : "undefined");
  const int64_t d = a.dim();
  const int64_t m = ta ? a.size(d - 1) : a.size(d - 2), k = ta ? a.size(d - 2) : a.size(d - 1);
  const int64_t kb = tb ? b.size(d - 1) : b.size(d - 2), n = tb ? b.size(d - 2) : b.size(d - 1);
  LOWBIT_CHECK(k == kb, "gemm: op(A) is {}x{} but op(B) is {}x{} (trans_a={}, trans_b={}; A {}, B {})", m, k, kb, n, ta,
               tb, shape_str(a.shape()), shape_str(b.shape()));
  LOWBIT_CHECK(d == 2 || a.size(0) == b.size(0) || a.size(0) == 1 || b.size(0) == 1,
               "gemm: batch counts {} and {} differ (A {}, B {})", a.size(0), b.size(0), shape_str(a.shape()),
               shape_str(b.shape()));
  LOWBIT_CHECK(!bias.defined() || (bias.dtype() == kFloat32 && bias.dim() == 1 && bias.size(0) == n),
               "gemm: bias must be a float32 vector of {} elements, got {}", n, detail::desc(bias));
  return detail::gemm(a, ta, b, tb, bias);
}

namespace {
// Recorded GEMM on 2-D or same-batch 3-D operands (no transposes at the API level).
Tensor mm(const Tensor& a, const Tensor& b) {
  Tensor out = detail::gemm(a, false, b, false);
  if (a.dtype() == kBFloat16) out = out.to(kBFloat16);
  if (detail::any_requires_grad({&a, &b})) {
    const Tensor sa = a.detach(), sb = b.detach();
    const bool ga = a.requires_grad(), gb = b.requires_grad();
    detail::record(out, "MmBackward0", {a, b}, [sa, sb, ga, gb](const Tensor& g) {
      return std::vector<Tensor>{ga ? detail::gemm(g, false, sb, true) : Tensor(),
                                 gb ? detail::gemm(sa, true, g, false) : Tensor()};
    });
  }
  return out;
}

// Broadcast copy that records sum_to as its backward.
Tensor expand(const Tensor& t, const Shape& shape) {
  if (t.shape() == shape) return t;
  Tensor out;
  {
    NoGradGuard ng;
    out = detail::expand_copy(t, shape);
  }
  if (detail::any_requires_grad({&t})) {
    const Shape s = t.shape();
    detail::record(out, "ExpandBackward0", {t},
                   [s](const Tensor& g) { return std::vector<Tensor>{detail::sum_to(g, s)}; });
  }
  return out;
}
}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  detail::check_floating(a, "matmul", "mat1");
  detail::check_floating(b, "matmul", "mat2");
  detail::check_same_dtype(a, b, "matmul");
  LOWBIT_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: both arguments need at least 1 dimension, got {} and {}",
               shape_str(a.shape()), shape_str(b.shape()));
  if (a.dim() == 1 && b.dim() == 1) {
    LOWBIT_CHECK(a.shape()[0] == b.shape()[0], "matmul: 1D tensors expected to have the same size, but got {} and {}",
                 shape_str(a.shape()), shape_str(b.shape()));
    return mm(a.reshape({1, -1}), b.reshape({-1, 1})).reshape({});
  }
  if (a.dim() == 1) return matmul(a.unsqueeze(0), b).squeeze(-2);
  if (b.dim() == 1) return matmul(a, b.unsqueeze(-1)).squeeze(-1);
  const int64_t m = a.size(-2), k = a.size(-1), k2 = b.size(-2), n = b.size(-1);
  LOWBIT_CHECK(k == k2, "matmul: mat1 and mat2 shapes cannot be multiplied ({}x{} and {}x{}); full shapes {} and {}", m,
               k, k2, n, shape_str(a.shape()), shape_str(b.shape()));
  if (a.dim() == 2 && b.dim() == 2) return mm(a, b);
  const Shape batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  const Shape batch = detail::broadcast_shapes(batch_a, batch_b, "matmul (batch dimensions)");
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  if (b.dim() == 2) return mm(a.reshape({-1, k}), b).reshape(out_shape);  // fold the batch into rows
  Shape sa = batch, sb = batch;
  sa.insert(sa.end(), {m, k});
  sb.insert(sb.end(), {k, n});
  return mm(expand(a, sa).reshape({-1, m, k}), expand(b, sb).reshape({-1, k, n})).reshape(out_shape);
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  detail::check_floating(x, "linear", "input");
  detail::check_floating(w, "linear", "weight");
  detail::check_same_dtype(x, w, "linear");
  LOWBIT_CHECK(w.dim() == 2, "linear: weight must be 2-D (out_features, in_features), got {}", shape_str(w.shape()));
  LOWBIT_CHECK(x.dim() >= 1, "linear: input must have at least 1 dimension, got {}", shape_str(x.shape()));
  LOWBIT_CHECK(x.size(-1) == w.shape()[1],
               "linear: input {} and weight {}: input.size(-1)={} must equal weight.size(1)={}", shape_str(x.shape()),
               shape_str(w.shape()), x.size(-1), w.shape()[1]);
  if (bias.defined()) {
    detail::check_same_dtype(x, bias, "linear");
    LOWBIT_CHECK(bias.dim() == 1 && bias.shape()[0] == w.shape()[0],
                 "linear: bias {} must be 1-D of size out_features={} (weight {})", shape_str(bias.shape()),
                 w.shape()[0], shape_str(w.shape()));
  }
  Shape out_shape = x.shape();
  out_shape.back() = w.shape()[0];
  Tensor x2 = x.detach().reshape({-1, w.shape()[1]});
  Tensor out = detail::gemm(x2, false, w, true, bias).reshape(out_shape);
  if (x.dtype() == kBFloat16) out = out.to(kBFloat16);
  if (detail::any_requires_grad({&x, &w, &bias})) {
    const Tensor ws = w.detach();
    const Shape xs = x.shape();
    const bool gx = x.requires_grad(), gw = w.requires_grad(), gb = bias.defined() && bias.requires_grad();
    detail::record(out, "AddmmBackward0", {x, w, bias}, [x2, ws, xs, gx, gw, gb](const Tensor& g) {
      const Tensor g2 = g.reshape({-1, ws.shape()[0]});
      return std::vector<Tensor>{gx ? detail::gemm(g2, false, ws, false).reshape(xs) : Tensor(),
                                 gw ? detail::gemm(g2, true, x2, false) : Tensor(), gb ? sum(g2, {0}) : Tensor()};
    });
  }
  return out;
}

}  // namespace lowbit
