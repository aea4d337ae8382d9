// Tensors: accessors, factories, fills, conversions (the low-precision dtypes through the
// minifloat codec), random fills. The dtype table is in dtype.cpp, the allocator in runtime.cpp.
#include "lowbit/autograd/tensor.h"

#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <unordered_map>

#include "internal.h"
#include "lowbit/autograd/generator.h"
#include "lowbit/autograd/minifloat.h"

namespace lowbit {

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// ---------------- helpers ----------------
namespace detail {
int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  const int64_t lo = ndim == 0 ? -1 : -ndim, hi = ndim == 0 ? 0 : ndim - 1;
  LOWBIT_CHECK(dim >= lo && dim <= hi, "{}: dimension out of range (expected to be in range of [{}, {}], but got {})",
               op, lo, hi, dim);
  return dim < 0 ? dim + std::max<int64_t>(ndim, 1) : dim;
}
void check_shape(const Shape& shape, const char* op) {
  LOWBIT_CHECK(shape.size() <= 8, "{}: at most 8 dimensions are supported, got shape {}", op, shape_str(shape));
  for (int64_t s : shape) LOWBIT_CHECK(s >= 0, "{}: negative dimension in shape {}", op, shape_str(shape));
}
Tensor make_view(const Tensor& t, const Shape& shape, size_t byte_offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = t.impl()->storage;
  impl->offset = byte_offset;
  impl->shape = shape;
  impl->numel = numel_of(shape);
  impl->dtype = t.dtype();
  return Tensor(impl);
}
std::string desc(const Tensor& t) { return fmt::format("{} {}", shape_str(t.shape()), dtype_name(t.dtype())); }
std::vector<int64_t> contiguous_strides(const Shape& shape) {
  std::vector<int64_t> st(shape.size(), 1);
  for (int64_t i = static_cast<int64_t>(shape.size()) - 2; i >= 0; --i) st[i] = st[i + 1] * shape[i + 1];
  return st;
}
}  // namespace detail

static void check_defined(const Tensor& t, const char* what) {
  LOWBIT_CHECK(t.defined(), "{}: called on an undefined tensor", what);
}

const Shape& Tensor::shape() const {
  check_defined(*this, "shape");
  return impl_->shape;
}
int64_t Tensor::dim() const {
  check_defined(*this, "dim");
  return static_cast<int64_t>(impl_->shape.size());
}
int64_t Tensor::size(int64_t d) const {
  check_defined(*this, "size");
  LOWBIT_CHECK(dim() > 0, "size: tensor of shape [] has no dimensions");
  return impl_->shape[detail::wrap_dim(d, dim(), "size")];
}
int64_t Tensor::numel() const {
  check_defined(*this, "numel");
  return impl_->numel;
}
DType Tensor::dtype() const {
  check_defined(*this, "dtype");
  return impl_->dtype;
}
void* Tensor::raw_data() const {
  check_defined(*this, "data_ptr");
  return static_cast<char*>(impl_->storage->data) + impl_->offset;
}
template <typename T>
T* Tensor::data_ptr() const {
  check_defined(*this, "data_ptr");
  LOWBIT_CHECK(dtype_of<T>::value == impl_->dtype, "data_ptr: tensor has dtype {} but data_ptr<{}> was requested",
               dtype_name(impl_->dtype), dtype_name(dtype_of<T>::value));
  return reinterpret_cast<T*>(raw_data());
}
template <typename T>
T Tensor::item() const {
  check_defined(*this, "item");
  LOWBIT_CHECK(numel() == 1, "item: a Tensor with {} elements (shape {}) cannot be converted to a scalar", numel(),
               shape_str(shape()));
  T out{};
  if (is_low_precision(dtype())) return static_cast<T>(to(kFloat32).data_ptr<float>()[0]);
  LOWBIT_DISPATCH_ALL(
      dtype(), S, out = static_cast<T>(static_cast<double>(static_cast<S>(*reinterpret_cast<const S*>(raw_data())))));
  return out;
}
#define LOWBIT_INSTANTIATE(T)              \
  template T* Tensor::data_ptr<T>() const; \
  template T Tensor::item<T>() const;
LOWBIT_INSTANTIATE(float)
LOWBIT_INSTANTIATE(double)
LOWBIT_INSTANTIATE(int8_t)
LOWBIT_INSTANTIATE(uint8_t)
LOWBIT_INSTANTIATE(int32_t)
LOWBIT_INSTANTIATE(int64_t)
LOWBIT_INSTANTIATE(bool)
template BFloat16* Tensor::data_ptr<BFloat16>() const;
#undef LOWBIT_INSTANTIATE

bool Tensor::is_alias_of(const Tensor& o) const {
  return defined() && o.defined() && impl_->storage == o.impl_->storage;
}

// ---------------- factories ----------------
Tensor empty(const Shape& shape, DType dtype) {
  detail::check_shape(shape, "empty");
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape;
  impl->numel = detail::numel_of(shape);
  impl->dtype = dtype;
  impl->storage = std::make_shared<Storage>(static_cast<size_t>(impl->numel) * element_size(dtype));
  return Tensor(impl);
}
Tensor full(const Shape& shape, double value, DType dtype) {
  Tensor t = empty(shape, dtype);
  t.fill_(value);
  return t;
}
Tensor zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  if (t.numel()) std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}
Tensor ones(const Shape& shape, DType dtype) { return full(shape, 1.0, dtype); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.dtype()); }
Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.dtype()); }
Tensor scalar_tensor(double value, DType dtype) { return full({}, value, dtype); }

Tensor arange(double end, DType dtype) { return arange(0.0, end, 1.0, dtype); }
Tensor arange(double start, double end, double step, DType dtype) {
  LOWBIT_CHECK(step != 0.0, "arange: step must be nonzero");
  LOWBIT_CHECK((end - start) / step >= 0 || end == start,
               "arange: upper bound and larger bound inconsistent with step sign (start={}, end={}, step={})", start,
               end, step);
  const int64_t n = static_cast<int64_t>(std::ceil((end - start) / step));
  Tensor t = empty({std::max<int64_t>(n, 0)}, dtype);
  LOWBIT_DISPATCH_ALL(dtype, T, {
    T* p = t.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(start + static_cast<double>(i) * step);
  });
  return t;
}

template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape_in) {
  Shape shape = shape_in.empty() ? Shape{static_cast<int64_t>(values.size())} : shape_in;
  if (shape_in.empty() && values.size() == 1 && false) shape = {};
  LOWBIT_CHECK(detail::numel_of(shape) == static_cast<int64_t>(values.size()),
               "from_vector: {} values cannot fill a tensor of shape {} ({} elements)", values.size(), shape_str(shape),
               detail::numel_of(shape));
  Tensor t = empty(shape, dtype_of<T>::value);
  std::copy(values.begin(), values.end(), t.data_ptr<T>());
  return t;
}
template Tensor from_vector<float>(const std::vector<float>&, const Shape&);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&);
template Tensor from_vector<int8_t>(const std::vector<int8_t>&, const Shape&);
template Tensor from_vector<uint8_t>(const std::vector<uint8_t>&, const Shape&);
template Tensor from_vector<int32_t>(const std::vector<int32_t>&, const Shape&);
template Tensor from_vector<int64_t>(const std::vector<int64_t>&, const Shape&);
template <>
Tensor from_vector<bool>(const std::vector<bool>& values, const Shape& shape_in) {
  Shape shape = shape_in.empty() ? Shape{static_cast<int64_t>(values.size())} : shape_in;
  LOWBIT_CHECK(detail::numel_of(shape) == static_cast<int64_t>(values.size()),
               "from_vector: {} values cannot fill a tensor of shape {}", values.size(), shape_str(shape));
  Tensor t = empty(shape, kBool);
  bool* p = t.data_ptr<bool>();
  for (size_t i = 0; i < values.size(); ++i) p[i] = values[i];
  return t;
}

Tensor from_blob(void* data, const Shape& shape, DType dtype, std::function<void(void*)> deleter) {
  detail::check_shape(shape, "from_blob");
  LOWBIT_CHECK(data != nullptr || detail::numel_of(shape) == 0, "from_blob: null data pointer for shape {}",
               shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape;
  impl->numel = detail::numel_of(shape);
  impl->dtype = dtype;
  impl->storage =
      std::make_shared<Storage>(data, static_cast<size_t>(impl->numel) * element_size(dtype), std::move(deleter));
  return Tensor(impl);
}

// ---------------- fills, conversion ----------------
uint64_t Tensor::version() const {
  check_defined(*this, "version");
  return impl_->storage->version;
}

namespace {
template <typename S, typename D>
D convert_one(S s) {
  if constexpr (std::is_same_v<D, BFloat16>) {
    return BFloat16(static_cast<float>(static_cast<double>(s)));
  } else if constexpr (std::is_same_v<S, BFloat16>) {
    return static_cast<D>(static_cast<float>(s));
  } else {
    return static_cast<D>(s);
  }
}
// float32 values of a low-precision tensor: numel() values (float4_e2m1fn_x2: 2 per element)
void decode_low_precision(const Tensor& src, float* out) {
  const auto* c = static_cast<const uint8_t*>(src.raw_data());
  const int64_t n = src.numel();
  if (src.dtype() == kFloat8_e8m0fnu) {
    detail::parallel_for(n, kParallelGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) out[i] = e8m0_decode(c[i]);
    });
  } else if (src.dtype() == kFloat4_e2m1fn_x2) {
    float table[16];
    for (uint32_t k = 0; k < 16; ++k) table[k] = minifloat_decode(kFloat4E2M1FN, k);
    detail::parallel_for(n, kParallelGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        out[2 * i] = table[c[i] & 0x0F];
        out[2 * i + 1] = table[c[i] >> 4];
      }
    });
  } else {
    minifloat_decode_n(*minifloat_spec(src.dtype()), c, out, n);
  }
}
// codes of n float32 values (float4_e2m1fn_x2: n is even, n / 2 bytes), saturating
void encode_low_precision(const float* x, int64_t n, DType d, uint8_t* out) {
  if (d == kFloat8_e8m0fnu) {
    detail::parallel_for(n, kParallelGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) out[i] = static_cast<uint8_t>(e8m0_encode(x[i]));
    });
  } else if (d == kFloat4_e2m1fn_x2) {
    detail::parallel_for(n / 2, kParallelGrain, [&](int64_t b, int64_t e) {
      uint8_t codes[512];
      for (int64_t i = b; i < e; i += 256) {
        const int64_t m = std::min<int64_t>(256, e - i);
        minifloat_encode_n(kFloat4E2M1FN, x + 2 * i, codes, 2 * m, true);
        for (int64_t j = 0; j < m; ++j) out[i + j] = static_cast<uint8_t>(codes[2 * j] | (codes[2 * j + 1] << 4));
      }
    });
  } else {
    const MinifloatSpec& spec = *minifloat_spec(d);
    minifloat_encode_n(spec, x, out, n, true);
    if (spec.has_inf) {  // saturation is for finite values: an infinity the format has stays one
      const uint8_t inf = static_cast<uint8_t>(((1u << spec.exp_bits) - 1) << spec.mant_bits);
      const uint8_t sign = static_cast<uint8_t>(1u << (spec.exp_bits + spec.mant_bits));
      detail::parallel_for(n, kParallelGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
          if (std::isinf(x[i])) out[i] = std::signbit(x[i]) ? static_cast<uint8_t>(sign | inf) : inf;
      });
    }
  }
}
void convert_into(const Tensor& src, const Tensor& dst);
// conversions from or to a low-precision dtype go through float32
void convert_low_precision(const Tensor& src, const Tensor& dst) {
  if (is_low_precision(src.dtype())) {
    const int64_t values = src.numel() * (src.dtype() == kFloat4_e2m1fn_x2 ? 2 : 1);
    Tensor f = empty({values}, kFloat32);
    decode_low_precision(src, f.data_ptr<float>());
    if (is_low_precision(dst.dtype()))
      encode_low_precision(f.data_ptr<float>(), values, dst.dtype(), static_cast<uint8_t*>(dst.raw_data()));
    else
      convert_into(f, detail::make_view(dst, {values}, dst.impl()->offset));
    return;
  }
  const Tensor f = src.dtype() == kFloat32 ? src : src.to(kFloat32);
  encode_low_precision(f.data_ptr<float>(), f.numel(), dst.dtype(), static_cast<uint8_t*>(dst.raw_data()));
}
void convert_into(const Tensor& src, const Tensor& dst) {
  if (is_low_precision(src.dtype()) || is_low_precision(dst.dtype())) return convert_low_precision(src, dst);
  const int64_t n = src.numel();
  LOWBIT_DISPATCH_ALL(src.dtype(), S, {
    const S* s = reinterpret_cast<const S*>(src.raw_data());
    LOWBIT_DISPATCH_ALL(dst.dtype(), D, {
      D* d = reinterpret_cast<D*>(dst.raw_data());
      detail::parallel_for(n, kParallelGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) d[i] = convert_one<S, D>(s[i]);
      });
    });
  });
}
}  // namespace

Tensor& Tensor::fill_(double value) {
  check_defined(*this, "fill_");
  ++impl_->storage->version;
  const int64_t n = numel();
  if (is_low_precision(dtype())) {                                              // one code, repeated
    const float v[2] = {static_cast<float>(value), static_cast<float>(value)};  // x2: both nibbles
    uint8_t code;
    encode_low_precision(v, dtype() == kFloat4_e2m1fn_x2 ? 2 : 1, dtype(), &code);
    if (n) std::memset(raw_data(), code, static_cast<size_t>(n));
    return *this;
  }
  LOWBIT_DISPATCH_ALL(dtype(), T, {
    T* p = reinterpret_cast<T*>(raw_data());
    const T v = static_cast<T>(value);
    detail::parallel_for(n, kParallelGrain, [&](int64_t b, int64_t e) { std::fill(p + b, p + e, v); });
  });
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src) {
  check_defined(*this, "copy_");
  ++impl_->storage->version;
  LOWBIT_CHECK(src.defined() && src.shape() == shape(), "copy_: source {} and destination {} must have the same shape",
               src.defined() ? shape_str(src.shape()) : "undefined", shape_str(shape()));
  if (dtype() == src.dtype()) {
    if (raw_data() != src.raw_data() && nbytes()) std::memmove(raw_data(), src.raw_data(), nbytes());
  } else {
    LOWBIT_CHECK(dtype() != kFloat4_e2m1fn_x2 && src.dtype() != kFloat4_e2m1fn_x2,
                 "copy_: {} holds two values per element, so it cannot be copied to or from {} of the same shape; "
                 "use to()",
                 dtype_name(kFloat4_e2m1fn_x2), dtype_name(dtype() == kFloat4_e2m1fn_x2 ? src.dtype() : dtype()));
    convert_into(src, *this);
  }
  return *this;
}

Tensor Tensor::to(DType d) const {
  check_defined(*this, "to");
  if (d == dtype()) return *this;
  Shape out_shape = shape();
  if (d == kFloat4_e2m1fn_x2 || dtype() == kFloat4_e2m1fn_x2) {
    // pairs along the last dimension: [..., 2n] values <-> [..., n] elements of two codes
    LOWBIT_CHECK(dim() >= 1, "to: {} packs pairs along the last dimension; a 0-dim tensor has none",
                 dtype_name(kFloat4_e2m1fn_x2));
    if (d == kFloat4_e2m1fn_x2) {
      LOWBIT_CHECK(out_shape.back() % 2 == 0,
                   "to: {} packs pairs along the last dimension, which must be even; got shape {}",
                   dtype_name(kFloat4_e2m1fn_x2), shape_str(shape()));
      out_shape.back() /= 2;
    } else {
      out_shape.back() *= 2;
    }
  }
  Tensor out = empty(out_shape, d);
  convert_into(*this, out);
  if (is_floating(d) && is_floating(dtype()) && detail::any_requires_grad({this})) {
    const DType src_dtype = dtype();
    detail::record(out, "ToCopyBackward0", {*this},
                   [src_dtype](const Tensor& g) { return std::vector<Tensor>{g.to(src_dtype)}; });
  }
  return out;
}

Tensor Tensor::clone() const {
  check_defined(*this, "clone");
  Tensor out = empty(shape(), dtype());
  if (nbytes()) std::memcpy(out.raw_data(), raw_data(), nbytes());
  if (detail::any_requires_grad({this}))
    detail::record(out, "CloneBackward0", {*this}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
  return out;
}

Tensor& Tensor::uniform_(double low, double high, Generator* gen) {
  check_defined(*this, "uniform_");
  ++impl_->storage->version;
  LOWBIT_CHECK(is_floating(dtype()), "uniform_: expected a floating tensor, got {}", dtype_name(dtype()));
  LOWBIT_CHECK(low <= high, "uniform_: expects low <= high, got low={} high={}", low, high);
  Generator& g = gen ? *gen : default_generator();
  const uint64_t seed = g.seed(), base = g.reserve(static_cast<uint64_t>(numel()));
  const int64_t n = numel();
  LOWBIT_DISPATCH_ALL(dtype(), T, {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, BFloat16>) {
      T* p = reinterpret_cast<T*>(raw_data());
      detail::parallel_for(n, kParallelGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const double u = Generator::uniform01(seed, base + static_cast<uint64_t>(i));
          p[i] = convert_one<double, T>(low + (high - low) * u);
        }
      });
    }
  });
  return *this;
}

Tensor& Tensor::normal_(double mean, double std, Generator* gen) {
  check_defined(*this, "normal_");
  ++impl_->storage->version;
  LOWBIT_CHECK(is_floating(dtype()), "normal_: expected a floating tensor, got {}", dtype_name(dtype()));
  LOWBIT_CHECK(std >= 0.0, "normal_: expects std >= 0.0, got std={}", std);
  Generator& g = gen ? *gen : default_generator();
  const int64_t n = numel();
  // Box-Muller: element i uses counters 2i and 2i+1.
  const uint64_t seed = g.seed(), base = g.reserve(2 * static_cast<uint64_t>(n));
  LOWBIT_DISPATCH_ALL(dtype(), T, {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, BFloat16>) {
      T* p = reinterpret_cast<T*>(raw_data());
      detail::parallel_for(n, kParallelGrain / 4, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const uint64_t c = base + 2 * static_cast<uint64_t>(i);
          const double u1 = 1.0 - Generator::uniform01(seed, c);  // (0, 1]
          const double u2 = Generator::uniform01(seed, c + 1);
          const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
          p[i] = convert_one<double, T>(mean + std * z);
        }
      });
    }
  });
  return *this;
}

Tensor rand(const Shape& shape, Generator* gen, DType dtype) {
  Tensor t = empty(shape, dtype);
  t.uniform_(0.0, 1.0, gen);
  return t;
}
Tensor randn(const Shape& shape, Generator* gen, DType dtype) {
  Tensor t = empty(shape, dtype);
  t.normal_(0.0, 1.0, gen);
  return t;
}
Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator* gen, DType dtype) {
  LOWBIT_CHECK(low < high, "randint: expects low < high, got low={} high={}", low, high);
  LOWBIT_CHECK(is_integral(dtype) || is_floating(dtype), "randint: dtype {} is not supported", dtype_name(dtype));
  Tensor t = empty(shape, dtype);
  Generator& g = gen ? *gen : default_generator();
  const uint64_t seed = g.seed(), base = g.reserve(static_cast<uint64_t>(t.numel()));
  const uint64_t range = static_cast<uint64_t>(high - low);
  LOWBIT_DISPATCH_ALL(dtype, T, {
    T* p = reinterpret_cast<T*>(t.raw_data());
    for (int64_t i = 0; i < t.numel(); ++i) {
      const uint64_t r = Generator::bits(seed, base + static_cast<uint64_t>(i)) % range;
      p[i] = convert_one<double, T>(static_cast<double>(low + static_cast<int64_t>(r)));
    }
  });
  return t;
}

}  // namespace lowbit
