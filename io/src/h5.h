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
  /// Gives up ownership without closing.
  hid_t release() { return std::exchange(id_, -1); }
  void reset() {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = -1;
  }

 private:
  hid_t id_ = -1;
  herr_t (*closer_)(hid_t) = nullptr;
};

/// Silences HDF5's automatic error printing (errors become lowbit::Error instead) and turns off
/// HDF5's dynamic filter plugins (a file must not make the process load a shared library).
void quiet();
/// The cause HDF5 recorded on this thread's error stack for the last failed call, in words:
/// an operating-system error ("no space left on device (errno 28)") when one is recorded,
/// otherwise HDF5's innermost message; "" when the stack is empty.
std::string error_detail();
/// Throws lowbit::Error "<file>: <what>[: <error_detail()>]" unless id >= 0.
hid_t check(hid_t id, const std::string& file, const std::string& what);
void check(herr_t status, const std::string& file, const std::string& what, int);

// ---- reading untrusted files ----
// A lowbit file may only be read through hard links inside itself. These helpers refuse soft,
// external and user-defined links by name before anything follows them, and every dataset is
// opened through open_dataset, which refuses external storage, virtual layouts and filters other
// than deflate/shuffle/fletcher32.

/// Limits on the shape of a file's object tree (checked while walking, before reading data).
inline constexpr int kMaxDepth = 32;
inline constexpr int64_t kMaxObjects = 65536;
inline constexpr int kMaxAttributes = 256;
/// deflate cannot compress by more than 1032:1, so a chunked, deflated dataset may declare at most
/// this many times its stored bytes; any other dataset must store all the bytes it declares.
inline constexpr uint64_t kMaxCompressionRatio = 1100;

/// Throws unless every component of path (relative to loc, or absolute) that exists is a hard link;
/// returns whether the whole path exists.
bool hard_path_exists(hid_t loc, const std::string& path, const std::string& file);
Hid open_group(hid_t loc, const std::string& path, const std::string& file);
/// Opens a dataset after the path check, then validates its storage (see above).
Hid open_dataset(hid_t loc, const std::string& path, const std::string& file);

/// What a dataset declares, read from its metadata only.
struct DatasetMeta {
  std::vector<uint64_t> dims;
  uint64_t elements = 0;
  uint64_t stored_bytes = 0;  // H5Dget_storage_size
  size_t element_bytes = 0;   // of the stored HDF5 type
  bool compressed = false;
};
/// Rank (<= 8), element count and declared bytes against the stored bytes; throws naming the
/// dataset when it declares more than it can hold.
DatasetMeta dataset_meta(hid_t ds, const std::string& file, const std::string& where);

/// One object reached by walk(): its path relative to the walked group ("a/b/c") and type.
struct WalkEntry {
  std::string path;
  H5O_type_t type;
  uint64_t object_key;  // identifies the object: hard-linked aliases share it
};
/// Every object below the group `group` (depth-first, names in order), refusing non-hard links
/// (named in the error), groups reached twice (a link loop), nesting deeper than kMaxDepth and
/// more than kMaxObjects links. Iterates by index: no HDF5 callback, no exception across C code.
std::vector<WalkEntry> walk(hid_t group, const std::string& group_path, const std::string& file);

// attributes (create or read; reading throws naming the attribute when absent or mistyped)
void write_attr(hid_t obj, const std::string& name, const std::string& value, const std::string& file);
void write_attr(hid_t obj, const std::string& name, int64_t value, const std::string& file);
void write_attr_u64(hid_t obj, const std::string& name, uint64_t value, const std::string& file);
void write_attr(hid_t obj, const std::string& name, double value, const std::string& file);
/// A 1-D integer array attribute (1 to kMaxListAttr values).
void write_attr(hid_t obj, const std::string& name, const std::vector<int64_t>& value, const std::string& file);
bool has_attr(hid_t obj, const std::string& name);
/// Names of obj's attributes (at most kMaxAttributes), in creation order where recorded.
std::vector<std::string> attr_names(hid_t obj);
/// Whether an attribute is a 1-D array (integer lists) rather than a scalar.
bool attr_is_list(hid_t obj, const std::string& name);
inline constexpr int kMaxListAttr = 64;
std::vector<int64_t> read_attr_ints(hid_t obj, const std::string& name, const std::string& file,
                                    const std::string& where);
std::string read_attr_string(hid_t obj, const std::string& name, const std::string& file, const std::string& where);
int64_t read_attr_int(hid_t obj, const std::string& name, const std::string& file, const std::string& where);
uint64_t read_attr_u64(hid_t obj, const std::string& name, const std::string& file, const std::string& where);
double read_attr_double(hid_t obj, const std::string& name, const std::string& file, const std::string& where);
/// Every attribute of obj rendered as text (for inspect).
std::vector<std::pair<std::string, std::string>> attrs_as_text(hid_t obj);

// variable-length string datasets
void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values, const std::string& file);
std::vector<std::string> read_strings(hid_t loc, const std::string& name, const std::string& file);

}  // namespace lowbit::io::h5
