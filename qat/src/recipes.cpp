#include "lowbit/qat/recipes.h"

namespace lowbit::qat {

const std::vector<RecipeInfo>& list_recipes() {
  static const std::vector<RecipeInfo> r = {
      {"8da4w", "int8 dynamic per-token asymmetric activations x int4 symmetric per-group weights (group_size)"},
      {"8da-intx", "int8 dynamic activations x intN symmetric per-group weights (weight_dtype int2..int8, group_size; 0 = per-channel)"},
      {"int4-weight-only", "int4 symmetric per-group weights (group_size), float activations"},
      {"intx-weight-only", "intN symmetric per-group weights (weight_dtype, group_size; 0 = per-channel), float activations"},
      {"int8-dyn", "int8 dynamic per-token symmetric activations x int8 per-channel symmetric weights"},
      {"int8-weight-only", "int8 per-channel symmetric weights, float activations"},
  };
  return r;
}

std::shared_ptr<QuantConfigBase> recipe_config(const std::string& name, const std::string& weight_dtype, int64_t group_size) {
  LOWBIT_CHECK(group_size >= 0, "recipe '{}': group_size must be positive (or 0 for per-channel), got {}", name, group_size);
  LOWBIT_CHECK(group_size > 0 || name == "8da-intx" || name == "intx-weight-only",
               "recipe '{}': group_size 0 (per-channel) is only available for 8da-intx and intx-weight-only", name);
  const Granularity gran = group_size == 0 ? Granularity{PerAxis{0}} : Granularity{PerGroup{group_size}};
  if (name == "8da4w" || name == "8da-intx") {
    auto c = std::make_shared<Int8DynamicActivationIntxWeightConfig>();
    c->weight_dtype = name == "8da4w" ? "int4" : weight_dtype;
    c->weight_granularity = gran;
    (void)quant_range(c->weight_dtype);
    return c;
  }
  if (name == "int4-weight-only") {
    auto c = std::make_shared<Int4WeightOnlyConfig>();
    c->group_size = group_size;
    return c;
  }
  if (name == "intx-weight-only") {
    auto c = std::make_shared<IntxWeightOnlyConfig>();
    c->weight_dtype = weight_dtype;
    c->granularity = gran;
    (void)quant_range(weight_dtype);
    return c;
  }
  if (name == "int8-dyn") return std::make_shared<Int8DynamicActivationInt8WeightConfig>();
  if (name == "int8-weight-only") return std::make_shared<Int8WeightOnlyConfig>();
  std::string names;
  for (auto& r : list_recipes()) names += (names.empty() ? "" : ", ") + r.name;
  throw Error(fmt::format("unknown quantization recipe '{}' (known: {})", name, names));
}

}  // namespace lowbit::qat
