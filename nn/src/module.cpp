#include "lowbit/nn/module.h"

#include <map>
#include <ostream>
#include <set>
#include <sstream>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"

namespace lowbit::nn {

namespace {
void check_name(const std::string& name, const char* what) {
  LOWBIT_CHECK(!name.empty() && name.find_first_of("./") == std::string::npos,
               "{} name '{}' must be non-empty and contain no '.' or '/'", what, name);
}
std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream ss(path);
  std::string p;
  while (std::getline(ss, p, '.')) parts.push_back(p);
  return parts;
}
}  // namespace

void assign_tensor(const Tensor& dst, const Tensor& src) {
  TensorImpl* d = dst.impl();
  d->storage = src.impl()->storage;
  d->offset = src.impl()->offset;
  d->shape = src.shape();
  d->numel = src.numel();
  d->dtype = src.dtype();
  d->grad = Tensor();
}

Tensor Module::forward(const Tensor&) {
  throw Error(fmt::format("{}: this module has no single-tensor forward", type_name()));
}

Tensor Module::register_parameter(const std::string& name, Tensor t, bool requires_grad) {
  check_name(name, "parameter");
  for (auto& [n, _] : params_) LOWBIT_CHECK(n != name, "{}: parameter '{}' already registered", type_name(), name);
  if (t.defined() && requires_grad) t.requires_grad_(true);
  params_.emplace_back(name, t);
  return t;
}
void Module::replace_parameter(const std::string& name, Tensor t) {
  for (auto& [n, p] : params_)
    if (n == name) {
      p = std::move(t);
      return;
    }
  throw Error(fmt::format("{}: no parameter named '{}'", type_name(), name));
}
Tensor Module::register_buffer(const std::string& name, Tensor t) {
  check_name(name, "buffer");
  for (auto& [n, _] : buffers_) LOWBIT_CHECK(n != name, "{}: buffer '{}' already registered", type_name(), name);
  buffers_.emplace_back(name, t);
  return t;
}
void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  check_name(name, "module");
  LOWBIT_CHECK(m != nullptr, "{}: submodule '{}' is null", type_name(), name);
  for (auto& [n, _] : children_) LOWBIT_CHECK(n != name, "{}: submodule '{}' already registered", type_name(), name);
  children_.emplace_back(name, std::move(m));
}

void Module::collect(const std::string& prefix, bool recurse, bool params, NamedTensors& out) const {
  for (const auto& [n, t] : params ? params_ : buffers_)
    if (t.defined()) out.emplace_back(prefix + n, t);
  if (!recurse) return;
  for (const auto& [n, c] : children_) c->collect(prefix + n + ".", true, params, out);
}
NamedTensors Module::named_parameters(bool recurse) const {
  NamedTensors out;
  collect("", recurse, true, out);
  // a tied parameter appears once, under its first name (as in PyTorch)
  NamedTensors dedup;
  std::set<const TensorImpl*> seen;
  for (auto& p : out)
    if (seen.insert(p.second.impl()).second) dedup.push_back(p);
  return dedup;
}
std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [_, t] : named_parameters(recurse)) out.push_back(t);
  return out;
}
NamedTensors Module::named_buffers(bool recurse) const {
  NamedTensors out;
  collect("", recurse, false, out);
  return out;
}
std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules() {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out{{"", shared_from_this()}};
  for (auto& [n, c] : children_)
    for (auto& [cn, cm] : c->named_modules()) out.emplace_back(cn.empty() ? n : n + "." + cn, cm);
  return out;
}
std::vector<std::shared_ptr<Module>> Module::children() const {
  std::vector<std::shared_ptr<Module>> out;
  for (auto& [_, c] : children_) out.push_back(c);
  return out;
}

std::shared_ptr<Module> Module::get_submodule(const std::string& path) {
  if (path.empty()) return shared_from_this();
  std::shared_ptr<Module> cur = shared_from_this();
  std::string walked;
  for (const auto& part : split_path(path)) {
    std::shared_ptr<Module> next;
    for (auto& [n, c] : cur->children_)
      if (n == part) next = c;
    LOWBIT_CHECK(next != nullptr, "get_submodule: {} has no submodule '{}' (looking up '{}')",
                 walked.empty() ? cur->type_name() : walked, part, path);
    walked = walked.empty() ? part : walked + "." + part;
    cur = next;
  }
  return cur;
}
void Module::replace_module(const std::string& path, std::shared_ptr<Module> replacement) {
  LOWBIT_CHECK(!path.empty(), "replace_module: path must name a submodule, got ''");
  LOWBIT_CHECK(replacement != nullptr, "replace_module: replacement for '{}' is null", path);
  const auto dot = path.rfind('.');
  auto parent = dot == std::string::npos ? shared_from_this() : get_submodule(path.substr(0, dot));
  const std::string leaf = dot == std::string::npos ? path : path.substr(dot + 1);
  for (auto& [n, c] : parent->children_)
    if (n == leaf) {
      c = std::move(replacement);
      parent->on_child_replaced(leaf, c);
      return;
    }
  throw Error(fmt::format("replace_module: no submodule named '{}'", path));
}
Module& Module::child(const std::string& name) const {
  for (const auto& [n, c] : children_)
    if (n == name) return *c;
  throw Error(fmt::format("{}: no child named '{}'", type_name(), name));
}
void Module::apply(const std::function<void(Module&)>& fn) {
  for (auto& [_, c] : children_) c->apply(fn);
  fn(*this);
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [_, c] : children_) c->train(on);
}
void Module::zero_grad(bool set_to_none) {
  for (auto& p : parameters()) {
    if (set_to_none || !p.grad().defined())
      p.set_grad(Tensor());
    else
      p.grad().zero_();
  }
}
void Module::to(DType dtype) {
  LOWBIT_CHECK(is_floating(dtype), "Module::to: target dtype must be floating, got {}", dtype_name(dtype));
  NoGradGuard ng;
  NamedTensors all;
  collect("", true, true, all);
  collect("", true, false, all);
  std::set<const TensorImpl*> done;
  for (auto& [_, t] : all)
    if (is_floating(t.dtype()) && t.dtype() != dtype && done.insert(t.impl()).second)
      assign_tensor(t, t.detach().to(dtype));
}

NamedTensors Module::state_dict() const {
  NamedTensors out;
  std::function<void(const Module&, const std::string&)> walk = [&](const Module& m, const std::string& prefix) {
    for (const auto& [n, t] : m.params_)
      if (t.defined()) out.emplace_back(prefix + n, t);
    for (const auto& [n, t] : m.buffers_)
      if (t.defined()) out.emplace_back(prefix + n, t);
    for (const auto& [n, c] : m.children_) walk(*c, prefix + n + ".");
  };
  walk(*this, "");
  return out;
}

LoadResult Module::load_state_dict(const NamedTensors& state, bool strict) {
  LoadResult r;
  const NamedTensors mine = state_dict();
  std::map<std::string, const Tensor*> given;
  for (const auto& [k, t] : state) given[k] = &t;
  std::set<std::string> known;
  std::vector<std::pair<Tensor, Tensor>> to_copy;
  for (const auto& [k, t] : mine) {
    known.insert(k);
    auto it = given.find(k);
    if (it == given.end()) {
      r.missing_keys.push_back(k);
      continue;
    }
    const Tensor& src = *it->second;
    if (!src.defined() || src.shape() != t.shape()) {
      r.shape_mismatches.push_back(
          fmt::format("{}: copying a param with shape {} from checkpoint, the shape in current model is {}", k,
                      src.defined() ? shape_str(src.shape()) : "undefined", shape_str(t.shape())));
      continue;
    }
    to_copy.emplace_back(t, src);
  }
  for (const auto& [k, _] : state)
    if (!known.count(k)) r.unexpected_keys.push_back(k);
  if (strict && (!r.missing_keys.empty() || !r.unexpected_keys.empty() || !r.shape_mismatches.empty())) {
    std::string msg = fmt::format("Error(s) in loading state_dict for {}:", type_name());
    auto join = [](const std::vector<std::string>& v) {
      std::string s;
      for (size_t i = 0; i < v.size(); ++i) s += (i ? ", \"" : "\"") + v[i] + "\"";
      return s;
    };
    if (!r.missing_keys.empty()) msg += "\n\tMissing key(s) in state_dict: " + join(r.missing_keys) + ".";
    if (!r.unexpected_keys.empty()) msg += "\n\tUnexpected key(s) in state_dict: " + join(r.unexpected_keys) + ".";
    for (const auto& m : r.shape_mismatches) msg += "\n\tsize mismatch for " + m + ".";
    throw Error(msg);  // nothing was copied: all-or-nothing
  }
  NoGradGuard ng;
  for (auto& [dst, src] : to_copy) dst.copy_(src);
  return r;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& p : parameters()) n += p.numel();
  return n;
}

int64_t Module::num_bytes() const {
  int64_t b = 0;
  for (const auto& [_, t] : state_dict()) b += static_cast<int64_t>(t.nbytes());
  return b;
}

std::string Module::to_string() const {
  const std::string extra = extra_repr();
  if (children_.empty()) return type_name() + "(" + extra + ")";
  std::string s = type_name() + "(\n";
  if (!extra.empty()) s += "  " + extra + "\n";
  for (const auto& [n, c] : children_) {
    std::string child = c->to_string();
    // indent continuation lines by two spaces, like PyTorch's _addindent
    std::string indented;
    for (char ch : child) {
      indented += ch;
      if (ch == '\n') indented += "  ";
    }
    s += "  (" + n + "): " + indented + "\n";
  }
  return s + ")";
}

std::ostream& operator<<(std::ostream& os, const Module& m) { return os << m.to_string(); }

}  // namespace lowbit::nn
