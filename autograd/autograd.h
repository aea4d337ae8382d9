// Define-by-run reverse-mode autograd: each differentiable op records a Node holding what its
// backward needs; Tensor::backward walks the graph in reverse topological order and
// accumulates into the leaves' .grad. Backward formulas run with grad mode off.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/autograd/tensor.h"

namespace lowbit {

struct Edge {
  std::shared_ptr<Node> node;  // null: the input needs no gradient
};

/// A node of the backward graph with exactly one output (the tensor that recorded it).
struct Node {
  virtual ~Node() = default;
  /// grads for each input edge (undefined tensors allowed for inputs that need none).
  virtual std::vector<Tensor> apply(const Tensor& grad_output) = 0;
  /// Drops saved tensors after a backward without retain_graph.
  virtual void release() {}
  virtual std::string name() const = 0;
  std::vector<Edge> next;
  std::vector<std::weak_ptr<TensorImpl>> retained;  // non-leaf outputs that asked retain_grad()
  bool released = false;
};

/// Generic node whose backward is a closure (saved tensors captured detached).
struct LambdaNode : Node {
  using Fn = std::function<std::vector<Tensor>(const Tensor&)>;
  LambdaNode(std::string name, Fn fn) : name_(std::move(name)), fn_(std::move(fn)) {}
  std::vector<Tensor> apply(const Tensor& grad_output) override;
  void release() override {
    fn_ = nullptr;
    released = true;
  }
  std::string name() const override { return name_; }
  /// dtype of each input: gradients are cast to it (e.g. float32 grads of a bfloat16 input)
  std::vector<DType> input_dtypes;

 private:
  std::string name_;
  Fn fn_;
};

/// Whether ops record history on this thread.
bool grad_mode_enabled();
void set_grad_mode(bool enabled);

/// Disables recording for its scope (like torch.no_grad()).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(grad_mode_enabled()) { set_grad_mode(false); }
  ~NoGradGuard() { set_grad_mode(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

/// Computes and returns d(outputs)/d(inputs) without touching .grad (like torch.autograd.grad).
std::vector<Tensor> grad(const Tensor& output, const std::vector<Tensor>& inputs, const Tensor& grad_output = Tensor(),
                         bool retain_graph = false);

namespace detail {
/// True when grad mode is on and any input requires grad.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);
bool any_requires_grad(const std::vector<Tensor>& inputs);
/// Records `out` as produced by a node named `name` over `inputs` with backward `fn`.
/// fn receives grad_output and returns one gradient per input (undefined = none).
void record(Tensor& out, const char* name, const std::vector<Tensor>& inputs, LambdaNode::Fn fn);
/// Edge to the node that will receive the gradient of t.
Edge gradient_edge(const Tensor& t);
/// Sums grad over broadcast dims so it has `shape`.
Tensor sum_to(const Tensor& grad, const Shape& shape);
}  // namespace detail

/// Context for custom functions: save tensors in forward, read them in backward.
struct AutogradContext {
  void save_for_backward(std::vector<Tensor> tensors);
  const std::vector<Tensor>& get_saved_variables() const { return saved_; }
  /// Free-form values a function wants to keep (shapes, flags, scalars).
  std::vector<double> saved_data;
  std::vector<bool> needs_input_grad;

 private:
  std::vector<Tensor> saved_;
};

/// User-defined differentiable function (CRTP), e.g. a straight-through estimator:
///   struct RoundSTE : Function<RoundSTE> {
///     static Tensor forward(AutogradContext* ctx, const Tensor& x) { return round(x); }
///     static std::vector<Tensor> backward(AutogradContext* ctx, const Tensor& g) { return {g}; }
///   };
///   Tensor y = RoundSTE::apply(x);
/// forward runs with grad mode off; backward returns one gradient per Tensor argument of
/// forward, in order (undefined Tensor for "no gradient"); non-Tensor arguments are passed through.
template <typename Derived>
struct Function {
  template <typename... Args>
  static Tensor apply(Args&&... args) {
    auto ctx = std::make_shared<AutogradContext>();
    std::vector<Tensor> tensor_inputs;
    (collect(tensor_inputs, args), ...);
    const bool needs = detail::any_requires_grad(tensor_inputs);
    for (const auto& t : tensor_inputs) ctx->needs_input_grad.push_back(t.defined() && t.requires_grad());
    Tensor out;
    {
      NoGradGuard guard;
      out = Derived::forward(ctx.get(), std::forward<Args>(args)...);
    }
    if (needs) {
      out = out.detach();
      const size_t n = tensor_inputs.size();
      detail::record(out, name(), tensor_inputs, [ctx, n](const Tensor& g) {
        std::vector<Tensor> grads = Derived::backward(ctx.get(), g);
        LOWBIT_CHECK(grads.size() == n, "{}::backward returned {} gradients; forward took {} Tensor arguments", name(),
                     grads.size(), n);
        return grads;
      });
    }
    return out;
  }
  static const char* name() { return "CustomFunctionBackward"; }

 private:
  template <typename A>
  static void collect(std::vector<Tensor>& out, const A& a) {
    if constexpr (std::is_same_v<std::decay_t<A>, Tensor>) out.push_back(a);
  }
};

}  // namespace lowbit
