// lowbit::Error and LOWBIT_CHECK: errors for users name the op, the operands and the rule.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/core.h>

namespace lowbit {

/// Every user-facing failure in lowbit throws this type.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

using Shape = std::vector<int64_t>;

/// "[2, 3, 4]" — shapes as PyTorch prints them in error messages.
std::string shape_str(const Shape& shape);

namespace detail {
[[noreturn]] void throw_error(std::string msg);
[[noreturn]] void internal_error(const char* file, int line, const char* cond);
}  // namespace detail

}  // namespace lowbit

/// LOWBIT_CHECK(cond, "op: fmt {} string", args...) throws lowbit::Error with the formatted text.
#define LOWBIT_CHECK(cond, ...)                                             \
  do {                                                                      \
    if (!(cond)) ::lowbit::detail::throw_error(::fmt::format(__VA_ARGS__)); \
  } while (0)

/// Internal invariant: failing means a bug in lowbit, not in the user's program.
#define LOWBIT_ASSERT(cond)                                                   \
  do {                                                                        \
    if (!(cond)) ::lowbit::detail::internal_error(__FILE__, __LINE__, #cond); \
  } while (0)
