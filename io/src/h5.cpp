#include "h5.h"

#include <mutex>
#include <sstream>

namespace lowbit::io::h5 {

void quiet() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}
hid_t check(hid_t id, const std::string& file, const std::string& what) {
  LOWBIT_CHECK(id >= 0, "{}: {}", file, what);
  return id;
}
void check(herr_t status, const std::string& file, const std::string& what, int) { LOWBIT_CHECK(status >= 0, "{}: {}", file, what); }

namespace {
Hid scalar_space() { return Hid(H5Screate(H5S_SCALAR), H5Sclose); }
Hid vlen_string_type() {
  Hid t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return t;
}
void write_attr_raw(hid_t obj, const std::string& name, hid_t file_type, hid_t mem_type, const void* data, const std::string& file) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  Hid space = scalar_space();
  Hid a(check(H5Acreate2(obj, name.c_str(), file_type, space, H5P_DEFAULT, H5P_DEFAULT), file, "cannot create attribute '" + name + "'"), H5Aclose);
  check(H5Awrite(a, mem_type, data), file, "cannot write attribute '" + name + "'", 0);
}
Hid open_attr(hid_t obj, const std::string& name, const std::string& file, const std::string& where) {
  LOWBIT_CHECK(H5Aexists(obj, name.c_str()) > 0, "{}: missing attribute '{}' on {}", file, name, where);
  return Hid(check(H5Aopen(obj, name.c_str(), H5P_DEFAULT), file, "cannot open attribute '" + name + "' on " + where), H5Aclose);
}
void read_scalar_attr(hid_t obj, const std::string& name, hid_t mem_type, H5T_class_t cls, void* out, const std::string& file, const std::string& where) {
  Hid a = open_attr(obj, name, file, where);
  Hid t(H5Aget_type(a), H5Tclose);
  Hid s(H5Aget_space(a), H5Sclose);
  LOWBIT_CHECK(H5Tget_class(t) == cls && H5Sget_simple_extent_npoints(s) == 1, "{}: attribute '{}' on {} has the wrong type or shape", file, name, where);
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
bool has_attr(hid_t obj, const std::string& name) { return H5Aexists(obj, name.c_str()) > 0; }

std::string read_attr_string(hid_t obj, const std::string& name, const std::string& file, const std::string& where) {
  Hid a = open_attr(obj, name, file, where);
  Hid t(H5Aget_type(a), H5Tclose);
  Hid s(H5Aget_space(a), H5Sclose);
  LOWBIT_CHECK(H5Tget_class(t) == H5T_STRING && H5Sget_simple_extent_npoints(s) == 1, "{}: attribute '{}' on {} is not a string", file, name, where);
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
  H5O_info_t info;
  if (H5Oget_info2(obj, &info, H5O_INFO_NUM_ATTRS) < 0) return out;
  for (hsize_t i = 0; i < info.num_attrs; ++i) {
    char name[256] = {0};
    if (H5Aget_name_by_idx(obj, ".", H5_INDEX_CRT_ORDER, H5_ITER_INC, i, name, sizeof(name), H5P_DEFAULT) < 0 &&
        H5Aget_name_by_idx(obj, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof(name), H5P_DEFAULT) < 0)
      continue;
    Hid a(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
    if (!a.valid()) continue;
    Hid t(H5Aget_type(a), H5Tclose);
    std::string text;
    try {
      switch (H5Tget_class(t)) {
        case H5T_STRING: text = read_attr_string(obj, name, "", name); break;
        case H5T_INTEGER:
          text = H5Tget_sign(t) == H5T_SGN_NONE ? std::to_string(read_attr_u64(obj, name, "", name)) : std::to_string(read_attr_int(obj, name, "", name));
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

void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values, const std::string& file) {
  Hid t = vlen_string_type();
  const hsize_t n = values.size();
  Hid space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Hid d(check(H5Dcreate2(loc, name.c_str(), t, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), file, "cannot create dataset '" + name + "'"), H5Dclose);
  std::vector<const char*> ptrs;
  for (auto& v : values) ptrs.push_back(v.c_str());
  if (n) check(H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()), file, "cannot write dataset '" + name + "'", 0);
}
std::vector<std::string> read_strings(hid_t loc, const std::string& name, const std::string& file) {
  LOWBIT_CHECK(link_exists(loc, name), "{}: missing dataset '{}'", file, name);
  Hid d(check(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), file, "cannot open dataset '" + name + "'"), H5Dclose);
  Hid t(H5Dget_type(d), H5Tclose);
  Hid s(H5Dget_space(d), H5Sclose);
  LOWBIT_CHECK(H5Tget_class(t) == H5T_STRING && H5Tis_variable_str(t) > 0 && H5Sget_simple_extent_ndims(s) == 1,
               "{}: dataset '{}' must be a 1-D array of strings", file, name);
  const hssize_t n = H5Sget_simple_extent_npoints(s);
  LOWBIT_CHECK(n >= 0 && n < (1 << 24), "{}: dataset '{}' has an implausible length", file, name);
  std::vector<char*> ptrs(static_cast<size_t>(n), nullptr);
  Hid mt(H5Tcopy(t), H5Tclose);
  if (n) check(H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()), file, "cannot read dataset '" + name + "'", 0);
  std::vector<std::string> out;
  for (char* p : ptrs) {
    out.emplace_back(p ? p : "");
    if (p) H5free_memory(p);
  }
  return out;
}

bool link_exists(hid_t loc, const std::string& path) {
  // check each prefix: H5Lexists fails on a missing intermediate group
  size_t pos = 0;
  while (true) {
    const size_t next = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, next);
    if (!prefix.empty() && prefix != "/" && H5Lexists(loc, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (next == std::string::npos) return true;
    pos = next;
  }
}

}  // namespace lowbit::io::h5
