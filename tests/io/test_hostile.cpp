// Hostile files: a generator (HDF5 C API) of files that point outside themselves, declare more
// than they hold, nest or loop, or carry crafted attributes. Every file must end in a
// lowbit::Error naming the problem (or a correct load) through the library API and through the
// lowbit executable, whose exit code, signal, peak memory and time are checked.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include <lowbit/lowbit.h>

#include "lowbit/cli/config.h"
#include "lowbit/cli/train.h"
#include "lowbit/io/checkpoint.h"
#include "golden.h"
#include "subprocess.h"

using namespace lowbit;
namespace fs = std::filesystem;

namespace {
std::string dir() {
  static const std::string d = [] {
    const auto p = fs::temp_directory_path() / ("lowbit_hostile_" + std::to_string(::getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
    return p.string();
  }();
  return d;
}

// ---- a tiny HDF5 writing kit (no lowbit code: this is what an attacker's tool would do) ----
struct File {
  hid_t id;
  explicit File(const std::string& path) { id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT); }
  ~File() { H5Fclose(id); }
  operator hid_t() const { return id; }
};
void attr_str(hid_t obj, const char* name, const std::string& v) { lowbit::testing::write_attr_string(obj, name, v); }
void attr_int(hid_t obj, const char* name, int64_t v) {
  hid_t s = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_INT64, &v);
  H5Aclose(a);
  H5Sclose(s);
}
void attr_ints(hid_t obj, const char* name, const std::vector<int64_t>& v) {
  const hsize_t n = v.size();
  hid_t s = H5Screate_simple(1, &n, nullptr);
  hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_INT64, v.data());
  H5Aclose(a);
  H5Sclose(s);
}
hid_t lcpl() {
  static hid_t p = [] {
    hid_t q = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(q, 1);
    return q;
  }();
  return p;
}
// A float32 dataset filled with 0.01 * index, with lowbit's dtype attribute.
void dataset(hid_t f, const std::string& path, std::vector<hsize_t> dims, hid_t dcpl = H5P_DEFAULT, bool write = true,
             const char* dtype = "float32", hid_t type = H5T_IEEE_F32LE) {
  hid_t s =
      dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  hid_t d = H5Dcreate2(f, path.c_str(), type, s, lcpl(), dcpl, H5P_DEFAULT);
  if (write) {
    hsize_t n = 1;
    for (auto x : dims) n *= x;
    std::vector<float> v(n);
    for (hsize_t i = 0; i < n; ++i) v[i] = 0.01f * static_cast<float>(i % 100);
    H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
  }
  if (dtype) attr_str(d, "dtype", dtype);
  H5Dclose(d);
  H5Sclose(s);
}

cli::RunConfig small_config() {
  cli::RunConfig c;
  c.set("model.hidden", "[4]");
  return c;
}
// Root attributes of a lowbit model file and the tensors of small_config()'s 784-4-10 MLP.
void valid_root(hid_t f, const std::string& config = small_config().to_toml(), const std::string& kind = "model") {
  attr_str(f, "format", "lowbit-checkpoint");
  attr_int(f, "schema_version", 2);
  attr_str(f, "kind", kind);
  attr_str(f, "config", config);
}
void valid_model(hid_t f, bool skip_weight0 = false) {
  if (!skip_weight0) dataset(f, "/model/0/weight", {4, 784});
  dataset(f, "/model/0/bias", {4});
  dataset(f, "/model/2/weight", {10, 4});
  dataset(f, "/model/2/bias", {10});
}
std::string other_file() {  // a file outside the model that hostile links point into
  const std::string p = dir() + "/other.h5";
  if (!fs::exists(p)) {
    File o(p);
    dataset(o, "/w", {4, 784});
  }
  return p;
}

struct Case {
  std::string name;
  std::function<void(hid_t)> make;
  std::string load_error;     // expected in load/read/eval errors ("" = loads)
  std::string inspect_error;  // expected from inspect ("" = inspect succeeds)
  // whether loading into small_config()'s float model names the problem (files whose problem
  // lies in parts a float model never reads, such as quantized groups or the config, fail that
  // load as a key mismatch instead, and name the problem where lowbit rebuilds the model)
  bool float_load_names_it = true;
};

std::vector<Case> cases() {
  std::vector<Case> c;
  c.push_back({"valid",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f);
               },
               "", ""});
  c.push_back({"external_storage",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f, true);
                 hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
                 H5Pset_external(dcpl, "/etc/passwd", 0, 4 * 784 * 4);
                 dataset(f, "/model/0/weight", {4, 784}, dcpl, false);
                 H5Pclose(dcpl);
               },
               "external storage", "external storage"});
  c.push_back({"external_link",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f, true);
                 H5Lcreate_external(other_file().c_str(), "/w", f, "/model/0/weight", lcpl(), H5P_DEFAULT);
               },
               "external link", "external link"});
  c.push_back({"soft_link_dataset",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f, true);
                 dataset(f, "/stash/w", {4, 784});
                 H5Lcreate_soft("/stash/w", f, "/model/0/weight", lcpl(), H5P_DEFAULT);
               },
               "soft link", "soft link"});
  c.push_back({"soft_link_model_group",
               [](hid_t f) {
                 valid_root(f);
                 dataset(f, "/stash/0/weight", {4, 784});
                 H5Lcreate_soft("/stash", f, "/model", lcpl(), H5P_DEFAULT);
               },
               "soft link", "soft link"});
  c.push_back({"virtual_dataset",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f, true);
                 hsize_t dims[2] = {4, 784};
                 hid_t vspace = H5Screate_simple(2, dims, nullptr), sspace = H5Screate_simple(2, dims, nullptr);
                 hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
                 H5Pset_virtual(dcpl, vspace, other_file().c_str(), "/w", sspace);
                 hid_t d = H5Dcreate2(f, "/model/0/weight", H5T_IEEE_F32LE, vspace, H5P_DEFAULT, dcpl, H5P_DEFAULT);
                 H5Dclose(d);
                 H5Pclose(dcpl);
                 H5Sclose(vspace);
                 H5Sclose(sspace);
               },
               "virtual dataset", "virtual dataset"});
  for (int bits : {28, 33}) {
    c.push_back({"declared_size_2^" + std::to_string(bits),
                 [bits](hid_t f) {
                   valid_root(f);
                   valid_model(f, true);
                   hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
                   hsize_t chunk[2] = {1, 1 << 16};
                   H5Pset_chunk(dcpl, 2, chunk);
                   if (bits > 30) H5Pset_deflate(dcpl, 9);
                   dataset(f, "/model/0/weight", {hsize_t{1} << (bits - 16), hsize_t{1} << 16}, dcpl, false);
                   H5Pclose(dcpl);
                 },
                 "declares", "declares"});
  }
  c.push_back({"model_size_bomb_in_config",
               [](hid_t f) {
                 auto cfg = small_config();
                 cfg.set("model.hidden", "[16000, 16000]");
                 valid_root(f, cfg.to_toml());
                 valid_model(f);
               },
               "at least", "", false});
  c.push_back({"invalid_config_attribute",
               [](hid_t f) {
                 valid_root(f, "[optimizer]\nlr = nan\n[model]\nhidden = [4]\n");
                 valid_model(f);
               },
               "optimizer.lr", "", false});
  c.push_back({"deep_nesting",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f);
                 std::string p = "/model/n";
                 for (int i = 0; i < 3000; ++i) p += "/n";
                 dataset(f, p + "/x", {1});
               },
               "nested deeper", "nested deeper"});
  c.push_back({"hard_link_loop",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f);
                 H5Lcreate_hard(f, "/model", f, "/model/0/loop", H5P_DEFAULT, H5P_DEFAULT);
               },
               "reached twice", "reached twice"});
  c.push_back({"too_many_objects",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f);
                 hid_t g = H5Gcreate2(f, "/model/many", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                 for (int i = 0; i < 70000; ++i)
                   H5Lcreate_hard(f, "/model/0/bias", g, std::to_string(i).c_str(), H5P_DEFAULT, H5P_DEFAULT);
                 H5Gclose(g);
               },
               "objects", "objects"});
  auto quant_group = [](hid_t f, std::function<void(hid_t)> attrs) {
    valid_root(f);
    valid_model(f, true);
    hid_t codes = H5Pcreate(H5P_DATASET_CREATE);
    dataset(f, "/model/0/qdata", {4, 392}, codes, true, "uint8", H5T_STD_U8LE);
    H5Pclose(codes);
    dataset(f, "/model/0/scale", {4, 24});
    hid_t g = H5Gopen2(f, "/model/0", H5P_DEFAULT);
    attrs(g);
    H5Gclose(g);
  };
  // a quantized group whose attributes are crafted: strings, integer lists, quant_scheme as an int
  auto quantized = [quant_group](std::vector<std::pair<const char*, std::string>> strings,
                                 std::vector<std::pair<const char*, std::vector<int64_t>>> lists = {},
                                 bool int_scheme = false) {
    return [quant_group, strings, lists, int_scheme](hid_t f) {
      quant_group(f, [&](hid_t g) {
        if (int_scheme) attr_int(g, "quant_scheme", 7);
        for (const auto& [k, v] : strings) attr_str(g, k, v);
        for (const auto& [k, v] : lists) attr_ints(g, k, v);
      });
    };
  };
  c.push_back({"quantized_schema_1",
               [quantized](hid_t f) {
                 quantized({{"quant_scheme", "8da4w"}, {"dtype", "int4"}, {"shape", "[4, 784]"}})(f);
                 H5Adelete(f, "schema_version");
                 attr_int(f, "schema_version", 1);
               },
               "schema version 1's attribute layout", "schema version 1's attribute layout", false});
  c.push_back({"quantized_missing_format", quantized({{"quant_scheme", "intx_affine"}}),
               "missing attribute 'weight_format'", "missing attribute 'weight_format'", false});
  c.push_back({"quantized_nonstring_scheme", quantized({{"weight_format", "int4"}}, {}, true), "not a string",
               "not a string", false});
  c.push_back({"quantized_shape_as_text",
               quantized({{"quant_scheme", "intx_affine"}, {"weight_format", "int4"}, {"shape", "[4, 784]"}}),
               "must be a list of 1 to 64 integers", "must be a list of 1 to 64 integers", false});
  c.push_back(
      {"quantized_shape_overflow",
       quantized({{"quant_scheme", "intx_affine"}, {"weight_format", "int4"}}, {{"shape", {int64_t{1} << 45, 784}}}),
       "not a plausible shape", "not a plausible shape", false});
  c.push_back({"quantized_shape_claims_too_much",
               quantized({{"quant_scheme", "intx_affine"}, {"weight_format", "int4"}}, {{"shape", {4000000, 7840}}}),
               "claims", "claims", false});
  // files that describe their modules (module_type on every group): lowbit eval and convert
  // rebuild the model from them, and every lie is refused by the factory that reads it
  auto described = [](std::function<void(hid_t)> tweak, bool quantized_first = false) {
    return [tweak, quantized_first](hid_t f) {
      valid_root(f);
      valid_model(f, quantized_first);
      hid_t m = H5Gopen2(f, "/model", H5P_DEFAULT);
      attr_str(m, "module_type", "Sequential");
      H5Gclose(m);
      hid_t relu = H5Gcreate2(f, "/model/1", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      H5Gclose(relu);
      const char* types[] = {quantized_first ? "QuantizedLinear" : "Linear", "ReLU", "Linear"};
      for (int i = 0; i < 3; ++i) {
        hid_t g = H5Gopen2(f, ("/model/" + std::to_string(i)).c_str(), H5P_DEFAULT);
        attr_str(g, "module_type", types[i]);
        attr_int(g, "module_index", i);
        H5Gclose(g);
      }
      tweak(f);
    };
  };
  auto on_group = [](const char* path, std::function<void(hid_t)> fn) {
    return [path, fn](hid_t f) {
      hid_t g = H5Gopen2(f, path, H5P_DEFAULT);
      fn(g);
      H5Gclose(g);
    };
  };
  c.push_back({"module_type_unknown",
               described(on_group("/model/1",
                                  [](hid_t g) {
                                    H5Adelete(g, "module_type");
                                    attr_str(g, "module_type", "Evil");
                                  })),
               "unknown module type 'Evil'", "", false});
  c.push_back({"module_index_missing", described(on_group("/model/2", [](hid_t g) { H5Adelete(g, "module_index"); })),
               "has no 'module_index' attribute", "", false});
  c.push_back({"module_index_duplicated",
               described(on_group("/model/2",
                                  [](hid_t g) {
                                    H5Adelete(g, "module_index");
                                    attr_int(g, "module_index", 1);
                                  })),
               "are not numbered 0..2", "", false});
  c.push_back({"module_group_without_type", described([](hid_t f) {
                 hid_t g = H5Gcreate2(f, "/model/3", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                 attr_int(g, "module_index", 3);
                 H5Gclose(g);
               }),
               "has no 'module_type' attribute", "", false});
  c.push_back({"module_linear_of_integers", described([](hid_t f) {
                 H5Ldelete(f, "/model/2/weight", H5P_DEFAULT);
                 dataset(f, "/model/2/weight", {10, 4}, H5P_DEFAULT, true, "int32", H5T_STD_I32LE);
               }),
               "tensor 'weight' must be floating", "", false});
  c.push_back({"module_dropout_p", described([](hid_t f) {
                 hid_t g = H5Gcreate2(f, "/model/3", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                 attr_str(g, "module_type", "Dropout");
                 attr_int(g, "module_index", 3);
                 attr_int(g, "p", 5);
                 H5Gclose(g);
               }),
               "attribute 'p' must be a float, got an integer", "", false});
  // a quantized module whose attributes and tensors disagree
  auto quantized_module = [](std::vector<int64_t> shape, std::vector<int64_t> codes_shape, const char* format) {
    return [shape, codes_shape, format](hid_t f) {
      hid_t g = H5Gopen2(f, "/model/0", H5P_DEFAULT);
      for (const auto& [k, v] : std::vector<std::pair<const char*, std::string>>{{"quant_scheme", "intx_affine"},
                                                                                 {"weight_format", format},
                                                                                 {"mapping_type", "SYMMETRIC"},
                                                                                 {"zero_point_domain", "INT"},
                                                                                 {"packing", "nibbles"},
                                                                                 {"nibble_order", "low_first"},
                                                                                 {"scale_dtype", "float32"}})
        attr_str(g, k, v);
      attr_int(g, "bits", 4);
      attr_ints(g, "shape", shape);
      attr_ints(g, "block_size", {1, 32});
      H5Gclose(g);
      dataset(f, "/model/0/qdata", {static_cast<hsize_t>(codes_shape[0]), static_cast<hsize_t>(codes_shape[1])},
              H5P_DEFAULT, true, "uint8", H5T_STD_U8LE);
      dataset(f, "/model/0/scale", {4, 25});
      dataset(f, "/model/0/zero_point", {4, 25}, H5P_DEFAULT, true, "int8", H5T_STD_I8LE);
    };
  };
  c.push_back({"module_quantized_codes_too_short", described(quantized_module({4, 784}, {4, 100}, "int4"), true),
               "tensor 'qdata' must be [4, 392] uint8, got [4, 100] uint8", "", false});
  c.push_back({"module_quantized_bits_lie", described(quantized_module({4, 784}, {4, 392}, "int8"), true),
               "bits 4 does not match weight_format int8", "", false});
  c.push_back({"dtype_attribute_lies",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f, true);
                 dataset(f, "/model/0/weight", {4, 784}, H5P_DEFAULT, true, "float32", H5T_STD_I32LE);
               },
               "says dtype float32", "says dtype float32"});
  c.push_back({"float8_dtype_attribute_on_floats",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f, true);
                 dataset(f, "/model/0/weight", {4, 784}, H5P_DEFAULT, true, "float8_e4m3fn");
               },
               "says dtype float8_e4m3fn but stores 4-byte floating-point",
               "says dtype float8_e4m3fn but stores 4-byte floating-point"});
  c.push_back({"unknown_dtype_attribute",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f, true);
                 dataset(f, "/model/0/weight", {4, 784}, H5P_DEFAULT, true, "complex64");
               },
               "unknown dtype attribute 'complex64'", "unknown dtype attribute 'complex64'"});
  c.push_back({"bool_out_of_range",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f);
                 hsize_t n = 3;
                 hid_t s = H5Screate_simple(1, &n, nullptr);
                 hid_t d = H5Dcreate2(f, "/model/flag", H5T_STD_U8LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                 const uint8_t v[3] = {0, 1, 7};
                 H5Dwrite(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
                 attr_str(d, "dtype", "bool");
                 H5Dclose(d);
                 H5Sclose(s);
               },
               "", ""});  // the model has no such key: strict loads report it; read_model_tensors must refuse the value
                          // (checked below)
  c.push_back({"foreign_filter",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f, true);
                 hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
                 hsize_t chunk[2] = {4, 784};
                 H5Pset_chunk(dcpl, 2, chunk);
                 H5Pset_scaleoffset(dcpl, H5Z_SO_FLOAT_DSCALE, 2);
                 dataset(f, "/model/0/weight", {4, 784}, dcpl);
                 H5Pclose(dcpl);
               },
               "filter", "filter"});
  c.push_back({"rank_9",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f);
                 dataset(f, "/model/extra", {1, 1, 1, 1, 1, 1, 1, 1, 1});
               },
               "rank", "rank"});
  c.push_back({"named_datatype_in_model",
               [](hid_t f) {
                 valid_root(f);
                 valid_model(f);
                 hid_t t = H5Tcopy(H5T_NATIVE_INT);
                 H5Tcommit2(f, "/model/type", t, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                 H5Tclose(t);
               },
               "neither a group nor a dataset", "neither a group nor a dataset"});
  c.push_back({"format_not_a_string",
               [](hid_t f) {
                 attr_int(f, "format", 1);
                 valid_model(f);
               },
               "not a string", "not a string"});
  c.push_back({"schema_version_string",
               [](hid_t f) {
                 attr_str(f, "format", "lowbit-checkpoint");
                 attr_str(f, "schema_version", "1");
                 valid_model(f);
               },
               "wrong type", "wrong type"});
  c.push_back({"unknown_kind",
               [](hid_t f) {
                 valid_root(f, small_config().to_toml(), "pickle");
                 valid_model(f);
               },
               "unknown checkpoint kind", "unknown checkpoint kind"});
  c.push_back({"negative_step",
               [](hid_t f) {
                 valid_root(f, small_config().to_toml(), "training");
                 attr_int(f, "step", -5);
                 valid_model(f);
                 hid_t r = H5Gcreate2(f, "/rng", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                 attr_int(r, "default_seed", 0);
                 attr_int(r, "default_offset", 0);
                 H5Gclose(r);
                 hid_t d = H5Gcreate2(f, "/data", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                 attr_int(d, "epoch", 0);
                 attr_int(d, "position", 0);
                 attr_int(d, "shuffle_seed", 0);
                 H5Gclose(d);
               },
               "step", ""});
  return c;
}

std::string make(const Case& c) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const std::string p = dir() + "/" + c.name + ".h5";
  {
    File f(p);
    c.make(f);
  }
  return p;
}

// The error a call throws ("" when it returns).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string lowbit_exe() { return LOWBIT_EXE; }
}  // namespace

TEST(HostileFiles, LibraryRefusesEachClassByName) {
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.name);
    const std::string path = make(c);
    const std::string inspect_err = error_of([&] { io::inspect(path); });
    if (c.inspect_error.empty())
      EXPECT_EQ(inspect_err, "");
    else
      EXPECT_NE(inspect_err.find(c.inspect_error), std::string::npos) << inspect_err;
    EXPECT_EQ(inspect_err.find(path) == std::string::npos && !inspect_err.empty(), false)
        << "errors name the file: " << inspect_err;

    // loading into the model the file's config describes (what lowbit eval does)
    auto model = cli::build_model(small_config());
    const std::string load_err = error_of([&] { io::load_checkpoint(path, *model); });
    const std::string conv_out = dir() + "/" + c.name + ".converted.h5";
    const std::string conv_err = error_of([&] { cli::convert_file(path, conv_out, "8da4w", "int4", 16); });
    if (c.load_error.empty()) {
      if (c.name == "bool_out_of_range") {
        EXPECT_NE(load_err.find("unexpected key 'flag'"), std::string::npos) << load_err;
        const std::string read_err = error_of([&] { io::read_model_tensors(path); });
        EXPECT_NE(read_err.find("holds the value 7"), std::string::npos) << read_err;
      } else {
        EXPECT_EQ(load_err, "");
        EXPECT_EQ(conv_err, "");
        EXPECT_TRUE(fs::exists(conv_out));
      }
    } else {
      // the converter rebuilds the model from the file: it must refuse too, and write nothing
      // (files of quantized modules it refuses earlier, as already quantized)
      const bool quantized_file = c.name.rfind("module_quantized", 0) == 0;
      EXPECT_NE(conv_err.find(quantized_file ? "the model is already quantized" : c.load_error), std::string::npos)
          << conv_err;
      if (c.name.rfind("module_", 0) == 0) {  // files that describe their modules: load_model refuses them
        const std::string model_err = error_of([&] { io::load_model(path); });
        EXPECT_NE(model_err.find(c.load_error), std::string::npos) << model_err;
        EXPECT_EQ(model_err.rfind(path, 0), 0u) << "errors name the file: " << model_err;
      }
      EXPECT_FALSE(fs::exists(conv_out)) << "convert wrote a file for a refused input";
      if (c.float_load_names_it) EXPECT_NE(load_err.find(c.load_error), std::string::npos) << load_err;
    }
  }
}

TEST(HostileFiles, ExecutableEndsInAnErrorWithinMemoryAndTime) {
  // each file through `lowbit inspect` and `lowbit eval` in a child process: exit code 0 or 1
  // (never a signal), an error naming the problem, at most 1 GiB of address space (outside ASan)
  // and 400 MB resident; the deadline only catches hangs
  const bool have_data = fs::exists(data::FashionMNIST::default_dir() + "/t10k-images-idx3-ubyte.gz");
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.name);
    const std::string path = make(c);
    for (const char* cmd : {"inspect", "eval"}) {
      const auto r =
          lowbit::testing::run_process({lowbit_exe(), cmd, path}, dir() + "/out.txt", uint64_t{1} << 30, 120.0);
      EXPECT_FALSE(r.timed_out) << cmd;
      EXPECT_EQ(r.signal, 0) << cmd << " died with signal " << r.signal << "\n" << r.output;
      EXPECT_LT(r.max_rss_kb, 400 * 1024) << cmd;
      const std::string& expected = std::string(cmd) == "inspect" ? c.inspect_error : c.load_error;
      if (expected.empty() && (std::string(cmd) == "inspect" || have_data) && c.name != "bool_out_of_range") {
        EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
      } else if (!expected.empty()) {
        EXPECT_EQ(r.exit_code, 1) << cmd << "\n" << r.output;
        EXPECT_NE(r.output.find("lowbit: error: " + path), std::string::npos) << r.output;
        EXPECT_NE(r.output.find(expected), std::string::npos) << r.output;
      }
      std::printf("  %-32s %-8s exit %d, %.2f s, peak RSS %ld MB\n", c.name.c_str(), cmd, r.exit_code, r.seconds,
                  r.max_rss_kb / 1024);
    }
  }
}

TEST(HostileFiles, NotHdf5AndEmptyFiles) {
  const std::string junk = dir() + "/junk.h5", empty_file = dir() + "/empty.h5";
  std::ofstream(junk) << "this is not an HDF5 file, just text pretending to be one";
  std::ofstream{empty_file};
  for (const auto& p : {junk, empty_file}) {
    const std::string e = error_of([&] { io::inspect(p); });
    EXPECT_NE(e.find("not an HDF5 file"), std::string::npos) << e;
  }
  EXPECT_NE(error_of([&] { io::inspect(dir()); }).find("not a regular file"), std::string::npos);
}
