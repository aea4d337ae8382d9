// Reading torchao's golden vectors (shared/golden/*.h5, see its README) with the HDF5 C API.
// The directory comes from $LOWBIT_GOLDEN_DIR, else ../shared/golden beside the project root.
#pragma once
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <lowbit/lowbit.h>

namespace lowbit::testing {

inline std::string golden_dir() {
  const char* env = std::getenv("LOWBIT_GOLDEN_DIR");
  if (env && *env) return env;
  return std::string(LOWBIT_SOURCE_DIR) + "/../shared/golden";
}

/// Path of a golden file. When $LOWBIT_GOLDEN_DIR is set (CI sets it) a missing file is a test
/// failure; otherwise a missing file skips the test, visibly (ctest reports it as skipped
/// through gtest's "[  SKIPPED ]" marker, with the reason).
#define LOWBIT_GOLDEN_FILE(var, name)                                                                               \
  const std::string var = ::lowbit::testing::golden_dir() + "/" + (name);                                           \
  if (!std::filesystem::exists(var)) {                                                                              \
    const char* env_ = std::getenv("LOWBIT_GOLDEN_DIR");                                                            \
    if (env_ && *env_)                                                                                              \
      FAIL() << "golden file " << var << " is missing (LOWBIT_GOLDEN_DIR is set, so every golden file must exist)"; \
    GTEST_SKIP() << "golden file not found: " << var << " (set LOWBIT_GOLDEN_DIR to ../shared/golden)";             \
  }

/// Every case group (a group with a "status" attribute) in a golden file, by path.
inline std::vector<std::string> golden_cases(hid_t file) {
  std::vector<std::string> out;
  auto visit = [](hid_t loc, const char* name, const H5O_info_t* info, void* data) -> herr_t {
    if (info->type == H5O_TYPE_GROUP && std::strcmp(name, ".") != 0 &&
        H5Aexists_by_name(loc, name, "status", H5P_DEFAULT) > 0)
      static_cast<std::vector<std::string>*>(data)->push_back(name);
    return 0;
  };
  H5Ovisit2(file, H5_INDEX_NAME, H5_ITER_INC, visit, &out, H5O_INFO_BASIC);
  return out;
}

inline bool has_attr(hid_t obj, const char* name) { return H5Aexists(obj, name) > 0; }

inline std::string attr_string(hid_t obj, const char* name) {
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  hid_t t = H5Aget_type(a);
  std::string out;
  if (H5Tis_variable_str(t) > 0) {
    char* p = nullptr;
    hid_t mt = H5Tcopy(t);  // same character set as stored (h5py writes UTF-8)
    H5Aread(a, mt, &p);
    out = p ? p : "";
    H5free_memory(p);
    H5Tclose(mt);
  } else {
    out.resize(H5Tget_size(t));
    H5Aread(a, t, out.data());
    out.resize(std::strlen(out.c_str()));
  }
  H5Tclose(t);
  H5Aclose(a);
  return out;
}

/// Writes a variable-length string attribute (hostile-file and tampering tests).
inline void write_attr_string(hid_t obj, const char* name, const std::string& v) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  hid_t s = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
  const char* p = v.c_str();
  H5Awrite(a, t, &p);
  H5Aclose(a);
  H5Sclose(s);
  H5Tclose(t);
}

inline std::vector<int64_t> attr_ints(hid_t obj, const char* name) {
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  hid_t s = H5Aget_space(a);
  std::vector<int64_t> v(static_cast<size_t>(H5Sget_simple_extent_npoints(s)));
  H5Aread(a, H5T_NATIVE_INT64, v.data());
  H5Sclose(s);
  H5Aclose(a);
  return v;
}
inline double attr_double(hid_t obj, const char* name) {
  double v = 0;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  H5Aread(a, H5T_NATIVE_DOUBLE, &v);
  H5Aclose(a);
  return v;
}

/// A dataset as a lowbit tensor of the given dtype (float32, int32, int8, uint8).
inline Tensor dataset(hid_t loc, const std::string& name, DType dtype) {
  hid_t d = H5Dopen2(loc, name.c_str(), H5P_DEFAULT);
  if (d < 0) throw Error("golden: missing dataset " + name);
  hid_t s = H5Dget_space(d);
  const int rank = H5Sget_simple_extent_ndims(s);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank) H5Sget_simple_extent_dims(s, dims.data(), nullptr);
  Tensor t = empty(Shape(dims.begin(), dims.end()), dtype);
  hid_t mt = dtype == kFloat32 ? H5T_NATIVE_FLOAT
             : dtype == kInt32 ? H5T_NATIVE_INT32
             : dtype == kInt8  ? H5T_NATIVE_INT8
                               : H5T_NATIVE_UINT8;
  if (t.numel()) H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw_data());
  H5Sclose(s);
  H5Dclose(d);
  return t;
}

/// Number of positions where a and b differ: bit patterns for floats (any NaN equals any NaN).
inline int64_t count_mismatches(const Tensor& a, const Tensor& b, std::string* first = nullptr) {
  if (a.numel() != b.numel() || a.dtype() != b.dtype()) return -1;
  int64_t bad = 0;
  const size_t es = element_size(a.dtype());
  for (int64_t i = 0; i < a.numel(); ++i) {
    const char* pa = static_cast<const char*>(a.raw_data()) + i * es;
    const char* pb = static_cast<const char*>(b.raw_data()) + i * es;
    if (a.dtype() == kFloat32) {
      float x, y;
      std::memcpy(&x, pa, 4);
      std::memcpy(&y, pb, 4);
      if (x != x && y != y) continue;
    }
    if (std::memcmp(pa, pb, es) != 0) {
      if (first && bad == 0) {
        if (a.dtype() == kFloat32)
          *first = fmt::format("index {}: ours {} vs golden {}", i, reinterpret_cast<const float*>(pa)[0],
                               reinterpret_cast<const float*>(pb)[0]);
        else if (a.dtype() == kInt32)
          *first = fmt::format("index {}: ours {} vs golden {}", i, reinterpret_cast<const int32_t*>(pa)[0],
                               reinterpret_cast<const int32_t*>(pb)[0]);
        else
          *first = fmt::format("index {}: ours {} vs golden {}", i, static_cast<int>(pa[0]), static_cast<int>(pb[0]));
      }
      ++bad;
    }
  }
  return bad;
}

}  // namespace lowbit::testing
