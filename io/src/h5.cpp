#include "h5.h"

#include <H5PLpublic.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>
#include <sstream>

namespace lowbit::io::h5 {

void quiet() {
  static std::once_flag once;
  std::call_once(once, [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    H5PLset_loading_state(0);  // no filter plugins: a file must not load code
  });
}

namespace {
// H5Ewalk2 callback: records descriptions (C code, never throws; the strings are preallocated
// by reserve() so push_back of a small message is the only allocation, guarded by try).
struct ErrorWalk {
  std::vector<std::string> messages;
};
herr_t collect_error(unsigned, const H5E_error2_t* e, void* data) noexcept {
  try {
    static_cast<ErrorWalk*>(data)->messages.emplace_back(e && e->desc ? e->desc : "");
  } catch (...) {
    return -1;
  }
  return 0;
}
std::string lower_first(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[0])));
  return s;
}
}  // namespace

std::string error_detail() {
  ErrorWalk w;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &w);
  if (w.messages.empty()) return "";
  // an operating-system error anywhere on the stack is the real cause (e.g. a full disk)
  for (const auto& m : w.messages) {
    const auto at = m.find("errno = ");
    if (at == std::string::npos) continue;
    const int e = std::atoi(m.c_str() + at + 8);
    if (e > 0) return fmt::format("{} (errno {})", lower_first(std::strerror(e)), e);
  }
  return w.messages.back().empty() ? w.messages.front() : w.messages.back();
}

hid_t check(hid_t id, const std::string& file, const std::string& what) {
  if (id < 0) {
    const std::string d = error_detail();
    throw Error(d.empty() ? fmt::format("{}: {}", file, what) : fmt::format("{}: {}: {}", file, what, d));
  }
  return id;
}
void check(herr_t status, const std::string& file, const std::string& what, int) {
  if (status < 0) check(hid_t{-1}, file, what);
}

namespace {
Hid scalar_space() { return Hid(H5Screate(H5S_SCALAR), H5Sclose); }
Hid vlen_string_type() {
  Hid t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return t;
}
void write_attr_raw(hid_t obj, const std::string& name, hid_t file_type, hid_t mem_type, const void* data,
                    const std::string& file) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  Hid space = scalar_space();
  Hid a(check(H5Acreate2(obj, name.c_str(), file_type, space, H5P_DEFAULT, H5P_DEFAULT), file,
              "cannot create attribute '" + name + "'"),
        H5Aclose);
  check(H5Awrite(a, mem_type, data), file, "cannot write attribute '" + name + "'", 0);
}
Hid open_attr(hid_t obj, const std::string& name, const std::string& file, const std::string& where) {
  LOWBIT_CHECK(H5Aexists(obj, name.c_str()) > 0, "{}: missing attribute '{}' on {}", file, name, where);
  return Hid(check(H5Aopen(obj, name.c_str(), H5P_DEFAULT), file, "cannot open attribute '" + name + "' on " + where),
             H5Aclose);
}
void read_scalar_attr(hid_t obj, const std::string& name, hid_t mem_type, H5T_class_t cls, void* out,
                      const std::string& file, const std::string& where) {
  Hid a = open_attr(obj, name, file, where);
  Hid t(H5Aget_type(a), H5Tclose);
  Hid s(H5Aget_space(a), H5Sclose);
  LOWBIT_CHECK(H5Tget_class(t) == cls && H5Sget_simple_extent_npoints(s) == 1,
               "{}: attribute '{}' on {} has the wrong type or shape", file, name, where);
  check(H5Aread(a, mem_type, out), file, "cannot read attribute '" + name + "' on " + where, 0);
}
}  // namespace

void write_attr(hid_t obj, const std::string& name, const std::string& value, const std::string& file) {
  Hid t = vlen_string_type();
  const char* p = value.c_str();
  write_attr_raw(obj, name, t, t, &p, file);
}
void write_attr(hid_t obj, const std::string& name, int64_t value, const std::string& file) {
  write_attr_raw(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value, file);
}
void write_attr_u64(hid_t obj, const std::string& name, uint64_t value, const std::string& file) {
  write_attr_raw(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value, file);
}
void write_attr(hid_t obj, const std::string& name, double value, const std::string& file) {
  write_attr_raw(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value, file);
}
void write_attr(hid_t obj, const std::string& name, const std::vector<int64_t>& value, const std::string& file) {
  LOWBIT_CHECK(!value.empty() && value.size() <= static_cast<size_t>(kMaxListAttr),
               "{}: attribute '{}' must hold 1 to {} integers, got {}", file, name, kMaxListAttr, value.size());
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  const hsize_t n = value.size();
  Hid space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Hid a(check(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), file,
              "cannot create attribute '" + name + "'"),
        H5Aclose);
  check(H5Awrite(a, H5T_NATIVE_INT64, value.data()), file, "cannot write attribute '" + name + "'", 0);
}
bool has_attr(hid_t obj, const std::string& name) { return H5Aexists(obj, name.c_str()) > 0; }
std::vector<std::string> attr_names(hid_t obj) {
  std::vector<std::string> out;
  H5O_info_t info;
  if (H5Oget_info2(obj, &info, H5O_INFO_NUM_ATTRS) < 0) return out;
  for (hsize_t i = 0; i < info.num_attrs && i < static_cast<hsize_t>(kMaxAttributes); ++i) {
    char name[256] = {0};
    if (H5Aget_name_by_idx(obj, ".", H5_INDEX_CRT_ORDER, H5_ITER_INC, i, name, sizeof(name), H5P_DEFAULT) < 0 &&
        H5Aget_name_by_idx(obj, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof(name), H5P_DEFAULT) < 0)
      continue;
    out.emplace_back(name);
  }
  return out;
}
bool attr_is_list(hid_t obj, const std::string& name) {
  if (H5Aexists(obj, name.c_str()) <= 0) return false;
  Hid a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!a.valid()) return false;
  Hid s(H5Aget_space(a), H5Sclose);
  return H5Sget_simple_extent_type(s) == H5S_SIMPLE && H5Sget_simple_extent_ndims(s) == 1;
}
std::vector<int64_t> read_attr_ints(hid_t obj, const std::string& name, const std::string& file,
                                    const std::string& where) {
  Hid a = open_attr(obj, name, file, where);
  Hid t(H5Aget_type(a), H5Tclose);
  Hid s(H5Aget_space(a), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(s);
  LOWBIT_CHECK(H5Tget_class(t) == H5T_INTEGER && H5Sget_simple_extent_type(s) == H5S_SIMPLE &&
                   H5Sget_simple_extent_ndims(s) == 1 && n >= 1 && n <= kMaxListAttr,
               "{}: attribute '{}' on {} must be a list of 1 to {} integers", file, name, where, kMaxListAttr);
  std::vector<int64_t> v(static_cast<size_t>(n));
  check(H5Aread(a, H5T_NATIVE_INT64, v.data()), file, "cannot read attribute '" + name + "' on " + where, 0);
  return v;
}

std::string read_attr_string(hid_t obj, const std::string& name, const std::string& file, const std::string& where) {
  Hid a = open_attr(obj, name, file, where);
  Hid t(H5Aget_type(a), H5Tclose);
  Hid s(H5Aget_space(a), H5Sclose);
  LOWBIT_CHECK(H5Tget_class(t) == H5T_STRING && H5Sget_simple_extent_npoints(s) == 1,
               "{}: attribute '{}' on {} is not a string", file, name, where);
  if (H5Tis_variable_str(t) > 0) {
    Hid mt(H5Tcopy(t), H5Tclose);  // the stored character set (ASCII or UTF-8)
    char* p = nullptr;
    check(H5Aread(a, mt, &p), file, "cannot read attribute '" + name + "' on " + where, 0);
    std::string out = p ? p : "";
    if (p) H5free_memory(p);
    return out;
  }
  const size_t n = H5Tget_size(t);
  LOWBIT_CHECK(n < (size_t{1} << 24), "{}: attribute '{}' on {} is implausibly large", file, name, where);
  std::string out(n, '\0');
  Hid mt(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mt, n);
  check(H5Aread(a, mt, out.data()), file, "cannot read attribute '" + name + "' on " + where, 0);
  out.resize(std::strlen(out.c_str()));
  return out;
}
int64_t read_attr_int(hid_t obj, const std::string& name, const std::string& file, const std::string& where) {
  int64_t v = 0;
  read_scalar_attr(obj, name, H5T_NATIVE_INT64, H5T_INTEGER, &v, file, where);
  return v;
}
uint64_t read_attr_u64(hid_t obj, const std::string& name, const std::string& file, const std::string& where) {
  uint64_t v = 0;
  read_scalar_attr(obj, name, H5T_NATIVE_UINT64, H5T_INTEGER, &v, file, where);
  return v;
}
double read_attr_double(hid_t obj, const std::string& name, const std::string& file, const std::string& where) {
  double v = 0;
  read_scalar_attr(obj, name, H5T_NATIVE_DOUBLE, H5T_FLOAT, &v, file, where);
  return v;
}

std::vector<std::pair<std::string, std::string>> attrs_as_text(hid_t obj) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& attr : attr_names(obj)) {
    const char* name = attr.c_str();
    Hid a(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
    if (!a.valid()) continue;
    Hid t(H5Aget_type(a), H5Tclose);
    std::string text;
    try {
      switch (H5Tget_class(t)) {
        case H5T_STRING: text = read_attr_string(obj, name, "", name); break;
        case H5T_INTEGER:
          if (attr_is_list(obj, name)) {
            text = shape_str(read_attr_ints(obj, name, "", name));
          } else {
            text = H5Tget_sign(t) == H5T_SGN_NONE ? std::to_string(read_attr_u64(obj, name, "", name))
                                                  : std::to_string(read_attr_int(obj, name, "", name));
          }
          break;
        case H5T_FLOAT: text = fmt::format("{}", read_attr_double(obj, name, "", name)); break;
        default: text = "<unsupported type>";
      }
    } catch (const Error&) {
      text = "<unreadable>";
    }
    out.emplace_back(name, text);
  }
  return out;
}

void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values,
                   const std::string& file) {
  Hid t = vlen_string_type();
  const hsize_t n = values.size();
  Hid space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Hid d(check(H5Dcreate2(loc, name.c_str(), t, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), file,
              "cannot create dataset '" + name + "'"),
        H5Dclose);
  std::vector<const char*> ptrs;
  for (auto& v : values) ptrs.push_back(v.c_str());
  if (n)
    check(H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()), file, "cannot write dataset '" + name + "'", 0);
}
std::vector<std::string> read_strings(hid_t loc, const std::string& name, const std::string& file) {
  Hid d = open_dataset(loc, name, file);
  Hid t(H5Dget_type(d), H5Tclose);
  Hid s(H5Dget_space(d), H5Sclose);
  LOWBIT_CHECK(H5Tget_class(t) == H5T_STRING && H5Tis_variable_str(t) > 0 && H5Sget_simple_extent_ndims(s) == 1,
               "{}: dataset '{}' must be a 1-D array of strings", file, name);
  const hssize_t n = H5Sget_simple_extent_npoints(s);
  LOWBIT_CHECK(n >= 0 && n <= kMaxObjects, "{}: dataset '{}' has an implausible length ({})", file, name, n);
  std::vector<char*> ptrs(static_cast<size_t>(n), nullptr);
  Hid mt(H5Tcopy(t), H5Tclose);
  if (n)
    check(H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()), file, "cannot read dataset '" + name + "'", 0);
  std::vector<std::string> out;
  for (char* p : ptrs) {
    out.emplace_back(p ? p : "");
    if (p) H5free_memory(p);
  }
  return out;
}

namespace {
const char* link_kind(H5L_type_t t) {
  switch (t) {
    case H5L_TYPE_SOFT: return "a soft link";
    case H5L_TYPE_EXTERNAL: return "an external link (to another file)";
    default: return "a user-defined link";
  }
}
}  // namespace

bool hard_path_exists(hid_t loc, const std::string& path, const std::string& file) {
  // check each prefix: H5Lexists fails on a missing intermediate group, and H5Lexists on
  // "a/b" would traverse "a" if it were a soft or external link
  size_t pos = 0;
  while (true) {
    const size_t next = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, next);
    if (!prefix.empty() && prefix != "/") {
      if (H5Lexists(loc, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
      H5L_info_t li;
      check(H5Lget_info(loc, prefix.c_str(), &li, H5P_DEFAULT), file, "cannot read link '" + prefix + "'", 0);
      LOWBIT_CHECK(li.type == H5L_TYPE_HARD,
                   "{}: '{}' is {}; lowbit files may only contain hard links and never read outside themselves", file,
                   prefix, link_kind(li.type));
    }
    if (next == std::string::npos) return true;
    pos = next;
  }
}

namespace {
// The path exists through hard links only and names an object of the expected type.
void require_object(hid_t loc, const std::string& path, const std::string& file, H5O_type_t type, const char* what) {
  LOWBIT_CHECK(hard_path_exists(loc, path, file), "{}: missing {} '{}'", file, what, path);
  H5O_info_t oi;
  check(H5Oget_info_by_name2(loc, path.c_str(), &oi, H5O_INFO_BASIC, H5P_DEFAULT), file, "cannot stat '" + path + "'",
        0);
  LOWBIT_CHECK(oi.type == type, "{}: '{}' is not a {}", file, path, what);
}
}  // namespace

Hid open_group(hid_t loc, const std::string& path, const std::string& file) {
  require_object(loc, path, file, H5O_TYPE_GROUP, "group");
  return Hid(check(H5Gopen2(loc, path.c_str(), H5P_DEFAULT), file, "cannot open group '" + path + "'"), H5Gclose);
}

Hid open_dataset(hid_t loc, const std::string& path, const std::string& file) {
  require_object(loc, path, file, H5O_TYPE_DATASET, "dataset");
  Hid ds(check(H5Dopen2(loc, path.c_str(), H5P_DEFAULT), file, "cannot open dataset '" + path + "'"), H5Dclose);
  Hid dcpl(check(H5Dget_create_plist(ds), file, "cannot read the storage properties of '" + path + "'"), H5Pclose);
  const H5D_layout_t layout = H5Pget_layout(dcpl);
  LOWBIT_CHECK(layout != H5D_VIRTUAL,
               "{}: dataset '{}' is a virtual dataset (its data lives in other files); lowbit files never read outside "
               "themselves",
               file, path);
  LOWBIT_CHECK(layout == H5D_CONTIGUOUS || layout == H5D_CHUNKED || layout == H5D_COMPACT,
               "{}: dataset '{}' has an unknown storage layout", file, path);
  const int ext = H5Pget_external_count(dcpl);
  LOWBIT_CHECK(
      ext == 0,
      "{}: dataset '{}' uses external storage ({} external file{}); lowbit files never read outside themselves", file,
      path, ext, ext == 1 ? "" : "s");
  const int nf = H5Pget_nfilters(dcpl);
  LOWBIT_CHECK(nf >= 0 && nf <= 8, "{}: dataset '{}' has an unreadable filter pipeline", file, path);
  for (int i = 0; i < nf; ++i) {
    unsigned flags = 0, fcfg = 0;
    size_t nelem = 0;
    char fname[64] = {0};
    const H5Z_filter_t f =
        H5Pget_filter2(dcpl, static_cast<unsigned>(i), &flags, &nelem, nullptr, sizeof(fname), fname, &fcfg);
    LOWBIT_CHECK(f == H5Z_FILTER_DEFLATE || f == H5Z_FILTER_SHUFFLE || f == H5Z_FILTER_FLETCHER32,
                 "{}: dataset '{}' uses HDF5 filter {} ('{}'); lowbit reads only deflate, shuffle and fletcher32", file,
                 path, static_cast<int>(f), fname);
  }
  return ds;
}

DatasetMeta dataset_meta(hid_t ds, const std::string& file, const std::string& where) {
  DatasetMeta m;
  Hid space(check(H5Dget_space(ds), file, "cannot read the shape of '" + where + "'"), H5Sclose);
  const H5S_class_t sc = H5Sget_simple_extent_type(space);
  LOWBIT_CHECK(sc == H5S_SCALAR || sc == H5S_SIMPLE, "{}: dataset '{}' has a null or unknown dataspace", file, where);
  const int rank = H5Sget_simple_extent_ndims(space);
  LOWBIT_CHECK(rank >= 0 && rank <= 8, "{}: dataset '{}' has rank {} (lowbit supports up to 8)", file, where, rank);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  Hid t(check(H5Dget_type(ds), file, "cannot read the type of '" + where + "'"), H5Tclose);
  m.element_bytes = H5Tget_size(t);
  LOWBIT_CHECK(m.element_bytes > 0 && m.element_bytes <= 16, "{}: dataset '{}' has {}-byte elements", file, where,
               m.element_bytes);
  // element count without overflow: every dimension < 2^40 and the product below 2^50
  m.elements = 1;
  for (hsize_t d : dims) {
    LOWBIT_CHECK(d < (hsize_t{1} << 40) && (d == 0 || m.elements <= (uint64_t{1} << 50) / d),
                 "{}: dataset '{}' declares an impossible shape", file, where);
    m.elements *= d;
    m.dims.push_back(d);
  }
  Hid dcpl(check(H5Dget_create_plist(ds), file, "cannot read the storage properties of '" + where + "'"), H5Pclose);
  unsigned flags = 0, fcfg = 0;
  size_t nelem = 0;
  m.compressed = H5Pget_filter_by_id2(dcpl, H5Z_FILTER_DEFLATE, &flags, &nelem, nullptr, 0, nullptr, &fcfg) >= 0;
  m.stored_bytes = H5Dget_storage_size(ds);
  const uint64_t declared = m.elements * m.element_bytes;
  const uint64_t capacity = m.compressed ? m.stored_bytes * kMaxCompressionRatio : m.stored_bytes;
  LOWBIT_CHECK(declared <= capacity,
               "{}: dataset '{}' declares {} elements ({} bytes) but stores only {} bytes{}; refusing to allocate for "
               "data the file does not hold",
               file, where, m.elements, declared, m.stored_bytes, m.compressed ? " compressed" : "");
  return m;
}

std::vector<WalkEntry> walk(hid_t group, const std::string& group_path, const std::string& file) {
  std::vector<WalkEntry> out;
  std::set<uint64_t> groups_seen;
  int64_t links = 0;
  auto visit = [&](auto&& self, hid_t g, const std::string& rel, int depth) -> void {
    LOWBIT_CHECK(depth < kMaxDepth, "{}: groups nested deeper than {} levels under '{}'", file, kMaxDepth, group_path);
    H5G_info_t info;
    check(H5Gget_info(g, &info), file, "cannot list group '" + group_path + (rel.empty() ? "" : "/" + rel) + "'", 0);
    LOWBIT_CHECK(
        info.nlinks <= static_cast<hsize_t>(kMaxObjects) && links + static_cast<int64_t>(info.nlinks) <= kMaxObjects,
        "{}: more than {} objects under '{}'", file, kMaxObjects, group_path);
    links += static_cast<int64_t>(info.nlinks);
    for (hsize_t i = 0; i < info.nlinks; ++i) {
      const ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
      LOWBIT_CHECK(len > 0 && len < 1024, "{}: cannot read the name of member {} of '{}'", file, i,
                   group_path + "/" + rel);
      std::string name(static_cast<size_t>(len) + 1, '\0');
      check(static_cast<herr_t>(
                H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT)),
            file, "cannot read a member name of '" + group_path + "'", 0);
      name.resize(static_cast<size_t>(len));
      const std::string child = rel.empty() ? name : rel + "/" + name;
      H5L_info_t li;
      check(H5Lget_info(g, name.c_str(), &li, H5P_DEFAULT), file, "cannot read link '" + group_path + "/" + child + "'",
            0);
      LOWBIT_CHECK(li.type == H5L_TYPE_HARD,
                   "{}: '{}/{}' is {}; lowbit files may only contain hard links and never read outside themselves",
                   file, group_path, child, link_kind(li.type));
      H5O_info_t oi;
      check(H5Oget_info_by_name2(g, name.c_str(), &oi, H5O_INFO_BASIC, H5P_DEFAULT), file,
            "cannot stat '" + group_path + "/" + child + "'", 0);
      out.push_back({child, oi.type, static_cast<uint64_t>(oi.addr)});
      if (oi.type == H5O_TYPE_GROUP) {
        LOWBIT_CHECK(groups_seen.insert(static_cast<uint64_t>(oi.addr)).second,
                     "{}: group '{}/{}' is reached twice (a hard-link loop or an aliased group)", file, group_path,
                     child);
        Hid cg(
            check(H5Gopen2(g, name.c_str(), H5P_DEFAULT), file, "cannot open group '" + group_path + "/" + child + "'"),
            H5Gclose);
        self(self, cg, child, depth + 1);
      }
    }
  };
  H5O_info_t root;
  check(H5Oget_info2(group, &root, H5O_INFO_BASIC), file, "cannot stat '" + group_path + "'", 0);
  groups_seen.insert(static_cast<uint64_t>(root.addr));
  visit(visit, group, "", 0);
  return out;
}

}  // namespace lowbit::io::h5
