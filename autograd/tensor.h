// Tensor: a cheap handle to (storage, byte offset, shape, dtype) plus autograd state.
// Storage is contiguous row-major and 64-byte aligned. Views (reshape, view, flatten, squeeze,
// unsqueeze, and narrow/select when the slice is contiguous) share storage with their base.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/autograd/dtype.h"
#include "lowbit/autograd/error.h"

namespace lowbit {

class Generator;
struct Node;
struct TensorImpl;

/// A block of bytes. Owned storage is 64-byte aligned; external storage runs a user deleter.
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  std::function<void(void*)> deleter;
  uint64_t version = 0;    // bumped by in-place writes through Tensor methods (see Tensor::version)
  Storage(size_t nbytes);  // allocates, uninitialized
  Storage(void* external, size_t nbytes, std::function<void(void*)> deleter);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& sizes() const { return shape(); }
  int64_t dim() const;
  /// Size of dimension d; negative d counts from the end.
  int64_t size(int64_t d) const;
  int64_t numel() const;
  DType dtype() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(dtype()); }

  /// Typed pointer to the first element; throws if T does not match dtype().
  template <typename T>
  T* data_ptr() const;
  void* raw_data() const;
  /// Counter of in-place writes to this tensor's storage through copy_, fill_/zero_, uniform_
  /// and normal_ (what load_state_dict uses): caches derived from a tensor compare it. Writes
  /// through data_ptr / raw_data are not counted.
  uint64_t version() const;
  /// The single element of a one-element tensor, converted to T.
  template <typename T>
  T item() const;
  /// Copy converted to dtype (bfloat16: round to nearest even). Same dtype returns *this.
  /// Low-precision dtypes (float8_*, float8_e8m0fnu, float4_e2m1fn_x2): round to nearest even
  /// from float32 (other dtypes pass through float32, as PyTorch's casts do), finite values
  /// beyond the largest saturate to it, NaN stays NaN, an infinity stays one where the format
  /// has it (e5m2) and saturates where it has not; e8m0 follows PyTorch's cast (minifloat.h).
  /// float4_e2m1fn_x2 packs pairs along the last dimension: [..., 2n] values <-> [..., n]
  /// elements, element 2i in the low nibble.
  Tensor to(DType dtype) const;
  /// A copy with its own storage (recorded by autograd).
  Tensor clone() const;
  /// True when this tensor shares storage with other.
  bool is_alias_of(const Tensor& other) const;

  // ---- views and shape ops (recorded by autograd) ----
  Tensor reshape(const Shape& shape) const;  // one dim may be -1
  Tensor view(const Shape& shape) const { return reshape(shape); }
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor squeeze() const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor transpose(int64_t dim0, int64_t dim1) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor t() const { return transpose(0, 1); }

  // ---- autograd ----
  bool requires_grad() const;
  /// Marks a leaf as requiring grad. Throws on non-leaves and on non-floating dtypes.
  Tensor& requires_grad_(bool requires_grad = true);
  /// Accumulated gradient (undefined until a backward reaches this tensor).
  Tensor grad() const;
  void set_grad(const Tensor& grad) const;
  bool is_leaf() const;
  /// Keep .grad for this non-leaf after backward.
  void retain_grad() const;
  /// PyTorch's register_post_accumulate_grad_hook: on a leaf that requires grad, `hook(leaf)`
  /// runs each time a backward has accumulated this leaf's gradient (all of its contributions:
  /// the gradient is final for that backward). Hooks run in registration order on the thread
  /// running the backward; returns an id for remove_post_accumulate_grad_hook.
  uint64_t register_post_accumulate_grad_hook(std::function<void(const Tensor&)> hook) const;
  void remove_post_accumulate_grad_hook(uint64_t id) const;
  /// Same storage, no history, requires_grad = false.
  Tensor detach() const;
  /// Name of the node that produced this tensor ("AddBackward0"), or "" for leaves.
  std::string grad_fn_name() const;
  const std::shared_ptr<Node>& grad_fn() const;
  /// Reverse-mode backward. gradient may be omitted only for one-element tensors.
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false) const;

  // ---- in-place (never recorded; use under NoGradGuard for tensors in a graph) ----
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  /// Copies src (same shape; dtype converted) into this tensor's storage.
  Tensor& copy_(const Tensor& src);
  Tensor& uniform_(double low = 0.0, double high = 1.0, Generator* gen = nullptr);
  Tensor& normal_(double mean = 0.0, double std = 1.0, Generator* gen = nullptr);

  /// PyTorch-style text: tensor([[1., 2.]], dtype=float32); big tensors are summarized.
  std::string to_string() const;

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  size_t offset = 0;  // bytes
  Shape shape;
  int64_t numel = 0;
  DType dtype = DType::Float32;
  // autograd
  bool requires_grad = false;
  bool retains_grad = false;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;
  std::weak_ptr<Node> grad_accumulator;                                                        // leaves only
  std::vector<std::pair<uint64_t, std::function<void(const Tensor&)>>> post_accumulate_hooks;  // leaves only
};

// ---- factories ----
Tensor empty(const Shape& shape, DType dtype = kFloat32);
Tensor zeros(const Shape& shape, DType dtype = kFloat32);
Tensor ones(const Shape& shape, DType dtype = kFloat32);
Tensor full(const Shape& shape, double value, DType dtype = kFloat32);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor empty_like(const Tensor& t);
/// [0, end) and [start, end) with step, like torch.arange (float dtypes use step count ceil((end-start)/step)).
Tensor arange(double end, DType dtype = kInt64);
Tensor arange(double start, double end, double step = 1.0, DType dtype = kInt64);
/// Copies values into a new tensor of the given shape (empty shape: 1-D of values.size()).
template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape = {});
/// Wraps an external buffer without copying; deleter (may be empty) runs when the last view dies.
Tensor from_blob(void* data, const Shape& shape, DType dtype, std::function<void(void*)> deleter = {});
/// Uniform [0,1), standard normal, integers in [low, high): from gen or the default generator.
Tensor rand(const Shape& shape, Generator* gen = nullptr, DType dtype = kFloat32);
Tensor randn(const Shape& shape, Generator* gen = nullptr, DType dtype = kFloat32);
Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator* gen = nullptr, DType dtype = kInt64);
/// Returns cached free blocks of the large-block allocator to the system.
void empty_cache();
/// A 0-dim tensor holding value.
Tensor scalar_tensor(double value, DType dtype = kFloat32);

// ---- internal helpers shared by the op files ----
namespace detail {
int64_t numel_of(const Shape& shape);
/// Wraps a negative dim and checks range; op names the caller in the error.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);
void check_shape(const Shape& shape, const char* op);
/// "[2, 3] float32": a tensor's shape and dtype for error messages.
std::string desc(const Tensor& t);
/// A new tensor viewing t's storage at byte offset with shape (no autograd).
Tensor make_view(const Tensor& t, const Shape& shape, size_t byte_offset);
}  // namespace detail

}  // namespace lowbit
