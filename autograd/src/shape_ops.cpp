// Shape ops: views (reshape/flatten/squeeze/unsqueeze, contiguous narrow/select), permute and
// transpose (materialized), cat/stack/split/chunk, index_select/embedding.
#include <cstring>
#include <numeric>

#include "internal.h"

namespace lowbit {

using detail::wrap_dim;

namespace {
// A view of t with a new shape (same numel), recorded so the gradient is reshaped back.
Tensor view_as_shape(const Tensor& t, const Shape& shape, const char* name) {
  Tensor out = detail::make_view(t, shape, t.impl()->offset);
  if (detail::any_requires_grad({&t})) {
    const Shape in_shape = t.shape();
    detail::record(out, name, {t}, [in_shape](const Tensor& g) { return std::vector<Tensor>{g.reshape(in_shape)}; });
  }
  return out;
}
}  // namespace

Tensor Tensor::reshape(const Shape& shape_in) const {
  LOWBIT_CHECK(defined(), "reshape: called on an undefined tensor");
  Shape shape = shape_in;
  int64_t infer = -1, known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      LOWBIT_CHECK(infer < 0, "reshape: only one dimension can be inferred (-1), got shape {}", shape_str(shape_in));
      infer = static_cast<int64_t>(i);
    } else {
      LOWBIT_CHECK(shape[i] >= 0, "reshape: invalid shape dimension {} in {}", shape[i], shape_str(shape_in));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    LOWBIT_CHECK(known != 0 && numel() % known == 0,
                 "reshape: shape {} is invalid for input of size {} (input shape {})", shape_str(shape_in), numel(),
                 shape_str(this->shape()));
    shape[infer] = numel() / known;
  }
  LOWBIT_CHECK(detail::numel_of(shape) == numel(), "reshape: shape {} is invalid for input of size {} (input shape {})",
               shape_str(shape_in), numel(), shape_str(this->shape()));
  detail::check_shape(shape, "reshape");
  if (shape == this->shape()) return *this;
  return view_as_shape(*this, shape, "ViewBackward0");
}
Tensor reshape(const Tensor& a, const Shape& shape) { return a.reshape(shape); }

Tensor Tensor::flatten(int64_t start, int64_t end) const {
  const int64_t nd = dim();
  if (nd == 0) return reshape({1});
  start = wrap_dim(start, nd, "flatten");
  end = wrap_dim(end, nd, "flatten");
  LOWBIT_CHECK(start <= end, "flatten: start_dim ({}) cannot come after end_dim ({})", start, end);
  Shape s(shape().begin(), shape().begin() + start);
  int64_t m = 1;
  for (int64_t i = start; i <= end; ++i) m *= shape()[i];
  s.push_back(m);
  s.insert(s.end(), shape().begin() + end + 1, shape().end());
  return reshape(s);
}
Tensor Tensor::squeeze() const {
  Shape s;
  for (int64_t d : shape())
    if (d != 1) s.push_back(d);
  return reshape(s);
}
Tensor Tensor::squeeze(int64_t d) const {
  if (dim() == 0) return *this;
  d = wrap_dim(d, dim(), "squeeze");
  if (shape()[d] != 1) return *this;
  Shape s = shape();
  s.erase(s.begin() + d);
  return reshape(s);
}
Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape s = shape();
  s.insert(s.begin() + d, 1);
  return reshape(s);
}

Tensor narrow(const Tensor& a, int64_t d, int64_t start, int64_t length) {
  LOWBIT_CHECK(a.dim() > 0, "narrow: cannot be applied to a 0-dim tensor");
  d = wrap_dim(d, a.dim(), "narrow");
  const int64_t size = a.shape()[d];
  if (start < 0) start += size;
  LOWBIT_CHECK(start >= 0 && length >= 0 && start + length <= size,
               "narrow: start ({}) + length ({}) exceeds dimension size ({}) of dim {} for input {}", start, length,
               size, d, shape_str(a.shape()));
  Shape out_shape = a.shape();
  out_shape[d] = length;
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= a.shape()[i];
  for (size_t i = d + 1; i < a.shape().size(); ++i) inner *= a.shape()[i];
  const size_t es = element_size(a.dtype());
  Tensor out;
  if (outer == 1 || length == size) {
    // contiguous slice: a view sharing storage
    out = detail::make_view(a, out_shape, a.impl()->offset + static_cast<size_t>(start * inner) * es);
  } else {
    out = empty(out_shape, a.dtype());
    const char* src = static_cast<const char*>(a.raw_data());
    char* dst = static_cast<char*>(out.raw_data());
    const size_t row = static_cast<size_t>(length * inner) * es;
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(dst + o * row, src + (static_cast<size_t>(o * size + start) * inner) * es, row);
  }
  if (detail::any_requires_grad({&a})) {
    const Shape in_shape = a.shape();
    detail::record(out, "NarrowBackward0", {a}, [in_shape, d, start](const Tensor& g) {
      Tensor full = zeros(in_shape, g.dtype());
      const size_t es = element_size(g.dtype());
      int64_t outer = 1, inner = 1;
      for (int64_t i = 0; i < d; ++i) outer *= in_shape[i];
      for (size_t i = d + 1; i < in_shape.size(); ++i) inner *= in_shape[i];
      const int64_t len = g.shape()[d], size = in_shape[d];
      const size_t row = static_cast<size_t>(len * inner) * es;
      for (int64_t o = 0; o < outer; ++o)
        std::memcpy(static_cast<char*>(full.raw_data()) + (static_cast<size_t>(o * size + start) * inner) * es,
                    static_cast<const char*>(g.raw_data()) + o * row, row);
      return std::vector<Tensor>{full};
    });
  }
  return out;
}
Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  return lowbit::narrow(*this, d, start, length);
}
Tensor Tensor::select(int64_t d, int64_t index) const {
  LOWBIT_CHECK(dim() > 0, "select: cannot be applied to a 0-dim tensor");
  d = wrap_dim(d, dim(), "select");
  const int64_t size = shape()[d];
  LOWBIT_CHECK(index >= -size && index < size, "select: index {} out of range for tensor of size {} at dimension {}",
               index, shape_str(shape()), d);
  if (index < 0) index += size;
  return lowbit::narrow(*this, d, index, 1).squeeze(d);
}

// ---------------- permute ----------------
namespace {
Tensor permute_kernel(const Tensor& a, const std::vector<int64_t>& perm) {
  const int64_t nd = a.dim();
  Shape out_shape(nd);
  for (int64_t i = 0; i < nd; ++i) out_shape[i] = a.shape()[perm[i]];
  Tensor out = empty(out_shape, a.dtype());
  const auto in_strides = detail::contiguous_strides(a.shape());
  std::vector<int64_t> src_stride(nd);  // stride in the input for each output dim
  for (int64_t i = 0; i < nd; ++i) src_stride[i] = in_strides[perm[i]];
  const int64_t n = a.numel();
  if (n == 0) return out;
  const int64_t inner = nd ? out_shape[nd - 1] : 1;
  const int64_t inner_stride = nd ? src_stride[nd - 1] : 1;
  const int64_t rows = n / std::max<int64_t>(inner, 1);
  const size_t es = element_size(a.dtype());
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* src = reinterpret_cast<const T*>(a.raw_data());
    T* dst = reinterpret_cast<T*>(out.raw_data());
    detail::parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(inner, 1)),
                         [&](int64_t rb, int64_t re) {
                           for (int64_t r = rb; r < re; ++r) {
                             int64_t rem = r, off = 0;
                             for (int64_t i = nd - 2; i >= 0; --i) {
                               off += (rem % out_shape[i]) * src_stride[i];
                               rem /= out_shape[i];
                             }
                             T* d = dst + r * inner;
                             const T* s = src + off;
                             for (int64_t j = 0; j < inner; ++j) d[j] = s[j * inner_stride];
                           }
                         });
  };
  switch (es) {
    case 1: run(uint8_t{}); break;
    case 2: run(uint16_t{}); break;
    case 4: run(uint32_t{}); break;
    default: run(uint64_t{}); break;
  }
  return out;
}
}  // namespace

Tensor permute(const Tensor& a, const std::vector<int64_t>& dims) {
  const int64_t nd = a.dim();
  LOWBIT_CHECK(static_cast<int64_t>(dims.size()) == nd,
               "permute: number of dims in permutation ({}) doesn't match input {} with {} dims", dims.size(),
               shape_str(a.shape()), nd);
  std::vector<int64_t> perm(nd);
  std::vector<bool> seen(nd, false);
  for (int64_t i = 0; i < nd; ++i) {
    perm[i] = wrap_dim(dims[i], nd, "permute");
    LOWBIT_CHECK(!seen[perm[i]], "permute: repeated dim {} in permutation", perm[i]);
    seen[perm[i]] = true;
  }
  bool identity = true;
  for (int64_t i = 0; i < nd; ++i) identity &= perm[i] == i;
  if (identity) return a;
  Tensor out = permute_kernel(a, perm);
  if (detail::any_requires_grad({&a})) {
    std::vector<int64_t> inv(nd);
    for (int64_t i = 0; i < nd; ++i) inv[perm[i]] = i;
    detail::record(out, "PermuteBackward0", {a},
                   [inv](const Tensor& g) { return std::vector<Tensor>{permute(g, inv)}; });
  }
  return out;
}
Tensor transpose(const Tensor& a, int64_t d0, int64_t d1) {
  if (a.dim() == 0) return a;
  d0 = wrap_dim(d0, a.dim(), "transpose");
  d1 = wrap_dim(d1, a.dim(), "transpose");
  std::vector<int64_t> perm(a.dim());
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[d0], perm[d1]);
  return permute(a, perm);
}
Tensor Tensor::transpose(int64_t d0, int64_t d1) const { return lowbit::transpose(*this, d0, d1); }
Tensor Tensor::permute(const std::vector<int64_t>& dims) const { return lowbit::permute(*this, dims); }

// ---------------- cat / stack / split ----------------
Tensor cat(const std::vector<Tensor>& ts, int64_t d) {
  LOWBIT_CHECK(!ts.empty(), "cat: expected a non-empty list of tensors");
  const Tensor& first = ts[0];
  LOWBIT_CHECK(first.dim() > 0, "cat: zero-dimensional tensor (at position 0) cannot be concatenated");
  d = wrap_dim(d, first.dim(), "cat");
  Shape out_shape = first.shape();
  out_shape[d] = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const Tensor& t = ts[i];
    LOWBIT_CHECK(t.defined(), "cat: tensor at position {} is undefined", i);
    LOWBIT_CHECK(t.dtype() == first.dtype(),
                 "cat: expected all tensors to have dtype {}, but tensor at position {} has {}",
                 dtype_name(first.dtype()), i, dtype_name(t.dtype()));
    LOWBIT_CHECK(t.dim() == first.dim(),
                 "cat: tensors must have the same number of dimensions: got {} (position 0) and {} (position {})",
                 shape_str(first.shape()), shape_str(t.shape()), i);
    for (int64_t k = 0; k < t.dim(); ++k)
      LOWBIT_CHECK(k == d || t.shape()[k] == first.shape()[k],
                   "cat: sizes of tensors must match except in dimension {}: expected size {} but got size {} for "
                   "tensor number {} (shapes {} and {})",
                   d, first.shape()[k], t.shape()[k], i, shape_str(first.shape()), shape_str(t.shape()));
    out_shape[d] += t.shape()[d];
  }
  Tensor out = empty(out_shape, first.dtype());
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= out_shape[i];
  for (size_t i = d + 1; i < out_shape.size(); ++i) inner *= out_shape[i];
  const size_t es = element_size(first.dtype());
  const size_t out_row = static_cast<size_t>(out_shape[d] * inner) * es;
  size_t col = 0;
  std::vector<int64_t> sizes;
  for (const Tensor& t : ts) {
    const size_t row = static_cast<size_t>(t.shape()[d] * inner) * es;
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(static_cast<char*>(out.raw_data()) + o * out_row + col,
                  static_cast<const char*>(t.raw_data()) + o * row, row);
    col += row;
    sizes.push_back(t.shape()[d]);
  }
  if (detail::any_requires_grad(ts)) {
    detail::record(out, "CatBackward0", ts, [sizes, d](const Tensor& g) { return split(g, sizes, d); });
  }
  return out;
}
Tensor stack(const std::vector<Tensor>& ts, int64_t d) {
  LOWBIT_CHECK(!ts.empty(), "stack: expected a non-empty list of tensors");
  d = wrap_dim(d, ts[0].dim() + 1, "stack");
  std::vector<Tensor> us;
  for (size_t i = 0; i < ts.size(); ++i) {
    LOWBIT_CHECK(ts[i].shape() == ts[0].shape(),
                 "stack: expects each tensor to be equal size, but got {} at entry 0 and {} at entry {}",
                 shape_str(ts[0].shape()), shape_str(ts[i].shape()), i);
    us.push_back(ts[i].unsqueeze(d));
  }
  return cat(us, d);
}
std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int64_t d) {
  LOWBIT_CHECK(a.dim() > 0, "split: cannot split a 0-dim tensor");
  d = wrap_dim(d, a.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    LOWBIT_CHECK(s >= 0, "split: split sizes must be non-negative, got {}", s);
    total += s;
  }
  LOWBIT_CHECK(total == a.shape()[d], "split: split sizes sum to {} but input {} has size {} at dimension {}", total,
               shape_str(a.shape()), a.shape()[d], d);
  std::vector<Tensor> out;
  int64_t start = 0;
  for (int64_t s : sizes) {
    out.push_back(narrow(a, d, start, s));
    start += s;
  }
  return out;
}
std::vector<Tensor> split(const Tensor& a, int64_t split_size, int64_t d) {
  LOWBIT_CHECK(split_size > 0, "split: split_size must be positive, got {}", split_size);
  LOWBIT_CHECK(a.dim() > 0, "split: cannot split a 0-dim tensor");
  const int64_t n = a.shape()[wrap_dim(d, a.dim(), "split")];
  std::vector<int64_t> sizes;
  for (int64_t s = 0; s < n; s += split_size) sizes.push_back(std::min(split_size, n - s));
  if (sizes.empty()) sizes.push_back(0);
  return split(a, sizes, d);
}
std::vector<Tensor> chunk(const Tensor& a, int64_t chunks, int64_t d) {
  LOWBIT_CHECK(chunks > 0, "chunk: number of chunks must be positive, got {}", chunks);
  LOWBIT_CHECK(a.dim() > 0, "chunk: cannot chunk a 0-dim tensor");
  const int64_t n = a.shape()[wrap_dim(d, a.dim(), "chunk")];
  return split(a, std::max<int64_t>(1, (n + chunks - 1) / chunks), d);
}

// ---------------- index_select / embedding ----------------
namespace {
std::vector<int64_t> read_indices(const Tensor& index, int64_t bound, const char* op) {
  LOWBIT_CHECK(index.dtype() == kInt64 || index.dtype() == kInt32, "{}: index must be int64 or int32, got {} {}", op,
               dtype_name(index.dtype()), shape_str(index.shape()));
  std::vector<int64_t> idx(index.numel());
  for (int64_t i = 0; i < index.numel(); ++i) {
    idx[i] = index.dtype() == kInt64 ? index.data_ptr<int64_t>()[i] : index.data_ptr<int32_t>()[i];
    LOWBIT_CHECK(idx[i] >= 0 && idx[i] < bound, "{}: index {} at position {} is out of range for size {}", op, idx[i],
                 i, bound);
  }
  return idx;
}
// out[o, i, :] = a[o, idx[i], :] ; backward scatters-adds.
template <typename T>
void gather_rows(const T* src, T* dst, const std::vector<int64_t>& idx, int64_t outer, int64_t size, int64_t inner) {
  const int64_t m = static_cast<int64_t>(idx.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(dst + (o * m + i) * inner, src + (o * size + idx[i]) * inner, sizeof(T) * inner);
}
template <typename T>
void scatter_add_rows(const T* g, T* dst, const std::vector<int64_t>& idx, int64_t outer, int64_t size, int64_t inner) {
  const int64_t m = static_cast<int64_t>(idx.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < m; ++i) {
      T* d = dst + (o * size + idx[i]) * inner;
      const T* s = g + (o * m + i) * inner;
      for (int64_t j = 0; j < inner; ++j) d[j] += s[j];
    }
}
Tensor index_rows(const Tensor& a, int64_t d, const std::vector<int64_t>& idx, const char* name,
                  const Shape& out_shape) {
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= a.shape()[i];
  for (size_t i = d + 1; i < a.shape().size(); ++i) inner *= a.shape()[i];
  const int64_t size = a.shape()[d];
  Tensor out = empty(out_shape, a.dtype());
  LOWBIT_DISPATCH_BYTES(a.dtype(), T,
                        gather_rows<T>(reinterpret_cast<const T*>(a.raw_data()), reinterpret_cast<T*>(out.raw_data()),
                                       idx, outer, size, inner));
  if (detail::any_requires_grad({&a})) {
    const Shape in_shape = a.shape();
    detail::record(out, name, {a}, [in_shape, idx, outer, size, inner](const Tensor& g_in) {
      // bfloat16 (a bf16 embedding table): summed in float32, rounded once
      const Tensor g = detail::upcast(g_in);
      Tensor full = zeros(in_shape, g.dtype());
      LOWBIT_DISPATCH_FLOAT(g.dtype(), T,
                            scatter_add_rows<T>(g.data_ptr<T>(), full.data_ptr<T>(), idx, outer, size, inner));
      return std::vector<Tensor>{g_in.dtype() == kBFloat16 ? full.to(kBFloat16) : full};
    });
  }
  return out;
}
}  // namespace

Tensor index_select(const Tensor& a, int64_t d, const Tensor& index) {
  LOWBIT_CHECK(a.dim() > 0, "index_select: input must have at least one dimension");
  LOWBIT_CHECK(index.dim() <= 1, "index_select: index must be 1-D, got shape {}", shape_str(index.shape()));
  d = wrap_dim(d, a.dim(), "index_select");
  auto idx = read_indices(index, a.shape()[d], "index_select");
  Shape out_shape = a.shape();
  out_shape[d] = static_cast<int64_t>(idx.size());
  return index_rows(a, d, idx, "IndexSelectBackward0", out_shape);
}

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  LOWBIT_CHECK(weight.dim() == 2, "embedding: weight must be 2-D (num_embeddings, embedding_dim), got {}",
               shape_str(weight.shape()));
  auto idx = read_indices(indices, weight.shape()[0], "embedding");
  Shape out_shape = indices.shape();
  out_shape.push_back(weight.shape()[1]);
  Shape flat = {static_cast<int64_t>(idx.size()), weight.shape()[1]};
  return index_rows(weight, 0, idx, "EmbeddingBackward0", flat).reshape(out_shape);
}

}  // namespace lowbit
