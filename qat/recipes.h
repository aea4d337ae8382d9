// Named quantization recipes (for run configs and the CLI) mapped to quantize_ configs.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "lowbit/qat/quantize.h"

namespace lowbit::qat {

struct RecipeInfo {
  std::string name, description;
};
/// Every recipe with a one-line description.
const std::vector<RecipeInfo>& list_recipes();
/// The config for a recipe. weight_dtype and group_size apply to the recipes that take them
/// ("8da4w" takes group_size; "8da-intx" and "intx-weight-only" take both, where group_size 0
/// means per-channel weights, PerAxis(0)).
std::shared_ptr<QuantConfigBase> recipe_config(const std::string& name, const std::string& weight_dtype = "int4", int64_t group_size = 32);

}  // namespace lowbit::qat
