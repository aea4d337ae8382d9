// The dtype table: one row per DType with its name, PyTorch-style aliases, size and kind; the
// low-precision rows carry their codec's description (minifloat.h).
#include <array>
#include <string>

#include "lowbit/autograd/dtype.h"
#include "lowbit/autograd/error.h"
#include "lowbit/autograd/kernel.h"
#include "lowbit/autograd/minifloat.h"

namespace lowbit {

namespace {
enum class Kind : uint8_t { Floating, Integral, Bool, LowPrecision };
struct DTypeRow {
  DType dtype;
  const char* name;
  const char* aliases[4];  // null-terminated
  size_t size;
  Kind kind;
  const MinifloatSpec* minifloat;  // the codec of a minifloat storage dtype (fp4_x2: of one nibble), else null
};

// clang-format off
constexpr std::array<DTypeRow, kNumDTypes> kRows = {{
    {DType::Float32,          "float32",          {"float", "fp32", "f32", nullptr},   4, Kind::Floating, nullptr},
    {DType::BFloat16,         "bfloat16",         {"bf16", nullptr},                   2, Kind::Floating, nullptr},
    {DType::Float64,          "float64",          {"double", "fp64", "f64", nullptr},  8, Kind::Floating, nullptr},
    {DType::Int8,             "int8",             {nullptr},                           1, Kind::Integral, nullptr},
    {DType::UInt8,            "uint8",            {nullptr},                           1, Kind::Integral, nullptr},
    {DType::Int32,            "int32",            {"int", nullptr},                    4, Kind::Integral, nullptr},
    {DType::Int64,            "int64",            {"long", nullptr},                   8, Kind::Integral, nullptr},
    {DType::Bool,             "bool",             {nullptr},                           1, Kind::Bool, nullptr},
    {DType::Float8_e4m3fn,    "float8_e4m3fn",    {nullptr},                           1, Kind::LowPrecision, &kFloat8E4M3FN},
    {DType::Float8_e5m2,      "float8_e5m2",      {nullptr},                           1, Kind::LowPrecision, &kFloat8E5M2},
    {DType::Float8_e4m3fnuz,  "float8_e4m3fnuz",  {nullptr},                           1, Kind::LowPrecision, &kFloat8E4M3FNUZ},
    {DType::Float8_e5m2fnuz,  "float8_e5m2fnuz",  {nullptr},                           1, Kind::LowPrecision, &kFloat8E5M2FNUZ},
    {DType::Float8_e8m0fnu,   "float8_e8m0fnu",   {nullptr},                           1, Kind::LowPrecision, nullptr},
    {DType::Float4_e2m1fn_x2, "float4_e2m1fn_x2", {nullptr},                           1, Kind::LowPrecision, &kFloat4E2M1FN},
}};
// clang-format on

constexpr bool rows_in_order() {
  for (size_t i = 0; i < kRows.size(); ++i)
    if (static_cast<size_t>(kRows[i].dtype) != i) return false;
  return true;
}
static_assert(rows_in_order(), "one dtype row per DType, in enum order");

const DTypeRow& row(DType d) {
  const auto i = static_cast<size_t>(d);
  LOWBIT_CHECK(i < kRows.size(), "invalid dtype value {}", i);
  return kRows[i];
}
}  // namespace

size_t element_size(DType d) { return row(d).size; }
const char* dtype_name(DType d) { return row(d).name; }
bool is_floating(DType d) { return row(d).kind == Kind::Floating; }
bool is_integral(DType d) { return row(d).kind == Kind::Integral; }
bool is_low_precision(DType d) { return row(d).kind == Kind::LowPrecision; }

DType dtype_from_name(const std::string& n) {
  for (const auto& r : kRows) {
    if (n == r.name) return r.dtype;
    for (const char* const* a = r.aliases; *a; ++a)
      if (n == *a) return r.dtype;
  }
  std::string known;
  for (const auto& r : kRows) known += (known.empty() ? "" : ", ") + std::string(r.name);
  throw Error(fmt::format("unknown dtype name '{}' (expected one of {})", n, known));
}

namespace detail {
void throw_not_computable(DType d) {
  throw Error(
      fmt::format("dtype {} holds low-precision codes, which ops do not compute on: convert with "
                  ".to(float32) first",
                  dtype_name(d)));
}
}  // namespace detail

const MinifloatSpec* minifloat_spec(DType d) { return row(d).minifloat; }

}  // namespace lowbit
