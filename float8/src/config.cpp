// Float8LinearConfig: torchao's post-init rules, the recipe table, printing.
#include <fmt/format.h>

#include "lowbit/float8/float8.h"

namespace lowbit::float8 {

const char* short_str(ScalingType t) { return t == ScalingType::Dynamic ? "dyn" : "dis"; }
const char* short_str(ScalingGranularity g) {
  return g == ScalingGranularity::Tensorwise ? "ten" : g == ScalingGranularity::Axiswise ? "axs" : "blk";
}

namespace {
const char* dtype_short(DType d) {
  switch (d) {
    case DType::Float8_e4m3fn:
    case DType::Float8_e4m3fnuz: return "e4m3";
    case DType::Float8_e5m2:
    case DType::Float8_e5m2fnuz: return "e5m2";
    default: return nullptr;
  }
}
bool is_float8(DType d) { return dtype_short(d) != nullptr; }
}  // namespace

std::string CastConfig::short_str() const {
  LOWBIT_CHECK(target_dtype.has_value(), "CastConfig::short_str: target_dtype is not set (resolve the config first)");
  const char* d = dtype_short(*target_dtype);
  LOWBIT_CHECK(d != nullptr, "CastConfig: target_dtype must be a float8 dtype, got {}", dtype_name(*target_dtype));
  if (scaling_granularity == ScalingGranularity::Blockwise)
    return fmt::format("{}_b{}x{}_{}", float8::short_str(scaling_type), block_dims == 2 ? block_size : 1, block_size,
                       d);
  return fmt::format("{}_{}_{}", float8::short_str(scaling_type), float8::short_str(scaling_granularity), d);
}

CastConfig CastConfig::parse(const std::string& s) {
  CastConfig c;
  const size_t u1 = s.find('_'), u2 = u1 == std::string::npos ? u1 : s.find('_', u1 + 1);
  const bool split = u2 != std::string::npos && s.find('_', u2 + 1) == std::string::npos;
  const std::string t = split ? s.substr(0, u1) : "", g = split ? s.substr(u1 + 1, u2 - u1 - 1) : "",
                    d = split ? s.substr(u2 + 1) : "";
  // blockwise: b1x<B> or b<B>x<B>, B a positive decimal of at most 6 digits
  auto number = [](const std::string& n) {
    const bool ok = !n.empty() && n.size() <= 6 && n.find_first_not_of("0123456789") == std::string::npos;
    return ok ? std::stoll(n) : int64_t{0};
  };
  const size_t x = g.find('x');
  const int64_t lhs = g.size() > 1 && g[0] == 'b' && x != std::string::npos ? number(g.substr(1, x - 1)) : 0;
  const int64_t rhs = lhs > 0 ? number(g.substr(x + 1)) : 0;
  const bool block = rhs > 0 && (lhs == 1 || lhs == rhs);
  LOWBIT_CHECK((t == "dyn" || t == "dis") && (g == "ten" || g == "axs" || block) && (d == "e4m3" || d == "e5m2"),
               "cast config '{}' is not of the form (dyn|dis)_(ten|axs|b1x<B>|b<B>x<B>)_(e4m3|e5m2)", s);
  c.scaling_type = t == "dyn" ? ScalingType::Dynamic : ScalingType::Disabled;
  c.scaling_granularity = g == "ten"   ? ScalingGranularity::Tensorwise
                          : g == "axs" ? ScalingGranularity::Axiswise
                                       : ScalingGranularity::Blockwise;
  if (block) {
    c.block_size = rhs;
    c.block_dims = lhs == 1 ? 1 : 2;
  }
  c.target_dtype = d == "e4m3" ? DType::Float8_e4m3fn : DType::Float8_e5m2;
  return c;
}

Float8LinearConfig Float8LinearConfig::resolved() const {
  Float8LinearConfig c = *this;
  if (!c.cast_config_input_for_grad_weight) c.cast_config_input_for_grad_weight = c.cast_config_input;
  if (!c.cast_config_weight_for_grad_input) c.cast_config_weight_for_grad_input = c.cast_config_weight;
  if (!c.cast_config_grad_output_for_grad_weight) c.cast_config_grad_output_for_grad_weight = c.cast_config_grad_output;
  CastConfig* all[] = {&c.cast_config_input,       &*c.cast_config_input_for_grad_weight,
                       &c.cast_config_weight,      &*c.cast_config_weight_for_grad_input,
                       &c.cast_config_grad_output, &*c.cast_config_grad_output_for_grad_weight};
  for (CastConfig* cc : all) {
    if (cc->block_size == 1) cc->block_dims = 1;  // 1 x 1 either way (short_str prints b1x1)
    LOWBIT_CHECK(cc->scaling_granularity != ScalingGranularity::Axiswise || cc->enabled(),
                 "Float8LinearConfig: only dynamic scaling type is supported for axiswise scaling granularity");
    if (cc->scaling_granularity == ScalingGranularity::Blockwise) {
      LOWBIT_CHECK(cc->enabled(),
                   "Float8LinearConfig: only dynamic scaling type is supported for blockwise scaling granularity");
      LOWBIT_CHECK(cc->block_dims == 1 || cc->block_dims == 2,
                   "Float8LinearConfig: block_dims must be 1 (1 x block_size runs) or 2 (square tiles), got {}",
                   cc->block_dims);
      LOWBIT_CHECK(cc->block_size >= 1 && cc->block_size <= 65536,
                   "Float8LinearConfig: block_size must be in [1, 65536], got {}", cc->block_size);
      LOWBIT_CHECK(c.round_scales_to_power_of_2 || c.emulate,
                   "Float8LinearConfig: blockwise scaling needs round_scales_to_power_of_2 = true (the fast mode "
                   "folds the block scales into exact bfloat16 operands); float32 block scales run only with "
                   "emulate = true");
    }
    LOWBIT_CHECK(
        !cc->target_dtype || is_float8(*cc->target_dtype),
        "Float8LinearConfig: a cast's target_dtype must be a float8 dtype (float8_e4m3fn, float8_e5m2), got {}",
        cc->target_dtype ? dtype_name(*cc->target_dtype) : "");
  }
  LOWBIT_CHECK(
      !c.enable_fsdp_float8_all_gather || c.cast_config_weight.scaling_granularity == ScalingGranularity::Tensorwise,
      "Float8LinearConfig: enable_fsdp_float8_all_gather only supports tensorwise scaling granularity");
  const struct {
    const CastConfig &a, &b;
    const char* gemm;
  } gemms[] = {{c.cast_config_input, c.cast_config_weight, "output"},
               {c.cast_config_grad_output, *c.cast_config_weight_for_grad_input, "grad_input"},
               {*c.cast_config_input_for_grad_weight, *c.cast_config_grad_output_for_grad_weight, "grad_weight"}};
  for (const auto& g : gemms)
    LOWBIT_CHECK(g.a.enabled() == g.b.enabled(),
                 "Float8LinearConfig: incompatible operand precision for {}: both operands must be cast to float8 or "
                 "both kept in high precision",
                 g.gemm);
  const struct {
    CastConfig &a, &b;
    const char* operand;
    DType dflt;
  } operands[] = {
      {c.cast_config_input, *c.cast_config_input_for_grad_weight, "input", DType::Float8_e4m3fn},
      {c.cast_config_weight, *c.cast_config_weight_for_grad_input, "weight", DType::Float8_e4m3fn},
      {c.cast_config_grad_output, *c.cast_config_grad_output_for_grad_weight, "grad_output", DType::Float8_e5m2}};
  for (const auto& o : operands) {
    if (!o.a.target_dtype) o.a.target_dtype = o.dflt;
    if (!o.b.target_dtype) o.b.target_dtype = o.dflt;
    LOWBIT_CHECK(*o.a.target_dtype == *o.b.target_dtype,
                 "Float8LinearConfig: {} must be cast to the same dtype in both matmuls it's used in (got {} and {})",
                 o.operand, dtype_name(*o.a.target_dtype), dtype_name(*o.b.target_dtype));
  }
  return c;
}

namespace {
CastConfig axiswise(std::optional<DType> d = std::nullopt) {
  return {ScalingType::Dynamic, ScalingGranularity::Axiswise, d};
}
Float8LinearConfig tensorwise_recipe() { return Float8LinearConfig{}; }
Float8LinearConfig rowwise_recipe() {
  Float8LinearConfig c;
  c.cast_config_input = axiswise(DType::Float8_e4m3fn);
  c.cast_config_weight = axiswise(DType::Float8_e4m3fn);
  c.cast_config_grad_output = axiswise(DType::Float8_e4m3fn);
  c.round_scales_to_power_of_2 = true;
  return c;
}
Float8LinearConfig blockwise_recipe() {
  Float8LinearConfig c;
  const CastConfig runs{ScalingType::Dynamic, ScalingGranularity::Blockwise, DType::Float8_e4m3fn, 1, 128};
  c.cast_config_input = runs;
  c.cast_config_weight = CastConfig{ScalingType::Dynamic, ScalingGranularity::Blockwise, DType::Float8_e4m3fn, 2, 128};
  c.cast_config_grad_output = runs;
  c.gemm_config_output.use_fast_accum = false;  // TransformerEngine's split accumulator
  c.round_scales_to_power_of_2 = true;
  return c;
}
Float8LinearConfig rowwise_with_gw_hp_recipe() {
  Float8LinearConfig c;
  c.cast_config_input = axiswise();
  c.cast_config_weight = axiswise();
  c.cast_config_grad_output = axiswise(DType::Float8_e4m3fn);
  c.cast_config_weight_for_grad_input = CastConfig{};  // tensorwise
  c.cast_config_input_for_grad_weight = CastConfig{ScalingType::Disabled, ScalingGranularity::Tensorwise, std::nullopt};
  c.cast_config_grad_output_for_grad_weight =
      CastConfig{ScalingType::Disabled, ScalingGranularity::Tensorwise, DType::Float8_e4m3fn};
  c.round_scales_to_power_of_2 = true;
  return c;
}
}  // namespace

const std::vector<Float8Recipe>& float8_recipes() {
  static const std::vector<Float8Recipe> table = {
      {"tensorwise", "one scale per tensor; e4m3 input and weight, e5m2 gradients (torchao's default)",
       tensorwise_recipe},
      {"rowwise", "one scale per row of each gemm operand, e4m3 everywhere, power-of-2 scales", rowwise_recipe},
      {"rowwise_with_gw_hp",
       "rowwise, but grad_weight in high precision and a tensorwise weight for grad_input (most accurate)",
       rowwise_with_gw_hp_recipe},
      {"blockwise",
       "TransformerEngine's Float8BlockScaling: 1x128 input and gradient blocks, 128x128 weight tiles, e4m3, "
       "power-of-2 scales (beyond torchao)",
       blockwise_recipe},
  };
  return table;
}

std::string float8_recipe_names() {
  std::string out;
  for (const auto& r : float8_recipes()) out += (out.empty() ? "" : ", ") + std::string(r.name);
  return out;
}

Float8LinearConfig Float8LinearConfig::from_recipe_name(const std::string& name) {
  std::string names;
  for (const auto& r : float8_recipes()) {
    if (name == r.name) return r.config();
    names += fmt::format("{}'{}'", names.empty() ? "" : ", ", r.name);
  }
  throw Error(fmt::format("float8 recipe_name '{}' is not one of {}", name, names));
}

std::string Float8LinearConfig::cast_configs_str() const {
  const Float8LinearConfig c = resolved();
  std::string s = fmt::format("i:{},w:{},go:{}", c.cast_config_input.short_str(), c.cast_config_weight.short_str(),
                              c.cast_config_grad_output.short_str());
  if (*c.cast_config_input_for_grad_weight != c.cast_config_input)
    s += ",i_gw:" + c.cast_config_input_for_grad_weight->short_str();
  if (*c.cast_config_weight_for_grad_input != c.cast_config_weight)
    s += ",w_gi:" + c.cast_config_weight_for_grad_input->short_str();
  if (*c.cast_config_grad_output_for_grad_weight != c.cast_config_grad_output)
    s += ",go_gw:" + c.cast_config_grad_output_for_grad_weight->short_str();
  return s;
}

std::string Float8LinearConfig::to_string() const {
  const Float8LinearConfig c = resolved();
  return fmt::format(
      "Float8LinearConfig(cast_configs={}, gemm_fast_accum=output:{},grad_input:{},grad_weight:{}, "
      "enable_fsdp_float8_all_gather={}, pad_inner_dim={}, emulate={}, round_scales_to_power_of_2={})",
      c.cast_configs_str(), c.gemm_config_output.use_fast_accum, c.gemm_config_grad_input.use_fast_accum,
      c.gemm_config_grad_weight.use_fast_accum, c.enable_fsdp_float8_all_gather, c.pad_inner_dim, c.emulate,
      c.round_scales_to_power_of_2);
}

}  // namespace lowbit::float8
