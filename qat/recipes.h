// Named quantization recipes (for run configs and the CLI) mapped to quantize_ configs.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/qat/quantize.h"

namespace lowbit::qat {

/// One row of the recipe table.
struct RecipeInfo {
  std::string name, description;
  bool takes_weight_dtype = false;  // weight_dtype selects the weight format
  bool takes_group_size = false;    // group_size sets the weight group (blocks of 1 x group_size)
  bool per_channel_ok = false;      // group_size 0 means per-channel weights, PerAxis(0)
  std::function<std::shared_ptr<QuantConfigBase>(const std::string& weight_dtype, int64_t group_size)> make;
};
/// The recipe table: every recipe with a one-line description and what it takes.
const std::vector<RecipeInfo>& list_recipes();
/// The row of a recipe, or nullptr.
const RecipeInfo* find_recipe(const std::string& name);
/// "8da4w, 8da-intx, ..." for help texts and errors.
std::string recipe_names();
/// The config for a recipe. weight_dtype and group_size apply to the recipes that take them
/// ("8da4w" takes group_size; "8da-intx" and "intx-weight-only" take both, where group_size 0
/// means per-channel weights, PerAxis(0)).
std::shared_ptr<QuantConfigBase> recipe_config(const std::string& name, const std::string& weight_dtype = "int4",
                                               int64_t group_size = 32);

}  // namespace lowbit::qat
