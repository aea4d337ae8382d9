#include "lowbit/qat/recipes.h"

namespace lowbit::qat {

namespace {
Granularity weight_granularity(int64_t group_size) {
  return group_size == 0 ? Granularity{PerAxis{0}} : Granularity{PerGroup{group_size}};
}

std::shared_ptr<QuantConfigBase> make_8da(const std::string& weight_dtype, int64_t group_size) {
  auto c = std::make_shared<Int8DynamicActivationIntxWeightConfig>();
  c->weight_dtype = weight_dtype;
  c->weight_granularity = weight_granularity(group_size);
  return c;
}
// MX: one element format for activations and weights, blocks of group_size along K, RCEIL scales
std::shared_ptr<QuantConfigBase> mx_recipe(core::FormatId elem, int64_t group_size) {
  auto c = std::make_shared<MXDynamicActivationMXWeightConfig>();
  c->activation_dtype = c->weight_dtype = elem;
  c->block_size = group_size;
  return c;
}
}  // namespace

// The recipe table: one row per named recipe (`lowbit recipes`, [quantize] recipe, validation and
// help all read it). Adding a recipe is one row here plus one test row.
const std::vector<RecipeInfo>& list_recipes() {
  static const std::vector<RecipeInfo> r = {
      {"8da4w", "int8 dynamic per-token asymmetric activations x int4 symmetric per-group weights (group_size)", false,
       true, false, [](const std::string&, int64_t g) { return make_8da("int4", g); }},
      {"8da-intx",
       "int8 dynamic activations x intN symmetric per-group weights (weight_dtype int2..int8, group_size; 0 = "
       "per-channel)",
       true, true, true, [](const std::string& d, int64_t g) { return make_8da(d, g); }},
      {"int4-weight-only", "int4 symmetric per-group weights (group_size), float activations", false, true, false,
       [](const std::string&, int64_t g) -> std::shared_ptr<QuantConfigBase> {
         auto c = std::make_shared<Int4WeightOnlyConfig>();
         c->group_size = g;
         return c;
       }},
      {"intx-weight-only",
       "intN symmetric per-group weights (weight_dtype, group_size; 0 = per-channel), float activations", true, true,
       true,
       [](const std::string& d, int64_t g) -> std::shared_ptr<QuantConfigBase> {
         auto c = std::make_shared<IntxWeightOnlyConfig>();
         c->weight_dtype = d;
         c->granularity = weight_granularity(g);
         return c;
       }},
      {"int8-dyn", "int8 dynamic per-token symmetric activations x int8 per-channel symmetric weights", false, false,
       false,
       [](const std::string&, int64_t) -> std::shared_ptr<QuantConfigBase> {
         return std::make_shared<Int8DynamicActivationInt8WeightConfig>();
       }},
      {"int8-weight-only", "int8 per-channel symmetric weights, float activations", false, false, false,
       [](const std::string&, int64_t) -> std::shared_ptr<QuantConfigBase> {
         return std::make_shared<Int8WeightOnlyConfig>();
       }},
      {"float8-dyn", "float8 e4m3 dynamic per-tensor activations x float8 e4m3 per-tensor weights (torchao's default)",
       false, false, false,
       [](const std::string&, int64_t) -> std::shared_ptr<QuantConfigBase> {
         return std::make_shared<Float8DynamicActivationFloat8WeightConfig>();
       }},
      {"float8-dyn-row", "float8 e4m3 dynamic per-row activations x float8 e4m3 per-row weights", false, false, false,
       [](const std::string&, int64_t) -> std::shared_ptr<QuantConfigBase> {
         auto c = std::make_shared<Float8DynamicActivationFloat8WeightConfig>();
         c->granularity = PerRow{};
         return c;
       }},
      {"float8-weight-only", "float8 e4m3 per-row weights, float activations", false, false, false,
       [](const std::string&, int64_t) -> std::shared_ptr<QuantConfigBase> {
         return std::make_shared<Float8WeightOnlyConfig>();
       }},
      {"mxfp8", "MXFP8: e4m3 activations and weights in blocks of group_size (32) with e8m0 scales, RCEIL", false, true,
       false, [](const std::string&, int64_t g) { return mx_recipe(core::FormatId::Float8E4M3FN, g); }},
      {"mxfp6", "MXFP6: fp6 e2m3 activations and weights, e8m0 block scales, RCEIL", false, true, false,
       [](const std::string&, int64_t g) { return mx_recipe(core::FormatId::Float6E2M3FN, g); }},
      {"mxfp4", "MXFP4: fp4 e2m1 activations and weights, e8m0 block scales, RCEIL", false, true, false,
       [](const std::string&, int64_t g) { return mx_recipe(core::FormatId::Float4E2M1FN, g); }},
      {"nvfp4", "NVFP4: fp4 e2m1 activations and weights, 16-element e4m3 block scales, dynamic per-tensor scales",
       false, false, false,
       [](const std::string&, int64_t) -> std::shared_ptr<QuantConfigBase> {
         return std::make_shared<NVFP4DynamicActivationNVFP4WeightConfig>();
       }},
  };
  return r;
}

const RecipeInfo* find_recipe(const std::string& name) {
  for (const auto& r : list_recipes())
    if (r.name == name) return &r;
  return nullptr;
}

std::string recipe_names() {
  std::string names;
  for (const auto& r : list_recipes()) names += (names.empty() ? "" : ", ") + r.name;
  return names;
}

std::shared_ptr<QuantConfigBase> recipe_config(const std::string& name, const std::string& weight_dtype,
                                               int64_t group_size) {
  const RecipeInfo* r = find_recipe(name);
  LOWBIT_CHECK(r != nullptr, "unknown quantization recipe '{}' (known: {})", name, recipe_names());
  LOWBIT_CHECK(group_size >= 0, "recipe '{}': group_size must be positive (or 0 for per-channel), got {}", name,
               group_size);
  if (group_size == 0 && !r->per_channel_ok) {
    std::string ok;
    for (const auto& x : list_recipes())
      if (x.per_channel_ok) ok += (ok.empty() ? "" : " and ") + x.name;
    throw Error(fmt::format("recipe '{}': group_size 0 (per-channel) is only available for {}", name, ok));
  }
  if (r->takes_weight_dtype) (void)quant_range(weight_dtype);  // the format table knows the name
  return r->make(weight_dtype, group_size);
}

}  // namespace lowbit::qat
