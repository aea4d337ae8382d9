// Float8Linear (spec §3.4), convert_to_float8_training and the auto filter (§3.5), the module
// factory.
#include <fmt/format.h>

#include <mutex>

#include "cast_internal.h"
#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/nn/module.h"

namespace lowbit::float8 {

namespace {
using detail::Cast2D;
using detail::ScaleAxis;

// The cast of 2-D m for cast config cc (enabled); an axiswise cast takes its scales along `axis`
// (Row: one per stored row, Col: one per stored column), a 1-D blockwise cast its runs along it,
// a 2-D blockwise cast square tiles. column_amax: see detail::cast_2d (gathered by a Row cast,
// used by a Col cast; axiswise only).
Cast2D cast_operand(const Tensor& m, const CastConfig& cc, ScaleAxis axis, bool pow2, detail::CastOutput out,
                    std::vector<float>* column_amax) {
  const Tensor f = m.dtype() == kFloat32 ? m : m.to(kFloat32);
  if (cc.scaling_granularity == ScalingGranularity::Blockwise)
    return detail::cast_blocked_2d(f.data_ptr<float>(), f.size(0), f.size(1), *cc.target_dtype,
                                   cc.block_dims == 2 ? ScaleAxis::Tile : axis, cc.block_size, pow2, out);
  const ScaleAxis ax = cc.scaling_granularity == ScalingGranularity::Tensorwise ? ScaleAxis::Tensor : axis;
  return detail::cast_2d(f.data_ptr<float>(), f.size(0), f.size(1), *cc.target_dtype, ax, pow2, out,
                         ax == ScaleAxis::Tensor ? nullptr : column_amax);
}

// One gemm operand, 2-D as stored: kept in high precision (hp) or cast (q), with what recasting
// it needs.
struct Operand {
  Tensor hp;
  std::optional<Cast2D> q;
  DType fp8 = DType::Float8_e4m3fn;
  CastConfig cc;
  ScaleAxis axis = ScaleAxis::Row;
  bool pow2 = false;
  /// The float8 codes of a cast operand (emulate mode's form): q itself, or a recast.
  Cast2D codes() const {
    if (q->output == detail::CastOutput::Codes) return *q;
    return cast_operand(hp, cc, axis, pow2, detail::CastOutput::Codes, nullptr);
  }
};

// The operand for cast config cc. emulate: float8 codes (dequantized to float32 by the gemm);
// fast: bfloat16 -- the dequantized values themselves when the scales are powers of two (exact,
// no scaling after the gemm), else the code values (scaled after the gemm).
Operand operand(const Tensor& m, const CastConfig& cc, ScaleAxis axis, bool pow2, bool emulate,
                std::vector<float>* column_amax = nullptr) {
  if (!cc.enabled()) return {m, std::nullopt, DType::Float8_e4m3fn, cc, axis, pow2};
  const detail::CastOutput out = emulate ? detail::CastOutput::Codes
                                 : pow2  ? detail::CastOutput::Bf16Dequantized
                                         : detail::CastOutput::Bf16Codes;
  return {m, cast_operand(m, cc, axis, pow2, out, column_amax), *cc.target_dtype, cc, axis, pow2};
}

// The multipliers of op(X)'s rows (left operand, `outer_axis` = the axis that runs along the
// output's rows) as 1/scale, or one value; throws if the scales run along the reduction dim.
std::vector<float> inverse_scales(const Cast2D& c, ScaleAxis outer_axis) {
  if (c.output == detail::CastOutput::Bf16Dequantized) return {1.0f};  // scaled already
  LOWBIT_CHECK(c.axis == ScaleAxis::Tensor || c.axis == outer_axis,
               "float8 gemm: an operand's scales run along the reduction dimension");
  const float* s = c.scale.data_ptr<float>();
  std::vector<float> inv(static_cast<size_t>(c.scale.numel()));
  for (size_t i = 0; i < inv.size(); ++i) inv[i] = 1.0f / s[i];
  return inv;
}

// C = op(A) · op(B) in out_dtype, by the config's execution mode.
Tensor run_gemm(const Operand& a, bool ta, const Operand& b, bool tb, DType out_dtype, bool emulate) {
  NoGradGuard ng;
  if (!a.q) {  // both operands in high precision (the config's rule): torch.mm in their dtype
    if (a.hp.dtype() == kFloat32) return gemm(a.hp, ta, b.hp.to(kFloat32), tb);
    return gemm_bf16(a.hp, ta, b.hp.to(kBFloat16), tb).to(out_dtype);
  }
  // emulate -- and the fast mode when a bfloat16 operand would hold denormals the bf16 gemm
  // flushes (scales above about 2^117; Cast2D::bf16_subnormal): torchao's
  // mm(fp32(a_fp8) / a_scale, fp32(b_fp8) / b_scale).to(orig)
  if (emulate || a.q->bf16_subnormal || b.q->bf16_subnormal) {
    const Tensor c = gemm(core::dequantize_f32(a.codes()), ta, core::dequantize_f32(b.codes()), tb);
    return out_dtype == kFloat32 ? c : c.to(out_dtype);
  }
  // bfloat16 operands (exact), float32 accumulation, then the scales: (1/s_a[i]) * (1/s_b[j])
  Tensor c = gemm_bf16(a.q->values, ta, b.q->values, tb);
  const std::vector<float> ia = inverse_scales(*a.q, ta ? ScaleAxis::Col : ScaleAxis::Row);
  const std::vector<float> ib = inverse_scales(*b.q, tb ? ScaleAxis::Row : ScaleAxis::Col);
  if (ia.size() == 1 && ib.size() == 1 && ia[0] == 1.0f && ib[0] == 1.0f)
    return out_dtype == kFloat32 ? c : c.to(out_dtype);
  const int64_t m = c.size(0), n = c.size(1);
  float* cp = c.data_ptr<float>();
  lowbit::detail::parallel_for(m, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(n, 1)),
                               [&](int64_t r0, int64_t r1) {
                                 for (int64_t i = r0; i < r1; ++i) {
                                   const float sa = ia.size() == 1 ? ia[0] : ia[static_cast<size_t>(i)];
                                   float* row = cp + i * n;
                                   if (ib.size() == 1) {
                                     const float s = sa * ib[0];
#pragma omp simd
                                     for (int64_t j = 0; j < n; ++j) row[j] *= s;
                                   } else {
#pragma omp simd
                                     for (int64_t j = 0; j < n; ++j) row[j] *= sa * ib[static_cast<size_t>(j)];
                                   }
                                 }
                               });
  return out_dtype == kFloat32 ? c : c.to(out_dtype);
}

int64_t flag(bool b) { return b ? 1 : 0; }
}  // namespace

Float8Linear::Float8Linear(const Tensor& weight, const Tensor& bias, const Float8LinearConfig& config)
    : nn::Linear(weight, bias), config_(config.resolved()) {}

std::shared_ptr<Float8Linear> Float8Linear::from_linear(const nn::Linear& linear, const Float8LinearConfig& config) {
  return std::make_shared<Float8Linear>(linear.weight, linear.bias, config);
}

std::string Float8Linear::extra_repr() const {
  return fmt::format("{}, cast_configs={}\"", nn::Linear::extra_repr(), config_.cast_configs_str());
}

Tensor Float8Linear::forward(const Tensor& x) {
  const char* op = "Float8Linear";
  check_low_precision_input(x, op);
  const Float8LinearConfig& c = config_;
  const bool pow2 = c.round_scales_to_power_of_2, emu = c.emulate;
  const Tensor x2 = x.detach().reshape({-1, in_features});
  const Tensor w = weight.detach();
  // output = X · Wᵀ: X scaled per row (token), W per output channel (Wᵀ's axis 0 in torchao)
  // an axiswise X for both gemms: the forward's row cast also gathers X's column amax, so the
  // backward's column cast of X is a single pass
  auto axiswise = [](const CastConfig& cc) {
    return cc.enabled() && cc.scaling_granularity == ScalingGranularity::Axiswise;
  };
  auto x_colmax = std::make_shared<std::vector<float>>();
  const bool gather_x = axiswise(c.cast_config_input) && axiswise(*c.cast_config_input_for_grad_weight);
  const Operand ox = operand(x2, c.cast_config_input, ScaleAxis::Row, pow2, emu, gather_x ? x_colmax.get() : nullptr);
  const Operand ow = operand(w, c.cast_config_weight, ScaleAxis::Row, pow2, emu);
  Tensor y2 = run_gemm(ox, false, ow, true, x.dtype(), emu);
  if (lowbit::detail::any_requires_grad({&x, &weight})) {
    const Shape xs = x.shape();
    const bool gx = x.requires_grad(), gw = weight.requires_grad();
    const int64_t n_out = out_features;
    // A tensorwise or square-tiled operand cast the same way for both of its gemms has the same
    // scales and codes in both (transposing it moves no element to another block): the backward
    // reuses the forward's cast (torchao recasts the saved high-precision tensor, with
    // bit-identical results) -- one cast and its amax pass fewer.
    auto transpose_invariant = [](const CastConfig& a, const CastConfig& b) {
      return a == b && a.enabled() &&
             (a.scaling_granularity == ScalingGranularity::Tensorwise ||
              (a.scaling_granularity == ScalingGranularity::Blockwise && a.block_dims == 2));
    };
    const std::optional<Operand> x_for_gw =
        transpose_invariant(c.cast_config_input, *c.cast_config_input_for_grad_weight) ? std::optional(ox)
                                                                                       : std::nullopt;
    const std::optional<Operand> w_for_gi =
        transpose_invariant(c.cast_config_weight, *c.cast_config_weight_for_grad_input) ? std::optional(ow)
                                                                                        : std::nullopt;
    const bool one_g = transpose_invariant(c.cast_config_grad_output, *c.cast_config_grad_output_for_grad_weight);
    const bool gather_g = axiswise(c.cast_config_grad_output) && axiswise(*c.cast_config_grad_output_for_grad_weight);
    lowbit::detail::record(
        y2, "Float8LinearBackward0", {x, weight},
        [x2, w, c, xs, gx, gw, n_out, pow2, emu, x_for_gw, w_for_gi, one_g, gather_g, x_colmax](const Tensor& g_in) {
          const Tensor g = g_in.reshape({-1, n_out}).to(x2.dtype());
          std::vector<float> g_colmax;  // G's column amax, gathered by its row cast
          const Operand og =
              operand(g, c.cast_config_grad_output, ScaleAxis::Row, pow2, emu, gather_g ? &g_colmax : nullptr);
          Tensor dx, dw;
          if (gx)  // grad_input = G · W: G per row, W per input channel (Wᵀ's axis -1)
            dx = run_gemm(
                     og, false,
                     w_for_gi ? *w_for_gi : operand(w, *c.cast_config_weight_for_grad_input, ScaleAxis::Col, pow2, emu),
                     false, x2.dtype(), emu)
                     .reshape(xs);
          if (gw)  // grad_weight = Gᵀ · X: both scaled per column (over the tokens)
            dw = run_gemm(
                one_g ? og
                      : operand(g, *c.cast_config_grad_output_for_grad_weight, ScaleAxis::Col, pow2, emu, &g_colmax),
                true,
                x_for_gw ? *x_for_gw
                         : operand(x2, *c.cast_config_input_for_grad_weight, ScaleAxis::Col, pow2, emu, x_colmax.get()),
                false, w.dtype(), emu);
          return std::vector<Tensor>{dx, dw};
        });
  }
  return output_with_bias(y2, x);
}

nn::Attributes Float8Linear::checkpoint_attributes() const {
  const Float8LinearConfig& c = config_;
  return {{"cast_config_input", c.cast_config_input.short_str()},
          {"cast_config_input_for_grad_weight", c.cast_config_input_for_grad_weight->short_str()},
          {"cast_config_weight", c.cast_config_weight.short_str()},
          {"cast_config_weight_for_grad_input", c.cast_config_weight_for_grad_input->short_str()},
          {"cast_config_grad_output", c.cast_config_grad_output.short_str()},
          {"cast_config_grad_output_for_grad_weight", c.cast_config_grad_output_for_grad_weight->short_str()},
          {"gemm_fast_accum", std::vector<int64_t>{flag(c.gemm_config_output.use_fast_accum),
                                                   flag(c.gemm_config_grad_input.use_fast_accum),
                                                   flag(c.gemm_config_grad_weight.use_fast_accum)}},
          {"round_scales_to_power_of_2", flag(c.round_scales_to_power_of_2)},
          {"emulate", flag(c.emulate)},
          {"pad_inner_dim", flag(c.pad_inner_dim)}};
}

std::shared_ptr<nn::Module> convert_to_float8_training(const std::shared_ptr<nn::Module>& model,
                                                       const Float8LinearConfig& config, const ModuleFilter& filter) {
  LOWBIT_CHECK(model != nullptr, "convert_to_float8_training: model is null");
  const Float8LinearConfig cfg = config.resolved();  // a bad config fails before anything is swapped
  return nn::replace_linears(model, [&](const nn::Linear& lin, const std::string& fqn) -> std::shared_ptr<nn::Module> {
    if (filter && !filter(lin, fqn)) return nullptr;
    return Float8Linear::from_linear(lin, cfg);
  });
}

ModuleFilter auto_filter_for_recipe(const std::string& recipe, const std::vector<std::string>& filter_fqns) {
  Float8LinearConfig::from_recipe_name(recipe);  // an unknown name fails naming the valid ones
  LOWBIT_CHECK(recipe == "tensorwise" || recipe == "rowwise" || recipe == "blockwise",
               "auto_filter_for_recipe: unsupported recipe '{}' (torchao's auto filter knows tensorwise and rowwise; "
               "blockwise uses rowwise's thresholds)",
               recipe);
  const bool tensorwise = recipe == "tensorwise";
  return [filter_fqns, tensorwise](const nn::Linear& m, const std::string& fqn) {
    for (const auto& f : filter_fqns)
      if (fqn.find(f) != std::string::npos) return false;
    const int64_t N = m.out_features, K = m.in_features;
    if (N % 16 != 0 || K % 16 != 0) return false;
    if (tensorwise) return !(K <= 4096 && N <= 1024);
    return !(N <= 2048 || K <= 1024 || (N <= 4096 && K <= 2048));
  };
}

void register_module_types() {
  static std::once_flag once;
  std::call_once(once, [] {
    nn::register_module_type("Float8Linear", [](const nn::Attributes& a, const nn::NamedTensors& t) {
      const char* ty = "Float8Linear";
      const auto [w, b] = nn::linear_tensors_from_file(t, ty);
      Float8LinearConfig c;
      c.cast_config_input = CastConfig::parse(nn::attr_string(a, "cast_config_input", ty));
      c.cast_config_input_for_grad_weight =
          CastConfig::parse(nn::attr_string(a, "cast_config_input_for_grad_weight", ty));
      c.cast_config_weight = CastConfig::parse(nn::attr_string(a, "cast_config_weight", ty));
      c.cast_config_weight_for_grad_input =
          CastConfig::parse(nn::attr_string(a, "cast_config_weight_for_grad_input", ty));
      c.cast_config_grad_output = CastConfig::parse(nn::attr_string(a, "cast_config_grad_output", ty));
      c.cast_config_grad_output_for_grad_weight =
          CastConfig::parse(nn::attr_string(a, "cast_config_grad_output_for_grad_weight", ty));
      const std::vector<int64_t> fa = nn::attr_ints(a, "gemm_fast_accum", ty);
      LOWBIT_CHECK(fa.size() == 3, "{}: gemm_fast_accum must hold 3 flags, got {}", ty, fa.size());
      c.gemm_config_output.use_fast_accum = fa[0] != 0;
      c.gemm_config_grad_input.use_fast_accum = fa[1] != 0;
      c.gemm_config_grad_weight.use_fast_accum = fa[2] != 0;
      c.round_scales_to_power_of_2 = nn::attr_flag(a, "round_scales_to_power_of_2", ty);
      c.emulate = nn::attr_flag(a, "emulate", ty);
      c.pad_inner_dim = nn::attr_flag(a, "pad_inner_dim", ty);
      return std::make_shared<Float8Linear>(w, b, c);
    });
  });
}

}  // namespace lowbit::float8
