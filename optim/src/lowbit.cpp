// Low-bit optimizers (optim/lowbit.h).
#include "lowbit/optim/lowbit.h"

#include <fmt/format.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/generator.h"
#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/parallel.h"
#include "lowbit/core/codebook.h"
#include "lowbit/core/stochastic.h"

namespace lowbit::optim {

namespace {
int64_t default_block(StateFormat f) { return f == StateFormat::Int4 ? 128 : 256; }
const char* format_name(StateFormat f) {
  return f == StateFormat::Int8 ? "8bit" : f == StateFormat::Int4 ? "4bit" : f == StateFormat::Fp8 ? "Fp8" : "";
}
Options low_bit_defaults(const LowBitAdamOptions& o, bool decoupled) {
  const double wd = std::isnan(o.weight_decay) ? (decoupled ? 1e-2 : 0.0) : o.weight_decay;
  return {{"lr", o.lr},   {"beta1", o.beta1},   {"beta2", o.beta2},
          {"eps", o.eps}, {"weight_decay", wd}, {"amsgrad", o.amsgrad ? 1.0 : 0.0}};
}
std::string class_name(StateFormat f, bool decoupled) {
  return fmt::format("Adam{}{}", decoupled ? "W" : "", format_name(f));
}
// second moments use the unsigned maps; first moments and momenta the signed ones
bool signed_state(const std::string& s) { return s != "exp_avg_sq" && s != "max_exp_avg_sq"; }
void check_unit(const std::string& opt, const char* what, double v) {
  LOWBIT_CHECK(v >= 0 && v < 1, "{}: invalid {}: {} (must be in [0, 1))", opt, what, v);
}

// Elements per unit of work (whole blocks: one 256-value block, or two of 128; 2048-value units
// measured no faster); the units' states live in stack buffers of this size.
constexpr int64_t kUnit = 256;

// one state of one parameter over [i0, i0 + n) (whole blocks when quantized): dequantized into
// buf, quantized back
struct StateRef {
  const core::Codebook* cb = nullptr;  // Int8 / Int4
  bool fp8 = false, nibbles = false;
  bool floor_positive = false;  // positive values never take code 0 (the map's zero / e4m3's +0)
  Tensor codes, scale, plain;   // quantized, or plain (the parameter's dtype)
  int64_t block = 0;
  void load(int64_t i0, int64_t n, float* buf) const {
    if (plain.defined()) {
      if (plain.dtype() == kFloat32)
        std::memcpy(buf, plain.data_ptr<float>() + i0, static_cast<size_t>(n) * 4);
      else
        for (int64_t i = 0; i < n; ++i)
          buf[i] = BFloat16::to_float(static_cast<const uint16_t*>(plain.raw_data())[i0 + i]);
      return;
    }
    uint8_t c[kUnit];
    const uint8_t* src = codes.data_ptr<uint8_t>();
    const uint8_t* cp = src + i0;
    if (nibbles) {
      core::unpack_nibbles_high_first(src + i0 / 2, c, n);
      cp = c;
    }
    const float* s = scale.data_ptr<float>() + i0 / block;
    if (fp8)
      core::fp8_state_dequantize_blocks(cp, s, n, block, buf);
    else
      core::codebook_dequantize_blocks(*cb, cp, s, n, block, buf);
  }
  void store(int64_t i0, int64_t n, const float* buf) const {
    if (plain.defined()) {
      if (plain.dtype() == kFloat32)
        std::memcpy(plain.data_ptr<float>() + i0, buf, static_cast<size_t>(n) * 4);
      else
        for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(plain.raw_data())[i0 + i] = BFloat16::from_float(buf[i]);
      return;
    }
    uint8_t c[kUnit];
    uint8_t* dst = codes.data_ptr<uint8_t>();
    uint8_t* cp = nibbles ? c : dst + i0;
    float* s = scale.data_ptr<float>() + i0 / block;
    if (fp8)
      core::fp8_state_quantize_blocks(buf, n, block, cp, s);
    else
      core::codebook_quantize_blocks(*cb, buf, n, block, cp, s);
    if (floor_positive)
      for (int64_t i = 0; i < n; ++i) cp[i] = cp[i] == 0 && buf[i] > 0.0f ? uint8_t{1} : cp[i];
    if (nibbles) core::pack_nibbles_high_first(c, dst + i0 / 2, n);
  }
};
}  // namespace

// ---------------- the shared machinery ----------------
LowBitOptimizer::LowBitOptimizer(std::vector<ParamGroup> groups, Options defaults, std::string name, StateFormat format,
                                 int64_t block_size, std::vector<std::string> state_names)
    : Optimizer(std::move(groups), std::move(defaults), std::move(name), true),
      format_(format),
      block_(block_size > 0 ? block_size : default_block(format)),
      state_names_(std::move(state_names)) {
  LOWBIT_CHECK(block_size >= 0 && block_ <= 256 && (format != StateFormat::Int4 || block_ % 2 == 0),
               "{}: block_size must be in [1, 256]{}, got {}", this->name(),
               format == StateFormat::Int4 ? " and even" : "", block_size);
  for (const auto& g : groups_) {
    LOWBIT_CHECK(opt(g, "lr") >= 0, "{}: invalid learning rate: {}", this->name(), opt(g, "lr"));
    LOWBIT_CHECK(opt(g, "weight_decay") >= 0, "{}: invalid weight_decay value: {}", this->name(),
                 opt(g, "weight_decay"));
  }
}

bool LowBitOptimizer::quantizes(const Tensor& p) const {
  return format_ != StateFormat::Fp32 && p.numel() >= 4096 && p.numel() % block_ == 0 &&
         !full_precision_.count(p.impl());
}

void LowBitOptimizer::keep_full_precision(const Tensor& p) {
  bool found = false;
  for (const auto& g : groups_)
    for (const auto& q : g.params) found = found || q.impl() == p.impl();
  LOWBIT_CHECK(found, "{}: keep_full_precision: the tensor (shape {}) is not one of this optimizer's parameters",
               name(), shape_str(p.shape()));
  const ParamState* st = find_state(p);
  LOWBIT_CHECK(st == nullptr || st->tensors.empty(),
               "{}: keep_full_precision must be called before the parameter's first step (shape {} has state)", name(),
               shape_str(p.shape()));
  full_precision_.insert(p.impl());
}

namespace {
int64_t bytes_of(const ParamState& st) {
  int64_t b = 0;
  for (const auto& [name, t] : st.tensors) b += t.nbytes();
  return b;
}
}  // namespace

int64_t LowBitOptimizer::state_bytes() const {
  int64_t b = 0;
  for (const auto& [_, st] : state_) b += bytes_of(st);
  return b;
}

int64_t LowBitOptimizer::state_bytes(const Tensor& p) const {
  const ParamState* st = find_state(p);
  return st ? bytes_of(*st) : 0;
}

bool LowBitOptimizer::state_layout(const Tensor& p, const std::string& key, Shape& shape, DType& dtype) const {
  const bool q = quantizes(p);
  for (const std::string& st : state_names_) {
    if (!q && key == st) {
      shape = p.shape();
      dtype = p.dtype();
      return true;
    }
    if (q && key == st + "_codes") {
      shape = {format_ == StateFormat::Int4 ? p.numel() / 2 : p.numel()};
      dtype = kUInt8;
      return true;
    }
    if (q && key == st + "_scale") {
      shape = {p.numel() / block_};
      dtype = kFloat32;
      return true;
    }
  }
  return false;
}

std::vector<StateAttribute> LowBitOptimizer::state_attributes(const Tensor& p, const std::string& key) const {
  if (!quantizes(p)) return {};
  for (const std::string& st : state_names_) {
    if (key != st + "_codes") continue;
    std::vector<StateAttribute> a;
    a.push_back({"codebook", format_ == StateFormat::Fp8 ? std::string("float8_e4m3fn") : codebook_of(st).name, 0});
    a.push_back({"block_size", "", block_});
    if (format_ == StateFormat::Int4) a.push_back({"packing", "two_per_byte_high_nibble_first", 0});
    return a;
  }
  return {};
}

const core::Codebook& LowBitOptimizer::codebook_of(const std::string& state) const {
  return state_codebook(format_, signed_state(state));
}

struct LowBitOptimizer::PendingUpdate {
  Tensor p, grad, p32;  // p32: the float32 values updated (p itself, or a copy of bf16 p)
  float* w = nullptr;
  const float* gr = nullptr;
  int64_t n = 0, unit = 0, units = 0;
  int nstates = 0;
  bool stochastic_round = false;
  StateRef refs[3];
  BlockFn fn;
};

// fn captures its scalars by value ([=]): captured by reference, GCC reloads each through its
// pointer in the vectorized loops (a gather per vector: measured 0.66 of SGD8bit's 1.7 ns/param)
void LowBitOptimizer::update_blocks(Tensor& p, int nstates, bool stochastic_round, BlockFn fn) {
  LOWBIT_CHECK(p.grad().shape() == p.shape(), "{}: gradient {} does not match its parameter {}", name(),
               shape_str(p.grad().shape()), shape_str(p.shape()));
  auto u = std::make_shared<PendingUpdate>();
  const int64_t n = p.numel();
  ParamState& st = state_of(p);
  const bool q = quantizes(p);
  if (st.tensors.empty()) {  // torchao's _new_buffer: zero codes and scales, or zeros_like(p)
    for (int s = 0; s < nstates; ++s) {
      const std::string& nm = state_names_[static_cast<size_t>(s)];
      if (q) {
        st.tensors[nm + "_codes"] = zeros({format_ == StateFormat::Int4 ? n / 2 : n}, kUInt8);
        st.tensors[nm + "_scale"] = zeros({n / block_});
      } else {
        st.tensors[nm] = zeros(p.shape(), p.dtype());
      }
    }
  }
  for (int s = 0; s < nstates; ++s) {
    const std::string& nm = state_names_[static_cast<size_t>(s)];
    StateRef& r = u->refs[s];
    r.block = block_;
    if (q) {
      auto c = st.tensors.find(nm + "_codes"), sc = st.tensors.find(nm + "_scale");
      LOWBIT_CHECK(c != st.tensors.end() && sc != st.tensors.end(),
                   "{}: state '{}' of a parameter of shape {} is missing (amsgrad switched on mid-run?)", name(), nm,
                   shape_str(p.shape()));
      r.codes = c->second;
      r.scale = sc->second;
      r.fp8 = format_ == StateFormat::Fp8;
      r.nibbles = format_ == StateFormat::Int4;
      if (!r.fp8) r.cb = &codebook_of(nm);
      // code 0 is zero in the unsigned 8-bit map and in e4m3, code 1 the smallest positive value
      r.floor_positive = second_moment_floor_ && !signed_state(nm) && format_ != StateFormat::Int4;
    } else {
      auto it = st.tensors.find(nm);
      LOWBIT_CHECK(it != st.tensors.end(), "{}: state '{}' of a parameter of shape {} is missing", name(), nm,
                   shape_str(p.shape()));
      r.plain = it->second;
    }
  }
  u->p = p;
  u->grad = p.grad().dtype() == kFloat32 ? p.grad() : p.grad().to(kFloat32);
  u->gr = u->grad.data_ptr<float>();
  // bf16 parameters: float32 results gathered, then written back (RNE or stochastically)
  u->p32 = p.dtype() == kBFloat16 ? p.detach().to(kFloat32) : p.detach();
  u->w = u->p32.data_ptr<float>();
  u->n = n;
  u->unit = q ? block_ * std::max<int64_t>(1, kUnit / block_) : kUnit;
  u->units = (n + u->unit - 1) / u->unit;
  u->nstates = nstates;
  u->stochastic_round = stochastic_round;
  u->fn = std::move(fn);
  pending_.push_back(std::move(u));
}

void LowBitOptimizer::run_updates() {
  std::vector<std::shared_ptr<PendingUpdate>> jobs;
  jobs.swap(pending_);
  if (jobs.empty()) return;
  // chunks of about 64K elements (a parameter's last chunk may be shorter), handed out in order
  struct Chunk {
    PendingUpdate* job;
    int64_t u0, u1;
  };
  std::vector<Chunk> chunks;
  for (const auto& j : jobs) {
    const int64_t per = std::max<int64_t>(1, 32768 / j->unit);
    for (int64_t u0 = 0; u0 < j->units; u0 += per) chunks.push_back({j.get(), u0, std::min(j->units, u0 + per)});
  }
  auto run_chunk = [](const Chunk& c) {
    PendingUpdate& j = *c.job;
    float buf[3][kUnit];
    float* bufs[3] = {buf[0], buf[1], buf[2]};
    for (int64_t u = c.u0; u < c.u1; ++u) {
      const int64_t i0 = u * j.unit, len = std::min(j.unit, j.n - i0);
      if (u + 1 < c.u1)  // the parameter and gradient one unit ahead (the codes are small)
        for (int64_t k = (u + 1) * j.unit; k < std::min((u + 2) * j.unit, j.n); k += 16) {
          __builtin_prefetch(j.w + k, 1);
          __builtin_prefetch(j.gr + k, 0);
        }
      for (int s = 0; s < j.nstates; ++s) j.refs[s].load(i0, len, bufs[s]);
      j.fn(i0, len, j.w + i0, j.gr + i0, bufs);
      for (int s = 0; s < j.nstates; ++s) j.refs[s].store(i0, len, bufs[s]);
    }
  };
  const auto nchunks = static_cast<int64_t>(chunks.size());
  const int threads = static_cast<int>(std::min<int64_t>(get_num_threads(), nchunks));
  if (threads <= 1 || omp_in_parallel()) {
    for (const Chunk& c : chunks) run_chunk(c);
  } else {
    std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(threads)
    for (int64_t c = next++; c < nchunks; c = next++) run_chunk(chunks[static_cast<size_t>(c)]);
  }
  for (const auto& j : jobs) {
    if (j->p.dtype() != kBFloat16) continue;
    uint16_t* dst = static_cast<uint16_t*>(j->p.raw_data());
    if (j->stochastic_round) {
      core::stochastic_round_bf16(j->w, dst, j->n, default_generator());
    } else {
      for (int64_t i = 0; i < j->n; ++i) dst[i] = BFloat16::from_float(j->w[i]);
    }
  }
}

// ---------------- Adam ----------------

LowBitAdam::LowBitAdam(std::vector<ParamGroup> groups, LowBitAdamOptions o, StateFormat format, bool decoupled)
    : LowBitOptimizer(std::move(groups), low_bit_defaults(o, decoupled), class_name(format, decoupled), format,
                      o.block_size, {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
      decoupled_(decoupled),
      stochastic_round_(o.bf16_stochastic_round) {
  second_moment_floor_ = o.second_moment_floor;
  LOWBIT_CHECK(format != StateFormat::Fp32, "LowBitAdam: use Adam / AdamW for float32 states");
  for (const auto& g : groups_) {
    check_unit(name(), "beta parameter at index 0", opt(g, "beta1"));
    check_unit(name(), "beta parameter at index 1", opt(g, "beta2"));
    LOWBIT_CHECK(opt(g, "eps") >= 0, "{}: invalid epsilon value: {}", name(), opt(g, "eps"));
  }
}

void LowBitAdam::step() {
  NoGradGuard ng;
  pending_.clear();  // left by a step that threw
  for (auto& g : groups_) {
    const double lr = opt(g, "lr"), b1 = opt(g, "beta1"), b2 = opt(g, "beta2"), eps = opt(g, "eps"),
                 wd = opt(g, "weight_decay");
    const bool amsgrad = opt(g, "amsgrad") != 0;
    for (auto& p : g.params) {
      if (!p.grad().defined()) continue;
      ParamState& st = state_of(p);
      st.step += 1;
      // float32 scalars as torchao's compiled step forms them
      const float step_f = static_cast<float>(st.step);
      const float bc1 = 1.0f - std::pow(static_cast<float>(b1), step_f);
      const float bc2_sqrt = std::sqrt(1.0f - std::pow(static_cast<float>(b2), step_f));
      const float lr_f = static_cast<float>(lr), wd_f = static_cast<float>(wd), lr_wd = lr_f * wd_f;
      const float w1 = static_cast<float>(1.0 - b1), w2 = static_cast<float>(1.0 - b2), eps_f = static_cast<float>(eps);
      const bool decoupled = decoupled_;
      update_blocks(p, amsgrad ? 3 : 2, stochastic_round_,
                    [=](int64_t, int64_t len, float* wp, const float* gp, float* const* bufs) {
                      float* m = bufs[0];
                      float* v = bufs[1];
                      float* vm = bufs[2];
                      if (amsgrad) {
                        for (int64_t j = 0; j < len; ++j) {
                          float pi = wp[j], gi = gp[j];
                          if (decoupled)
                            pi = pi - lr_wd * pi;
                          else
                            gi = gi + wd_f * pi;
                          const float mi = m[j] + w1 * (gi - m[j]);
                          const float vi = v[j] + w2 * (gi * gi - v[j]);
                          m[j] = mi;
                          v[j] = vi;
                          vm[j] = std::max(vm[j], vi);  // NaN in the stored max stays (torch.maximum propagates)
                          if (std::isnan(vi)) vm[j] = vi;
                          const float denom = std::sqrt(vm[j]) / bc2_sqrt + eps_f;
                          wp[j] = pi - lr_f * (mi / bc1) / denom;
                        }
                      } else if (decoupled) {
#pragma omp simd
                        for (int64_t j = 0; j < len; ++j) {
                          const float pi = wp[j] - lr_wd * wp[j], gi = gp[j];
                          const float mi = m[j] + w1 * (gi - m[j]);
                          const float vi = v[j] + w2 * (gi * gi - v[j]);
                          m[j] = mi;
                          v[j] = vi;
                          wp[j] = pi - lr_f * (mi / bc1) / (std::sqrt(vi) / bc2_sqrt + eps_f);
                        }
                      } else {
#pragma omp simd
                        for (int64_t j = 0; j < len; ++j) {
                          const float pi = wp[j], gi = gp[j] + wd_f * wp[j];
                          const float mi = m[j] + w1 * (gi - m[j]);
                          const float vi = v[j] + w2 * (gi * gi - v[j]);
                          m[j] = mi;
                          v[j] = vi;
                          wp[j] = pi - lr_f * (mi / bc1) / (std::sqrt(vi) / bc2_sqrt + eps_f);
                        }
                      }
                    });
    }
  }
  run_updates();
}

// ---------------- SGD with an 8-bit momentum buffer ----------------
SGD8bit::SGD8bit(std::vector<ParamGroup> groups, SGD8bitOptions o)
    : LowBitOptimizer(std::move(groups),
                      {{"lr", o.lr},
                       {"momentum", o.momentum},
                       {"dampening", o.dampening},
                       {"weight_decay", o.weight_decay},
                       {"nesterov", o.nesterov ? 1.0 : 0.0}},
                      "SGD8bit", StateFormat::Int8, o.block_size, {"momentum_buffer"}),
      stochastic_round_(o.bf16_stochastic_round) {
  for (const auto& g : groups_) {
    LOWBIT_CHECK(opt(g, "momentum") > 0 && opt(g, "momentum") < 1,
                 "SGD8bit: momentum must be in (0, 1) (its state is the momentum buffer), got {}", opt(g, "momentum"));
    check_unit(name(), "dampening", opt(g, "dampening"));
    LOWBIT_CHECK(opt(g, "nesterov") == 0 || opt(g, "dampening") == 0,
                 "SGD8bit: nesterov momentum requires zero dampening");
  }
}

void SGD8bit::step() {
  NoGradGuard ng;
  pending_.clear();  // left by a step that threw
  for (auto& g : groups_) {
    const float lr = static_cast<float>(opt(g, "lr")), mom = static_cast<float>(opt(g, "momentum")),
                keep = static_cast<float>(1.0 - opt(g, "dampening")), wd = static_cast<float>(opt(g, "weight_decay"));
    const bool nesterov = opt(g, "nesterov") != 0;
    for (auto& p : g.params) {
      if (!p.grad().defined()) continue;
      ParamState& st = state_of(p);
      const bool first = ++st.step == 1;
      update_blocks(p, 1, stochastic_round_, [=](int64_t, int64_t len, float* wp, const float* gp, float* const* bufs) {
        float* buf = bufs[0];
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {  // torch.optim.SGD's order
          const float gi = wd != 0.0f ? gp[j] + wd * wp[j] : gp[j];
          const float b = first ? gi : buf[j] * mom + keep * gi;
          buf[j] = b;
          wp[j] = wp[j] - lr * (nesterov ? gi + mom * b : b);
        }
      });
    }
  }
  run_updates();
}

// ---------------- Lion ----------------
Lion::Lion(std::vector<ParamGroup> groups, LionOptions o, StateFormat format)
    : LowBitOptimizer(std::move(groups),
                      {{"lr", o.lr}, {"beta1", o.beta1}, {"beta2", o.beta2}, {"weight_decay", o.weight_decay}},
                      format == StateFormat::Fp32 ? "Lion" : std::string("Lion") + format_name(format), format,
                      o.block_size, {"exp_avg"}),
      stochastic_round_(o.bf16_stochastic_round) {
  LOWBIT_CHECK(format == StateFormat::Fp32 || format == StateFormat::Int8,
               "Lion: state format must be Fp32 or Int8 (Lion8bit)");
  for (const auto& g : groups_) {
    check_unit(name(), "beta parameter at index 0", opt(g, "beta1"));
    check_unit(name(), "beta parameter at index 1", opt(g, "beta2"));
  }
}

void Lion::step() {
  NoGradGuard ng;
  pending_.clear();  // left by a step that threw
  for (auto& g : groups_) {
    const float lr = static_cast<float>(opt(g, "lr")), b1 = static_cast<float>(opt(g, "beta1")),
                b2 = static_cast<float>(opt(g, "beta2")),
                decay = static_cast<float>(1.0 - opt(g, "lr") * opt(g, "weight_decay"));
    const float w1 = static_cast<float>(1.0 - opt(g, "beta1")), w2 = static_cast<float>(1.0 - opt(g, "beta2"));
    for (auto& p : g.params) {
      if (!p.grad().defined()) continue;
      ++state_of(p).step;
      update_blocks(p, 1, stochastic_round_, [=](int64_t, int64_t len, float* wp, const float* gp, float* const* bufs) {
        float* m = bufs[0];
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          const float c = m[j] * b1 + gp[j] * w1;
          // torch.sign: NaN stays NaN, zero gives zero
          const float sign = c > 0.0f ? 1.0f : c < 0.0f ? -1.0f : c;
          wp[j] = wp[j] * decay - lr * sign;
          m[j] = m[j] * b2 + gp[j] * w2;
        }
      });
    }
  }
  run_updates();
}

const core::Codebook& state_codebook(StateFormat format, bool is_signed) {
  LOWBIT_CHECK(format == StateFormat::Int8 || format == StateFormat::Int4,
               "state_codebook: only 8-bit and 4-bit states have code books");
  if (format == StateFormat::Int8)
    return core::codebook(is_signed ? core::CodebookId::Dynamic8Signed : core::CodebookId::Dynamic8Unsigned);
  return core::codebook(is_signed ? core::CodebookId::Dynamic4Signed : core::CodebookId::Linear4Unsigned);
}

std::unique_ptr<LowBitAdam> make_low_bit_adam(const std::string& name, std::vector<ParamGroup> groups,
                                              LowBitAdamOptions o) {
  for (const StateFormat f : {StateFormat::Int8, StateFormat::Int4, StateFormat::Fp8})
    for (const bool d : {false, true})
      if (name == class_name(f, d)) return std::make_unique<LowBitAdam>(std::move(groups), o, f, d);
  throw Error(fmt::format(
      "low-bit optimizer '{}' is not one of Adam8bit, AdamW8bit, Adam4bit, AdamW4bit, AdamFp8, AdamWFp8", name));
}

}  // namespace lowbit::optim
