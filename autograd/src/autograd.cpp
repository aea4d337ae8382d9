// The backward engine: collects the graph reachable from the root, then runs nodes in reverse
// topological order (Kahn's algorithm on dependency counts), accumulating input gradients.
#include "lowbit/autograd/autograd.h"

#include <algorithm>
#include <atomic>
#include <unordered_map>
#include <unordered_set>

#include "internal.h"

namespace lowbit {

namespace {
thread_local bool g_grad_mode = true;

// Leaf gradient sink: holds the leaf strongly (the leaf holds this node weakly).
struct AccumulateGrad : Node {
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf) : leaf_(std::move(leaf)) {}
  std::vector<Tensor> apply(const Tensor& g) override {
    Tensor& cur = leaf_->grad;
    if (!cur.defined()) {
      // take the buffer when nothing else can see it (like PyTorch); otherwise copy, since the
      // incoming gradient may alias a saved tensor or another gradient
      const bool unique = g.impl_ptr().use_count() == 1 && g.impl()->storage.use_count() == 1 && !g.requires_grad();
      cur = unique ? g.reshape(leaf_->shape) : g.reshape(leaf_->shape).clone();
      if (cur.dtype() != leaf_->dtype) cur = cur.to(leaf_->dtype);
    } else {
      Tensor add = g.dtype() == cur.dtype() ? g : g.to(cur.dtype());
      cur = lowbit::add(cur, add);
    }
    if (!leaf_->post_accumulate_hooks.empty()) {
      const Tensor leaf(leaf_);
      // a copy: a hook may register or remove hooks
      const auto hooks = leaf_->post_accumulate_hooks;
      for (const auto& [id, hook] : hooks) hook(leaf);
    }
    return {};
  }
  std::string name() const override { return "AccumulateGrad"; }
  std::shared_ptr<TensorImpl> leaf_;
};
}  // namespace

bool grad_mode_enabled() { return g_grad_mode; }
void set_grad_mode(bool enabled) { g_grad_mode = enabled; }

std::vector<Tensor> LambdaNode::apply(const Tensor& grad_output) {
  LOWBIT_CHECK(!released && fn_,
               "Trying to backward through the graph a second time (or directly access saved tensors after they have "
               "already been freed) "
               "at node {}. Specify retain_graph=true when calling backward the first time.",
               name_);
  std::vector<Tensor> grads = fn_(grad_output);
  for (size_t i = 0; i < grads.size() && i < input_dtypes.size(); ++i)
    if (grads[i].defined() && grads[i].dtype() != input_dtypes[i]) grads[i] = grads[i].to(input_dtypes[i]);
  return grads;
}

void AutogradContext::save_for_backward(std::vector<Tensor> tensors) {
  saved_.clear();
  for (auto& t : tensors) saved_.push_back(t.defined() ? t.detach() : t);
}

namespace detail {
bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_mode) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}
bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_mode) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Edge gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return Edge{};
  TensorImpl* impl = t.impl();
  if (impl->grad_fn) return Edge{impl->grad_fn};
  std::shared_ptr<Node> acc = impl->grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(t.impl_ptr());
    impl->grad_accumulator = acc;
  }
  return Edge{acc};
}

void record(Tensor& out, const char* name, const std::vector<Tensor>& inputs, LambdaNode::Fn fn) {
  auto node = std::make_shared<LambdaNode>(name, std::move(fn));
  node->next.reserve(inputs.size());
  for (const Tensor& t : inputs) {
    node->next.push_back(gradient_edge(t));
    node->input_dtypes.push_back(t.defined() ? t.dtype() : DType::Float32);
  }
  // out may be a view sharing storage with an input; give it its own impl so history is its own
  if (out.impl()->grad_fn || out.impl()->requires_grad) out = out.detach();
  out.impl()->grad_fn = std::move(node);
  out.impl()->requires_grad = true;
}

Tensor sum_to(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  const int64_t lead = grad.dim() - static_cast<int64_t>(shape.size());
  LOWBIT_ASSERT(lead >= 0);
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < grad.dim(); ++i) {
    if (i < lead || (shape[i - lead] == 1 && grad.shape()[i] != 1)) dims.push_back(i);
  }
  Tensor r = dims.empty() ? grad : sum(grad, dims, true);
  return r.reshape(shape);
}
}  // namespace detail

// ---------------- Tensor autograd members ----------------
bool Tensor::requires_grad() const { return defined() && impl_->requires_grad; }
Tensor& Tensor::requires_grad_(bool rg) {
  LOWBIT_CHECK(defined(), "requires_grad_: called on an undefined tensor");
  LOWBIT_CHECK(!rg || is_floating(dtype()),
               "requires_grad_: only floating point tensors can require gradients, got dtype {}", dtype_name(dtype()));
  LOWBIT_CHECK(
      is_leaf(),
      "requires_grad_: you can only change requires_grad flags of leaf variables (this tensor was produced by {})",
      grad_fn_name());
  impl_->requires_grad = rg;
  return *this;
}
Tensor Tensor::grad() const { return defined() ? impl_->grad : Tensor(); }
void Tensor::set_grad(const Tensor& g) const {
  LOWBIT_CHECK(defined(), "set_grad: called on an undefined tensor");
  LOWBIT_CHECK(!g.defined() || g.shape() == shape(), "set_grad: assigned grad has shape {} but the tensor has shape {}",
               shape_str(g.shape()), shape_str(shape()));
  impl_->grad = g;
}
bool Tensor::is_leaf() const { return !defined() || impl_->grad_fn == nullptr; }
void Tensor::retain_grad() const {
  LOWBIT_CHECK(requires_grad(), "retain_grad: can't retain_grad on a Tensor that has requires_grad=False");
  if (is_leaf() || impl_->retains_grad) return;
  impl_->retains_grad = true;
  impl_->grad_fn->retained.push_back(impl_);
}
uint64_t Tensor::register_post_accumulate_grad_hook(std::function<void(const Tensor&)> hook) const {
  LOWBIT_CHECK(defined() && is_leaf() && requires_grad(),
               "register_post_accumulate_grad_hook: only leaf tensors that require grad accumulate gradients");
  LOWBIT_CHECK(hook != nullptr, "register_post_accumulate_grad_hook: the hook is empty");
  static std::atomic<uint64_t> next_id{1};
  const uint64_t id = next_id++;
  impl_->post_accumulate_hooks.emplace_back(id, std::move(hook));
  return id;
}
void Tensor::remove_post_accumulate_grad_hook(uint64_t id) const {
  if (!defined()) return;
  auto& h = impl_->post_accumulate_hooks;
  h.erase(std::remove_if(h.begin(), h.end(), [id](const auto& e) { return e.first == id; }), h.end());
}
Tensor Tensor::detach() const {
  LOWBIT_CHECK(defined(), "detach: called on an undefined tensor");
  return detail::make_view(*this, impl_->shape, impl_->offset);
}
std::string Tensor::grad_fn_name() const { return defined() && impl_->grad_fn ? impl_->grad_fn->name() : ""; }
const std::shared_ptr<Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<Node> none;
  return defined() ? impl_->grad_fn : none;
}

namespace {
// Runs backward from root; if `capture` is non-empty, gradients reaching those nodes are
// returned instead of accumulated into leaves.
void run_backward(const Tensor& root, const Tensor& gradient, bool retain_graph,
                  const std::vector<Node*>* capture_nodes, std::vector<Tensor>* captured) {
  LOWBIT_CHECK(root.defined(), "backward: called on an undefined tensor");
  LOWBIT_CHECK(root.requires_grad(),
               "backward: element 0 of tensors does not require grad and does not have a grad_fn "
               "(tensor of shape {} was not produced by differentiable ops on tensors with requires_grad=true)",
               shape_str(root.shape()));
  Tensor g = gradient;
  if (!g.defined()) {
    LOWBIT_CHECK(root.numel() == 1,
                 "backward: grad can be implicitly created only for scalar outputs; got output of shape {} "
                 "(pass a gradient of the same shape)",
                 shape_str(root.shape()));
    g = ones(root.shape(), root.dtype());
  } else {
    LOWBIT_CHECK(g.shape() == root.shape(), "backward: gradient has shape {} but the output has shape {}",
                 shape_str(g.shape()), shape_str(root.shape()));
  }
  NoGradGuard no_grad;
  std::shared_ptr<Node> start = detail::gradient_edge(root).node;
  // dependency counts over the reachable graph
  std::unordered_map<Node*, int> deps;
  std::unordered_set<Node*> seen{start.get()};
  std::vector<Node*> stack{start.get()};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Edge& e : n->next) {
      if (!e.node) continue;
      deps[e.node.get()]++;
      if (seen.insert(e.node.get()).second) stack.push_back(e.node.get());
    }
  }
  std::unordered_map<Node*, Tensor> buffers;
  std::unordered_map<Node*, std::shared_ptr<Node>> keep;  // holds nodes alive while queued
  buffers[start.get()] = g;
  std::vector<std::shared_ptr<Node>> ready{start};
  while (!ready.empty()) {
    std::shared_ptr<Node> node = std::move(ready.back());
    ready.pop_back();
    Tensor grad_out = std::move(buffers[node.get()]);
    buffers.erase(node.get());
    keep.erase(node.get());
    if (capture_nodes) {
      for (size_t i = 0; i < capture_nodes->size(); ++i)
        if ((*capture_nodes)[i] == node.get()) (*captured)[i] = grad_out;
      if (dynamic_cast<AccumulateGrad*>(node.get())) continue;
    }
    for (auto& w : node->retained)
      if (auto impl = w.lock()) {
        impl->grad = impl->grad.defined() ? add(impl->grad, grad_out) : grad_out.clone();
      }
    std::vector<Tensor> grads = node->apply(grad_out);
    if (!retain_graph) node->release();
    LOWBIT_ASSERT(grads.empty() || grads.size() == node->next.size());
    for (size_t i = 0; i < node->next.size(); ++i) {
      Node* nx = node->next[i].node.get();
      if (!nx) continue;
      if (i < grads.size() && grads[i].defined()) {
        Tensor& buf = buffers[nx];
        buf = buf.defined() ? add(buf, grads[i]) : grads[i];
      }
      keep.emplace(nx, node->next[i].node);
      if (--deps[nx] == 0) {
        if (buffers.count(nx) && buffers[nx].defined()) {
          ready.push_back(keep[nx]);
        } else {
          // no gradient flowed here: propagate "nothing" by releasing dependents' counts
          std::vector<std::shared_ptr<Node>> dead{keep[nx]};
          buffers.erase(nx);
          keep.erase(nx);
          while (!dead.empty()) {
            auto d = std::move(dead.back());
            dead.pop_back();
            if (!retain_graph) d->release();
            for (const Edge& e : d->next) {
              if (!e.node) continue;
              keep.emplace(e.node.get(), e.node);
              if (--deps[e.node.get()] == 0) {
                if (buffers.count(e.node.get()) && buffers[e.node.get()].defined())
                  ready.push_back(keep[e.node.get()]);
                else {
                  dead.push_back(keep[e.node.get()]);
                  keep.erase(e.node.get());
                }
              }
            }
          }
        }
      }
    }
  }
}
}  // namespace

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  run_backward(*this, gradient, retain_graph, nullptr, nullptr);
}

std::vector<Tensor> grad(const Tensor& output, const std::vector<Tensor>& inputs, const Tensor& grad_output,
                         bool retain_graph) {
  std::vector<Node*> nodes;
  std::vector<std::shared_ptr<Node>> hold;
  for (size_t i = 0; i < inputs.size(); ++i) {
    LOWBIT_CHECK(inputs[i].requires_grad(), "grad: input {} (shape {}) does not require grad", i,
                 shape_str(inputs[i].shape()));
    hold.push_back(detail::gradient_edge(inputs[i]).node);
    nodes.push_back(hold.back().get());
  }
  std::vector<Tensor> captured(inputs.size());
  run_backward(output, grad_output, retain_graph, &nodes, &captured);
  for (size_t i = 0; i < captured.size(); ++i)
    if (!captured[i].defined()) captured[i] = zeros(inputs[i].shape(), detail::compute_dtype(inputs[i].dtype()));
  return captured;
}

}  // namespace lowbit
