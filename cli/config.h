// Run configuration: a TOML file with sections [model] [data] [optimizer] [lr_scheduler]
// [training] [checkpoint], every key overridable on the command line (--optimizer.lr 3e-4). Keys, types and
// defaults come from one schema table; unknown keys and wrong types are errors that name them.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace lowbit::cli {

using Value = std::variant<int64_t, double, bool, std::string, std::vector<int64_t>, std::vector<std::string>>;

struct KeySpec {
  std::string key;  // "section.name"
  Value default_value;
  std::string help;
};

/// The schema: every key lowbit understands, with its type (from the default) and meaning.
const std::vector<KeySpec>& config_schema();

class RunConfig {
 public:
  /// Defaults for every key.
  RunConfig();
  /// Reads a TOML file over the defaults; throws lowbit::Error naming the file, key and problem.
  static RunConfig from_file(const std::string& path);
  static RunConfig from_string(const std::string& toml_text, const std::string& source = "<string>");
  /// Applies "--section.key value" pairs; throws on unknown keys or unparsable values.
  void apply_overrides(const std::vector<std::string>& args);
  /// Sets one key from its text form (parsed to the key's type).
  void set(const std::string& key, const std::string& text);

  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  const std::vector<int64_t>& get_int_list(const std::string& key) const;
  const std::vector<std::string>& get_string_list(const std::string& key) const;

  /// The resolved configuration as TOML (every key, sections in schema order).
  std::string to_toml() const;
  /// One key's value as TOML text ("0.001", "[1024, 1024]", "\"adamw\"").
  std::string value_text(const std::string& key) const;

 private:
  const Value& at(const std::string& key) const;
  std::map<std::string, Value> values_;
};

}  // namespace lowbit::cli
