// Thin RAII and error helpers over the HDF5 C API (internal to io/).
#pragma once
#include <hdf5.h>

#include <string>
#include <utility>
#include <vector>

#include "lowbit/autograd/error.h"

namespace lowbit::io::h5 {

/// Owns an hid_t and closes it with the right H5*close.
class Hid {
 public:
  Hid() = default;
  Hid(hid_t id, herr_t (*closer)(hid_t)) : id_(id), closer_(closer) {}
  ~Hid() { reset(); }
  Hid(Hid&& o) noexcept : id_(std::exchange(o.id_, -1)), closer_(o.closer_) {}
  Hid& operator=(Hid&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, -1);
      closer_ = o.closer_;
    }
    return *this;
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  operator hid_t() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = -1;
  }

 private:
  hid_t id_ = -1;
  herr_t (*closer_)(hid_t) = nullptr;
};

/// Silences HDF5's automatic error printing (errors become lowbit::Error instead).
void quiet();
/// Throws lowbit::Error "<file>: <what>" unless id >= 0.
hid_t check(hid_t id, const std::string& file, const std::string& what);
void check(herr_t status, const std::string& file, const std::string& what, int);

// attributes (create or read; reading throws naming the attribute when absent or mistyped)
void write_attr(hid_t obj, const std::string& name, const std::string& value, const std::string& file);
void write_attr(hid_t obj, const std::string& name, int64_t value, const std::string& file);
void write_attr_u64(hid_t obj, const std::string& name, uint64_t value, const std::string& file);
void write_attr(hid_t obj, const std::string& name, double value, const std::string& file);
bool has_attr(hid_t obj, const std::string& name);
std::string read_attr_string(hid_t obj, const std::string& name, const std::string& file, const std::string& where);
int64_t read_attr_int(hid_t obj, const std::string& name, const std::string& file, const std::string& where);
uint64_t read_attr_u64(hid_t obj, const std::string& name, const std::string& file, const std::string& where);
double read_attr_double(hid_t obj, const std::string& name, const std::string& file, const std::string& where);
/// Every attribute of obj rendered as text (for inspect).
std::vector<std::pair<std::string, std::string>> attrs_as_text(hid_t obj);

// variable-length string datasets
void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values, const std::string& file);
std::vector<std::string> read_strings(hid_t loc, const std::string& name, const std::string& file);

bool link_exists(hid_t loc, const std::string& path);

}  // namespace lowbit::io::h5
