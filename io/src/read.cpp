// io/ reading: datasets under lowbit's checks, load_checkpoint and read_model_tensors.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <set>

#include "internal.h"
#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/generator.h"
#include "lowbit/data/dataset.h"
#include "lowbit/float8/float8.h"
#include "lowbit/mx/linear.h"
#include "lowbit/qat/quantized_linear.h"

namespace lowbit::io {
namespace detail {

H5Types h5_types(DType d) {
  switch (d) {
    case DType::Float32: return {H5T_IEEE_F32LE, H5T_NATIVE_FLOAT};
    case DType::Float64: return {H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE};
    case DType::BFloat16: return {H5T_STD_U16LE, H5T_NATIVE_UINT16};
    case DType::Int8: return {H5T_STD_I8LE, H5T_NATIVE_INT8};
    case DType::UInt8: return {H5T_STD_U8LE, H5T_NATIVE_UINT8};
    case DType::Int32: return {H5T_STD_I32LE, H5T_NATIVE_INT32};
    case DType::Int64: return {H5T_STD_I64LE, H5T_NATIVE_INT64};
    case DType::Bool: return {H5T_STD_U8LE, H5T_NATIVE_UINT8};
    // low-precision codes: bytes, named by the "dtype" attribute
    case DType::Float8_e4m3fn:
    case DType::Float8_e5m2:
    case DType::Float8_e4m3fnuz:
    case DType::Float8_e5m2fnuz:
    case DType::Float8_e8m0fnu:
    case DType::Float4_e2m1fn_x2: return {H5T_STD_U8LE, H5T_NATIVE_UINT8};
  }
  return {H5T_STD_U8LE, H5T_NATIVE_UINT8};
}
// dtype a stored dataset holds: the "dtype" attribute when present (a fixed list of names, and
// the stored HDF5 type must be of the same kind), otherwise derived from the HDF5 type (files
// written by other tools).
DType stored_dtype(hid_t ds, const std::string& file, const std::string& key) {
  Hid t(h5::check(H5Dget_type(ds), file, "cannot read the type of '" + key + "'"), H5Tclose);
  const size_t size = H5Tget_size(t);
  const H5T_class_t cls = H5Tget_class(t);
  if (h5::has_attr(ds, "dtype")) {
    const std::string name = h5::read_attr_string(ds, "dtype", file, key);
    DType d;
    try {
      d = dtype_from_name(name);
    } catch (const Error&) {
      throw Error(fmt::format("{}: dataset '{}' has an unknown dtype attribute '{}'", file, key, name));
    }
    const bool is_float = d == kFloat32 || d == kFloat64;
    const bool ok = size == element_size(d) && (is_float ? cls == H5T_FLOAT : cls == H5T_INTEGER);
    LOWBIT_CHECK(ok, "{}: dataset '{}' says dtype {} but stores {}-byte {} elements", file, key, name, size,
                 cls == H5T_FLOAT     ? "floating-point"
                 : cls == H5T_INTEGER ? "integer"
                                      : "non-numeric");
    return d;
  }
  switch (cls) {
    case H5T_FLOAT:
      if (size == 4) return kFloat32;
      if (size == 8) return kFloat64;
      break;
    case H5T_INTEGER: {
      const bool is_signed = H5Tget_sign(t) == H5T_SGN_2;
      if (size == 1) return is_signed ? kInt8 : kUInt8;
      if (size == 4 && is_signed) return kInt32;
      if (size == 8 && is_signed) return kInt64;
      break;
    }
    default: break;
  }
  throw Error(fmt::format("{}: dataset '{}' has an HDF5 type lowbit cannot read (class {}, {} bytes)", file, key,
                          static_cast<int>(cls), size));
}

std::string to_h5_path(const std::string& root, const std::string& dotted) {
  std::string p = root;
  for (char c : dotted) p += c == '.' ? '/' : c;
  return p;
}

TensorMeta probe_tensor(hid_t ds, const std::string& fname, const std::string& h5path) {
  TensorMeta m;
  m.dtype = stored_dtype(ds, fname, h5path);
  const h5::DatasetMeta dm = h5::dataset_meta(ds, fname, h5path);
  m.shape.assign(dm.dims.begin(), dm.dims.end());
  m.stored_bytes = dm.stored_bytes;
  H5O_info_t oi;
  h5::check(H5Oget_info2(ds, &oi, H5O_INFO_BASIC), fname, "cannot stat '" + h5path + "'", 0);
  m.object_key = static_cast<uint64_t>(oi.addr);
  return m;
}

// Reads a dataset into a new tensor; its declared size was checked against its storage first.
Tensor read_tensor(hid_t file, const std::string& h5path, const std::string& fname,
                   const std::function<void(const TensorMeta&)>& check_before_read) {
  Hid ds = h5::open_dataset(file, h5path, fname);
  const TensorMeta meta = probe_tensor(ds, fname, h5path);
  if (check_before_read) check_before_read(meta);
  Tensor t = empty(meta.shape, meta.dtype);
  if (t.numel() > 0)
    h5::check(H5Dread(ds, h5_types(meta.dtype).mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw_data()), fname,
              "cannot read dataset '" + h5path + "' (checksum error or corrupted data)", 0);
  if (meta.dtype == kBool) {
    const auto* b = static_cast<const uint8_t*>(t.raw_data());
    for (int64_t i = 0; i < t.numel(); ++i)
      LOWBIT_CHECK(b[i] <= 1, "{}: bool dataset '{}' holds the value {} at index {}", fname, h5path, b[i], i);
  }
  return t;
}

OpenedFile open_checkpoint(const std::string& path) {
  h5::quiet();
  OpenedFile of;
  of.integrity = verify_integrity(path);
  LOWBIT_CHECK(H5Fis_hdf5(path.c_str()) > 0, "{}: not an HDF5 file", path);
  // sec2 driver, no file locking games; strong close so that no object outlives the file handle
  Hid fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
  of.file = Hid(h5::check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl), path, "cannot open as HDF5 (corrupted file?)"),
                H5Fclose);
  LOWBIT_CHECK(h5::has_attr(of.file, "format"),
               "{}: not a lowbit checkpoint (the root group has no 'format' attribute; see docs/checkpoint-format.md)",
               path);
  const std::string format = h5::read_attr_string(of.file, "format", path, "/");
  LOWBIT_CHECK(format == kFormatName, "{}: not a lowbit checkpoint (format is '{}', expected '{}')", path, format,
               kFormatName);
  const int64_t version = h5::read_attr_int(of.file, "schema_version", path, "/");
  LOWBIT_CHECK(version <= kSchemaVersion,
               "{}: schema version {} is newer than this lowbit ({}) supports; upgrade lowbit to read it", path,
               version, kSchemaVersion);
  LOWBIT_CHECK(version >= 1, "{}: invalid schema version {}", path, version);
  of.schema_version = version;
  of.kind = h5::has_attr(of.file, "kind") ? h5::read_attr_string(of.file, "kind", path, "/") : "model";
  LOWBIT_CHECK(of.kind == "training" || of.kind == "model", "{}: unknown checkpoint kind '{}'", path, of.kind);
  LOWBIT_CHECK(h5::hard_path_exists(of.file, "/model", path), "{}: missing group '/model'", path);
  return of;
}

// Dotted names of every dataset below a group, after walking it with h5::walk's checks.
std::vector<std::string> list_datasets(hid_t file, const std::string& group_path, const std::string& fname) {
  Hid g = h5::open_group(file, group_path, fname);
  std::vector<std::string> out;
  for (const auto& e : h5::walk(g, group_path, fname)) {
    if (e.type == H5O_TYPE_GROUP) continue;
    LOWBIT_CHECK(e.type == H5O_TYPE_DATASET, "{}: '{}/{}' is neither a group nor a dataset", fname, group_path, e.path);
    std::string dotted = e.path;
    for (char& c : dotted)
      if (c == '/') c = '.';
    out.push_back(dotted);
  }
  return out;
}

// Declared dtype/shape of every dataset under /model, keyed by dotted name (nothing read).
std::map<std::string, TensorMeta> probe_model_group(hid_t file, const std::string& fname) {
  std::map<std::string, TensorMeta> out;
  for (const auto& n : list_datasets(file, "/model", fname)) {
    const std::string p = to_h5_path("/model/", n);
    Hid ds = h5::open_dataset(file, p, fname);
    out[n] = probe_tensor(ds, fname, p);
  }
  return out;
}

// Reads the named datasets of /model; hard-linked aliases are read once and shared.
nn::NamedTensors read_model_group(hid_t file, const std::string& fname, const std::vector<std::string>& names,
                                  const std::map<std::string, TensorMeta>& metas) {
  nn::NamedTensors out;
  std::map<uint64_t, Tensor> by_object;
  for (const auto& n : names) {
    const uint64_t key = metas.at(n).object_key;
    auto it = by_object.find(key);
    if (it == by_object.end()) it = by_object.emplace(key, read_tensor(file, to_h5_path("/model/", n), fname)).first;
    out.emplace_back(n, it->second);
  }
  return out;
}

}  // namespace detail

using namespace detail;

namespace {
// A module group's own attributes, typed (module_type and module_index are the loader's).
nn::Attributes module_attributes(hid_t g, const std::string& file, const std::string& where) {
  nn::Attributes out;
  for (const std::string& name : h5::attr_names(g)) {
    if (name == "module_type" || name == "module_index") continue;
    Hid a(h5::check(H5Aopen(g, name.c_str(), H5P_DEFAULT), file, "cannot open attribute '" + name + "' on " + where),
          H5Aclose);
    Hid t(H5Aget_type(a), H5Tclose);
    switch (H5Tget_class(t)) {
      case H5T_STRING: out[name] = h5::read_attr_string(g, name, file, where); break;
      case H5T_FLOAT: out[name] = h5::read_attr_double(g, name, file, where); break;
      case H5T_INTEGER:
        if (h5::attr_is_list(g, name))
          out[name] = h5::read_attr_ints(g, name, file, where);
        else
          out[name] = h5::read_attr_int(g, name, file, where);
        break;
      default: throw Error(fmt::format("{}: attribute '{}' on {} has an unsupported type", file, name, where));
    }
  }
  return out;
}
}  // namespace

std::shared_ptr<nn::Module> load_model(const std::string& path) {
  qat::register_module_types();
  float8::register_module_types();
  mx::register_module_types();
  OpenedFile f = open_checkpoint(path);
  Hid model = h5::open_group(f.file, "/model", path);
  LOWBIT_CHECK(h5::has_attr(model, "module_type"),
               "{}: /model does not describe its modules (no 'module_type' attribute: a file written before lowbit "
               "stored module types); rebuild the model from its run config and use load_checkpoint",
               path);
  // the groups (module paths, dotted) and every tensor, read once under the usual checks
  std::vector<std::string> groups;
  for (const auto& e : h5::walk(model, "/model", path)) {
    if (e.type != H5O_TYPE_GROUP) continue;
    std::string dotted = e.path;
    for (char& c : dotted) c = c == '/' ? '.' : c;
    groups.push_back(dotted);
  }
  const auto metas = probe_model_group(f.file, path);
  std::vector<std::string> names;
  for (const auto& [n, _] : metas) names.push_back(n);
  const nn::NamedTensors tensors = read_model_group(f.file, path, names, metas);
  const auto parent_of = [](const std::string& dotted) {
    const auto dot = dotted.rfind('.');
    return dot == std::string::npos ? std::string() : dotted.substr(0, dot);
  };
  const auto leaf_of = [](const std::string& dotted) {
    const auto dot = dotted.rfind('.');
    return dot == std::string::npos ? dotted : dotted.substr(dot + 1);
  };
  // each group's own tensors and child groups, indexed once (a file may hold tens of thousands
  // of objects: no scan of every object per group)
  std::map<std::string, nn::NamedTensors> own_tensors;
  for (const auto& [n, t] : tensors) own_tensors[parent_of(n)].emplace_back(leaf_of(n), t);
  std::map<std::string, std::vector<std::string>> child_groups;
  for (const auto& c : groups)
    if (!c.empty()) child_groups[parent_of(c)].push_back(c);
  std::function<std::shared_ptr<nn::Module>(const std::string&)> build = [&](const std::string& dotted) {
    const std::string where = dotted.empty() ? "/model" : to_h5_path("/model/", dotted);
    Hid g = dotted.empty() ? h5::open_group(f.file, "/model", path) : h5::open_group(f.file, where, path);
    LOWBIT_CHECK(h5::has_attr(g, "module_type"), "{}: group '{}' has no 'module_type' attribute", path, where);
    const std::string type = h5::read_attr_string(g, "module_type", path, where);
    std::shared_ptr<nn::Module> m;
    try {
      m = nn::build_module(type, module_attributes(g, path, where), own_tensors[dotted]);
    } catch (const Error& e) {
      throw Error(fmt::format("{}: module '{}': {}", path, where, e.what()));
    }
    // children in the order they were registered (module_index), each built the same way
    std::vector<std::pair<int64_t, std::string>> children;
    for (const auto& c : child_groups[dotted]) {
      const std::string cpath = to_h5_path("/model/", c);
      Hid cg = h5::open_group(f.file, cpath, path);
      LOWBIT_CHECK(h5::has_attr(cg, "module_index"), "{}: group '{}' has no 'module_index' attribute", path, cpath);
      children.emplace_back(h5::read_attr_int(cg, "module_index", path, cpath), c);
    }
    std::sort(children.begin(), children.end());
    for (size_t i = 0; i < children.size(); ++i) {
      LOWBIT_CHECK(children[i].first == static_cast<int64_t>(i), "{}: the children of '{}' are not numbered 0..{}",
                   path, where, children.size() - 1);
      try {
        m->attach_child(leaf_of(children[i].second), build(children[i].second));
      } catch (const Error& e) {
        const std::string msg = e.what();
        if (msg.rfind(path, 0) == 0) throw;
        throw Error(fmt::format("{}: module '{}': {}", path, where, msg));
      }
    }
    try {
      m->check_loaded();
    } catch (const Error& e) {
      throw Error(fmt::format("{}: module '{}': {}", path, where, e.what()));
    }
    return m;
  };
  auto m = build("");
  m->eval();
  return m;
}

nn::NamedTensors read_model_tensors(const std::string& path) {
  OpenedFile f = open_checkpoint(path);
  const auto metas = probe_model_group(f.file, path);
  std::vector<std::string> names;
  for (const auto& [n, _] : metas) names.push_back(n);
  return read_model_group(f.file, path, names, metas);
}

LoadReport load_checkpoint(const std::string& path, nn::Module& model, optim::Optimizer* opt, optim::LRScheduler* sched,
                           data::DataLoader* loader, const LoadOptions& options) {
  OpenedFile f = open_checkpoint(path);
  LoadReport report;
  report.kind = f.kind;
  // ---- validate names, dtypes and shapes from metadata, then read only what will be loaded ----
  const auto stored = probe_model_group(f.file, path);
  std::vector<std::string> wanted;
  std::set<std::string> known;
  for (const auto& [name, t] : model.state_dict()) {
    known.insert(name);
    auto it = stored.find(name);
    if (it == stored.end()) {
      report.missing_keys.push_back(name);
      continue;
    }
    if (it->second.dtype != t.dtype()) {
      report.mismatched.push_back(fmt::format("{}: dtype {} in the file, {} in the model", name,
                                              dtype_name(it->second.dtype), dtype_name(t.dtype())));
      continue;
    }
    if (it->second.shape != t.shape()) {
      report.mismatched.push_back(fmt::format("{}: shape {} in the file, {} in the model", name,
                                              shape_str(it->second.shape), shape_str(t.shape())));
      continue;
    }
    wanted.push_back(name);
  }
  for (const auto& [name, _] : stored)
    if (!known.count(name)) report.unexpected_keys.push_back(name);
  if (options.strict &&
      (!report.missing_keys.empty() || !report.unexpected_keys.empty() || !report.mismatched.empty())) {
    std::string msg = fmt::format("{}: checkpoint does not match the model ({}):", path, model.type_name());
    for (const auto& k : report.missing_keys) msg += fmt::format("\n  missing key '{}'", k);
    for (const auto& k : report.unexpected_keys) msg += fmt::format("\n  unexpected key '{}'", k);
    for (const auto& k : report.mismatched) msg += fmt::format("\n  mismatch {}", k);
    throw Error(msg);
  }
  const nn::NamedTensors to_load = read_model_group(f.file, path, wanted, stored);

  std::optional<optim::OptimizerState> opt_state;
  if (opt) {
    LOWBIT_CHECK(f.kind == "training" && h5::hard_path_exists(f.file, "/optimizer", path),
                 "{}: no optimizer state in this file (kind '{}')", path, f.kind);
    Hid g = h5::open_group(f.file, "/optimizer", path);
    const std::string name = h5::read_attr_string(g, "name", path, "/optimizer");
    LOWBIT_CHECK(name == opt->name(), "{}: optimizer state was saved by {} but is being loaded into {}", path, name,
                 opt->name());
    const int64_t ngroups = h5::read_attr_int(g, "num_groups", path, "/optimizer");
    LOWBIT_CHECK(ngroups == static_cast<int64_t>(opt->param_groups().size()),
                 "{}: /optimizer has {} param groups, the optimizer has {}", path, ngroups, opt->param_groups().size());
    std::map<const TensorImpl*, std::string> param_names;
    for (const auto& [n, p] : model.named_parameters()) param_names[p.impl()] = n;
    optim::OptimizerState s;
    int64_t index = 0;
    for (int64_t gi = 0; gi < ngroups; ++gi) {
      const std::string gpath = fmt::format("/optimizer/param_groups/{}", gi);
      Hid gg = h5::open_group(f.file, gpath, path);
      optim::Options o;
      for (const auto& [k, _] : opt->param_groups()[static_cast<size_t>(gi)].options)
        o[k] = h5::read_attr_double(gg, k, path, gpath);
      s.groups.push_back(o);
      const auto names = h5::read_strings(gg, "params", path);
      const auto& params = opt->param_groups()[static_cast<size_t>(gi)].params;
      LOWBIT_CHECK(names.size() == params.size(), "{}: '{}' lists {} parameters, the optimizer's group has {}", path,
                   gpath, names.size(), params.size());
      s.group_params.emplace_back();
      for (size_t i = 0; i < names.size(); ++i) {
        auto it = param_names.find(params[i].impl());
        LOWBIT_CHECK(it != param_names.end() && it->second == names[i],
                     "{}: parameter {} of group {} is '{}' in the file but '{}' in the optimizer", path, i, gi,
                     names[i], it == param_names.end() ? "<not in the model>" : it->second);
        s.group_params.back().push_back(index);
        const std::string spath = to_h5_path("/optimizer/state/", names[i]);
        if (h5::hard_path_exists(f.file, spath, path)) {
          Hid sg = h5::open_group(f.file, spath, path);
          optim::ParamState ps;
          ps.step = h5::read_attr_int(sg, "step", path, spath);
          LOWBIT_CHECK(ps.step >= 0, "{}: optimizer state '{}' has step {} (corrupt file)", path, spath, ps.step);
          for (const auto& tn : list_datasets(f.file, spath, path)) {
            LOWBIT_CHECK(tn.find('.') == std::string::npos, "{}: unexpected nested group in '{}'", path, spath);
            const std::string tpath = spath + "/" + tn;
            // the declared dtype and shape are checked before anything is allocated
            Shape want;
            DType wdt;
            LOWBIT_CHECK(opt->state_layout(params[i], tn, want, wdt), "{}: unexpected optimizer state '{}' for {}",
                         path, tpath, opt->name());
            ps.tensors[tn] = read_tensor(f.file, tpath, path, [&](const TensorMeta& m) {
              LOWBIT_CHECK(m.dtype == wdt && m.shape == want,
                           "{}: optimizer state '{}' is {} {}, {} keeps it as {} {} (the parameter is {} {})", path,
                           tpath, shape_str(m.shape), dtype_name(m.dtype), opt->name(), shape_str(want),
                           dtype_name(wdt), shape_str(params[i].shape()), dtype_name(params[i].dtype()));
            });
            // what the state's codes mean (code book, block size, packing): checked when the file
            // records it (checkpoints written before these attributes existed carry none)
            const auto attrs = opt->state_attributes(params[i], tn);
            if (!attrs.empty()) {
              Hid ds = h5::open_dataset(f.file, tpath, path);
              for (const auto& a : attrs) {
                if (!h5::has_attr(ds, a.name)) continue;
                const std::string got = a.text.empty() ? std::to_string(h5::read_attr_int(ds, a.name, path, tpath))
                                                       : h5::read_attr_string(ds, a.name, path, tpath);
                const std::string want = a.text.empty() ? std::to_string(a.number) : a.text;
                LOWBIT_CHECK(got == want, "{}: optimizer state '{}' has {} = {}, but {} uses {} = {}", path, tpath,
                             a.name, got, opt->name(), a.name, want);
              }
            }
          }
          s.state[index] = std::move(ps);
        }
        ++index;
      }
    }
    opt_state = std::move(s);
  }
  if (f.kind == "training") {
    TrainingState st;
    st.step = h5::read_attr_int(f.file, "step", path, "/");
    if (h5::has_attr(f.file, "phase")) {
      st.phase = h5::read_attr_string(f.file, "phase", path, "/");
      LOWBIT_CHECK(st.phase == "train" || st.phase == "qat", "{}: unknown training phase '{}' (train, qat)", path,
                   st.phase);
    }
    LOWBIT_CHECK(st.step >= 0, "{}: the stored step is {} (corrupt file)", path, st.step);
    st.config_toml = h5::read_attr_string(f.file, "config", path, "/");
    Hid rng = h5::open_group(f.file, "/rng", path);
    st.rng_seed = h5::read_attr_u64(rng, "default_seed", path, "/rng");
    st.rng_offset = h5::read_attr_u64(rng, "default_offset", path, "/rng");
    Hid dg = h5::open_group(f.file, "/data", path);
    st.epoch = h5::read_attr_int(dg, "epoch", path, "/data");
    st.position = h5::read_attr_int(dg, "position", path, "/data");
    LOWBIT_CHECK(st.epoch >= 0 && st.position >= 0,
                 "{}: the stored data position (epoch {}, batch {}) is negative (corrupt file)", path, st.epoch,
                 st.position);
    st.loader_seed = h5::read_attr_u64(dg, "shuffle_seed", path, "/data");
    if (h5::hard_path_exists(f.file, "/scheduler", path)) {
      Hid sg = h5::open_group(f.file, "/scheduler", path);
      st.scheduler_last_epoch = h5::read_attr_int(sg, "last_epoch", path, "/scheduler");
      st.scheduler_name = h5::read_attr_string(sg, "name", path, "/scheduler");
      if (sched && h5::has_attr(sg, "class")) {
        const std::string cls = h5::read_attr_string(sg, "class", path, "/scheduler");
        LOWBIT_CHECK(cls == sched->name(), "{}: the scheduler state was saved by {} but is being loaded into {}", path,
                     cls, sched->name());
      }
    }
    LOWBIT_CHECK(!sched || st.scheduler_last_epoch >= 0, "{}: no scheduler state in this file", path);
    if (loader) {
      LOWBIT_CHECK(st.loader_seed == loader->options().seed,
                   "{}: data was shuffled with seed {}, the loader uses seed {}", path, st.loader_seed,
                   loader->options().seed);
      LOWBIT_CHECK(st.position <= loader->num_batches() && st.epoch >= 0,
                   "{}: data position (epoch {}, batch {}) is out of range for this loader ({} batches)", path,
                   st.epoch, st.position, loader->num_batches());
    }
    report.state = st;
  } else {
    LOWBIT_CHECK(!sched && !loader, "{}: a model-only file has no scheduler or data-loader state", path);
  }

  // ---- apply ----
  model.load_state_dict(to_load, /*strict=*/false);
  if (opt && opt_state) opt->load_state_dict(*opt_state);
  if (report.state) {
    default_generator().set_state(report.state->rng_seed, report.state->rng_offset);
    if (loader) loader->seek(report.state->epoch, report.state->position);
    if (sched) sched->set_last_epoch(report.state->scheduler_last_epoch);
  }
  return report;
}

}  // namespace lowbit::io
