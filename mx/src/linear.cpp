// MXLinear (spec §4.5, §9 item 7): the three gemms on MX operands, the recipe table, convert, the
// module factory.
#include "lowbit/mx/linear.h"
#include "lowbit/mx/nvfp4_training.h"

#include <fmt/format.h>

#include <mutex>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/core/cast2d.h"
#include "lowbit/nn/module.h"

namespace lowbit::mx {

using core::Cast2D;
using core::CastOutput;
using core::ScaleAxis;

// ---- config and recipes ----
void MXLinearConfig::validate() const {
  mx_element(elem_dtype);
  if (elem_dtype_weight_override) mx_element(*elem_dtype_weight_override);
  if (elem_dtype_grad_output_override) mx_element(*elem_dtype_grad_output_override);
  LOWBIT_CHECK(block_size >= 1 && block_size <= (int64_t{1} << 20),
               "MXLinearConfig: block_size must be in [1, 2^20], got {}", block_size);
}

std::string MXLinearConfig::to_string() const {
  return fmt::format(
      "MXLinearConfig(block_size={}, elem_dtype={}, elem_dtype_weight_override={}, "
      "elem_dtype_grad_output_override={}, scale_calculation_mode={}, wgrad_with_hp={}, emulate={})",
      block_size, element_name(elem_dtype),
      elem_dtype_weight_override ? element_name(*elem_dtype_weight_override) : "None",
      elem_dtype_grad_output_override ? element_name(*elem_dtype_grad_output_override) : "None",
      core::to_string(scale_calculation_mode), wgrad_with_hp ? "True" : "False", emulate ? "True" : "False");
}

namespace {
MXLinearConfig recipe(FormatId elem, E8M0Rounding mode, bool emulate, bool wgrad_hp = false,
                      std::optional<FormatId> grad = std::nullopt) {
  MXLinearConfig c;
  c.elem_dtype = elem;
  c.scale_calculation_mode = mode;
  c.emulate = emulate;
  c.wgrad_with_hp = wgrad_hp;
  c.elem_dtype_grad_output_override = grad;
  return c;
}
constexpr auto E4M3 = FormatId::Float8E4M3FN;
constexpr auto FP4 = FormatId::Float4E2M1FN;
constexpr auto FLOOR = E8M0Rounding::Floor;
constexpr auto RCEIL = E8M0Rounding::RCeil;
}  // namespace

const std::vector<MXRecipe>& mx_recipes() {
  static const std::vector<MXRecipe> table = {
      {"mxfp8_emulated", "MXFP8 e4m3, FLOOR scales, torchao's float32 reference gemms",
       [] { return recipe(E4M3, FLOOR, true); }},
      {"mxfp8_cublas", "MXFP8 e4m3, FLOOR scales, real gemms (on the CPU: the bf16 fast mode)",
       [] { return recipe(E4M3, FLOOR, false); }},
      {"mxfp8_cublas_rceil", "MXFP8 e4m3, RCEIL scales, real gemms", [] { return recipe(E4M3, RCEIL, false); }},
      {"mxfp8_rceil", "MXFP8 e4m3, RCEIL scales (torchao HEAD's MXFP8 training default)",
       [] { return recipe(E4M3, RCEIL, false); }},
      {"mxfp8_rceil_wgrad_with_hp", "mxfp8_rceil with grad_weight in high precision",
       [] { return recipe(E4M3, RCEIL, false, true); }},
      {"mxfp8_emulated_rceil", "MXFP8 e4m3, RCEIL scales, float32 reference gemms",
       [] { return recipe(E4M3, RCEIL, true); }},
      {"mxfp8_hybrid", "MXFP8 e4m3 forward, e5m2 gradients (TransformerEngine's HYBRID), RCEIL scales",
       [] { return recipe(E4M3, RCEIL, false, false, FormatId::Float8E5M2); }},
      {"mxfp6_e2m3", "MXFP6 e2m3 everywhere, RCEIL scales (beyond torchao's configs)",
       [] { return recipe(FormatId::Float6E2M3FN, RCEIL, false); }},
      {"mxfp6_e3m2", "MXFP6 e3m2 everywhere, RCEIL scales (beyond torchao's configs)",
       [] { return recipe(FormatId::Float6E3M2FN, RCEIL, false); }},
      {"mxfp4_emulated", "MXFP4 e2m1, FLOOR scales, float32 reference gemms", [] { return recipe(FP4, FLOOR, true); }},
      {"mxfp4_cutlass", "MXFP4 e2m1, FLOOR scales, real gemms (on the CPU: the bf16 fast mode)",
       [] { return recipe(FP4, FLOOR, false); }},
  };
  return table;
}

std::string mx_recipe_names() {
  std::string s;
  for (const auto& r : mx_recipes()) s += (s.empty() ? "" : ", ") + std::string(r.name);
  return s;
}

MXLinearConfig MXLinearConfig::from_recipe_name(const std::string& name) {
  for (const auto& r : mx_recipes())
    if (name == r.name) return r.config();
  throw Error(fmt::format("MX recipe_name '{}' is not one of {}", name, mx_recipe_names()));
}

// ---- the gemms ----
namespace {
// One MX operand: the 2-D high-precision matrix (float32), its blocking and element format, and
// its cast (fast: bf16 dequantized values; emulate: codes).
struct Operand {
  Tensor hp;
  const core::Format* elem;
  ScaleAxis axis;
  int64_t block;
  E8M0Rounding mode;
  Cast2D q;
  Cast2D cast(CastOutput out) const {
    const core::Format& e = *elem;
    const E8M0Rounding m = mode;
    return core::cast_blocked_2d(
        hp.data_ptr<float>(), hp.size(0), hp.size(1), e, axis, block,
        [&e, m](float amax) { return core::e8m0_scale(amax, e, m).multiplier; }, out);
  }
};
Operand operand(const Tensor& m32, FormatId elem, ScaleAxis axis, const MXLinearConfig& c) {
  Operand o{m32, &mx_element(elem), axis, c.block_size, c.scale_calculation_mode, {}};
  o.q = o.cast(c.emulate ? CastOutput::Codes : CastOutput::Bf16Dequantized);
  return o;
}
// C = op(A)·op(B) in float32: the bf16 gemm on the dequantized values, or torchao's emulated
// float32 gemm (emulate, or an operand whose bf16 values would be denormal)
Tensor mx_gemm(const Operand& a, bool ta, const Operand& b, bool tb) {
  NoGradGuard ng;
  if (a.q.output == CastOutput::Codes || a.q.bf16_subnormal || b.q.bf16_subnormal) {
    auto deq = [](const Operand& o) {
      return core::dequantize_f32(o.q.output == CastOutput::Codes ? o.q : o.cast(CastOutput::Codes));
    };
    return gemm(deq(a), ta, deq(b), tb);
  }
  return gemm_bf16(a.q.values, ta, b.q.values, tb);
}
Tensor to_dtype(const Tensor& c, DType d) { return c.dtype() == d ? c : c.to(d); }
int64_t flag(bool b) { return b ? 1 : 0; }
}  // namespace

MXLinear::MXLinear(const Tensor& weight, const Tensor& bias, const MXLinearConfig& config)
    : nn::Linear(weight, bias), config_(config) {
  config_.validate();
}

std::string MXLinear::extra_repr() const {
  const MXLinearConfig& c = config_;
  return fmt::format("{}, elem_dtype={}, w={}, go={}, block_size={}, scale_calculation_mode={}{}{}",
                     nn::Linear::extra_repr(), element_name(c.elem_dtype), element_name(c.weight_elem()),
                     element_name(c.grad_output_elem()), c.block_size, core::to_string(c.scale_calculation_mode),
                     c.wgrad_with_hp ? ", wgrad_with_hp=True" : "", c.emulate ? ", emulate=True" : "");
}

Tensor MXLinear::forward(const Tensor& x) {
  const char* op = "MXLinear";
  check_low_precision_input(x, op);
  const MXLinearConfig c = config_;
  const DType dt = x.dtype();
  const Tensor x2 = x.detach().reshape({-1, in_features}).to(kFloat32);
  const Tensor w = weight.detach().to(kFloat32);
  // output = X·Wᵀ: X and W both blocked along K (their rows)
  const Operand ox = operand(x2, c.elem_dtype, ScaleAxis::Row, c), ow = operand(w, c.weight_elem(), ScaleAxis::Row, c);
  Tensor y2 = to_dtype(mx_gemm(ox, false, ow, true), dt);
  if (lowbit::detail::any_requires_grad({&x, &weight})) {
    const Shape xs = x.shape();
    const bool gx = x.requires_grad(), gw = weight.requires_grad();
    const int64_t n_out = out_features;
    lowbit::detail::record(y2, "MXLinearBackward0", {x, weight}, [x2, w, c, xs, gx, gw, n_out, dt](const Tensor& g_in) {
      // G in the input dtype (as torchao's autograd hands it over), then float32 for the casts
      const Tensor g = g_in.reshape({-1, n_out}).to(dt).to(kFloat32);
      Tensor dx, dw;
      if (gx)  // grad_input = G·W: G blocked along N (its rows), W along N (down its columns)
        dx = to_dtype(mx_gemm(operand(g, c.grad_output_elem(), ScaleAxis::Row, c), false,
                              operand(w, c.weight_elem(), ScaleAxis::Col, c), false),
                      dt)
                 .reshape(xs);
      if (gw) {  // grad_weight = Gᵀ·X: both blocked along M (down their columns), or in high precision
        if (c.wgrad_with_hp) {
          NoGradGuard ng;
          dw = dt == kFloat32 ? gemm(g, true, x2, false) : gemm_bf16(g.to(dt), true, x2.to(dt), false).to(dt);
        } else {
          dw = to_dtype(mx_gemm(operand(g, c.grad_output_elem(), ScaleAxis::Col, c), true,
                                operand(x2, c.elem_dtype, ScaleAxis::Col, c), false),
                        dt);
        }
      }
      return std::vector<Tensor>{dx, dw};
    });
  }
  return output_with_bias(y2, x);
}

nn::Attributes MXLinear::checkpoint_attributes() const {
  const MXLinearConfig& c = config_;
  return {{"block_size", c.block_size},
          {"elem_dtype", std::string(element_name(c.elem_dtype))},
          {"elem_dtype_weight", std::string(element_name(c.weight_elem()))},
          {"elem_dtype_grad_output", std::string(element_name(c.grad_output_elem()))},
          {"scale_calculation_mode", std::string(core::to_string(c.scale_calculation_mode))},
          {"wgrad_with_hp", flag(c.wgrad_with_hp)},
          {"emulate", flag(c.emulate)}};
}

std::shared_ptr<nn::Module> convert_to_mx_training(const std::shared_ptr<nn::Module>& model,
                                                   const MXLinearConfig& config, const ModuleFilter& filter) {
  LOWBIT_CHECK(model != nullptr, "convert_to_mx_training: model is null");
  config.validate();  // a bad config fails before anything is swapped
  return nn::replace_linears(model, [&](const nn::Linear& lin, const std::string& fqn) -> std::shared_ptr<nn::Module> {
    if (filter && !filter(lin, fqn)) return nullptr;
    return std::make_shared<MXLinear>(lin.weight, lin.bias, config);
  });
}

void register_module_types() {
  register_nvfp4_module_types();
  static std::once_flag once;
  std::call_once(once, [] {
    nn::register_module_type("MXLinear", [](const nn::Attributes& a, const nn::NamedTensors& t) {
      const char* ty = "MXLinear";
      const auto [w, b] = nn::linear_tensors_from_file(t, ty);
      MXLinearConfig c;
      c.block_size = nn::attr_int(a, "block_size", ty);
      c.elem_dtype = mx_element(nn::attr_string(a, "elem_dtype", ty)).id;
      const FormatId we = mx_element(nn::attr_string(a, "elem_dtype_weight", ty)).id;
      const FormatId ge = mx_element(nn::attr_string(a, "elem_dtype_grad_output", ty)).id;
      if (we != c.elem_dtype) c.elem_dtype_weight_override = we;
      if (ge != c.elem_dtype) c.elem_dtype_grad_output_override = ge;
      c.scale_calculation_mode = parse_scale_mode(nn::attr_string(a, "scale_calculation_mode", ty));
      c.wgrad_with_hp = nn::attr_flag(a, "wgrad_with_hp", ty);
      c.emulate = nn::attr_flag(a, "emulate", ty);
      return std::make_shared<MXLinear>(w, b, c);
    });
  });
}

}  // namespace lowbit::mx
