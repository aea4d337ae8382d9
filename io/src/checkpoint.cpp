#include "lowbit/io/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "h5.h"
#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/generator.h"
#include "lowbit/data/dataset.h"

#ifndef LOWBIT_VERSION
#define LOWBIT_VERSION "unknown"
#endif

namespace lowbit::io {

using h5::Hid;

namespace {
// ---------------- user block: whole-file integrity ----------------
constexpr size_t kUserBlock = 512;
constexpr char kMagic[8] = {'L', 'O', 'W', 'B', 'I', 'T', 'C', 'K'};
struct UserBlockHeader {
  char magic[8];
  uint32_t version;
  uint32_t crc32;
  uint64_t hdf5_bytes;  // bytes after the user block
};

uint32_t crc_of_file(std::ifstream& in, uint64_t offset, uint64_t len) {
  in.seekg(static_cast<std::streamoff>(offset));
  std::vector<char> buf(1 << 20);
  uLong crc = crc32(0L, Z_NULL, 0);
  uint64_t left = len;
  while (left > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
    in.read(buf.data(), static_cast<std::streamsize>(n));
    if (static_cast<size_t>(in.gcount()) != n) return crc ^ 0xffffffffu;  // short read: cannot match
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buf.data()), static_cast<uInt>(n));
    left -= n;
  }
  return static_cast<uint32_t>(crc);
}

// Returns true when the file carries lowbit's user block (and it verified); throws on mismatch.
bool verify_integrity(const std::string& path) {
  namespace fs = std::filesystem;
  LOWBIT_CHECK(fs::exists(path), "{}: no such file", path);
  LOWBIT_CHECK(fs::is_regular_file(path), "{}: not a regular file", path);
  const uint64_t size = fs::file_size(path);
  std::ifstream in(path, std::ios::binary);
  LOWBIT_CHECK(in.good(), "{}: cannot open for reading", path);
  UserBlockHeader h{};
  in.read(reinterpret_cast<char*>(&h), sizeof(h));
  if (in.gcount() != sizeof(h) || std::memcmp(h.magic, kMagic, 8) != 0) return false;
  LOWBIT_CHECK(h.version == 1, "{}: unknown integrity header version {}", path, h.version);
  LOWBIT_CHECK(size >= kUserBlock && h.hdf5_bytes == size - kUserBlock,
               "{}: file is truncated or was extended: header records {} bytes of data, the file has {} (the checkpoint is corrupted)", path,
               h.hdf5_bytes, size >= kUserBlock ? size - kUserBlock : 0);
  const uint32_t crc = crc_of_file(in, kUserBlock, h.hdf5_bytes);
  LOWBIT_CHECK(crc == h.crc32, "{}: checksum mismatch (stored CRC-32 {:08x}, computed {:08x}): the checkpoint is corrupted", path, h.crc32, crc);
  return true;
}

void write_integrity(const std::string& path) {
  const uint64_t size = std::filesystem::file_size(path);
  LOWBIT_CHECK(size >= kUserBlock, "{}: written file is shorter than its user block", path);
  uint32_t crc;
  {
    std::ifstream in(path, std::ios::binary);
    crc = crc_of_file(in, kUserBlock, size - kUserBlock);
  }
  UserBlockHeader h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = 1;
  h.crc32 = crc;
  h.hdf5_bytes = size - kUserBlock;
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  f.seekp(0);
  f.write(reinterpret_cast<const char*>(&h), sizeof(h));
  f.flush();
  LOWBIT_CHECK(f.good(), "{}: cannot write the integrity header", path);
}

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// ---------------- dtypes ----------------
struct H5Types {
  hid_t file, mem;
};
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
  }
  return {H5T_STD_U8LE, H5T_NATIVE_UINT8};
}
// dtype a stored dataset holds: the "dtype" attribute when present (a fixed list of names),
// otherwise derived from the HDF5 type (files written by other tools).
DType stored_dtype(hid_t ds, const std::string& file, const std::string& key) {
  if (h5::has_attr(ds, "dtype")) return dtype_from_name(h5::read_attr_string(ds, "dtype", file, key));
  Hid t(H5Dget_type(ds), H5Tclose);
  const size_t size = H5Tget_size(t);
  switch (H5Tget_class(t)) {
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
  throw Error(fmt::format("{}: dataset '{}' has an HDF5 type lowbit cannot read (class {}, {} bytes)", file, key, static_cast<int>(H5Tget_class(t)), size));
}

std::string to_h5_path(const std::string& root, const std::string& dotted) {
  std::string p = root;
  for (char c : dotted) p += c == '.' ? '/' : c;
  return p;
}

Hid lcpl_intermediate() {
  Hid p(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(p, 1);
  return p;
}

void write_tensor(hid_t file, const std::string& h5path, const Tensor& t_in, const SaveOptions& opts, const std::string& fname) {
  const Tensor t = t_in.detach();
  const int rank = static_cast<int>(t.dim());
  std::vector<hsize_t> dims(t.shape().begin(), t.shape().end());
  Hid space(rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims.data(), nullptr), H5Sclose);
  Hid dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (rank > 0 && t.numel() > 0) {
    // chunks of about 1 MiB along the first dim, so Fletcher32 (and deflate) apply
    std::vector<hsize_t> chunk = dims;
    const uint64_t row_bytes = t.nbytes() / static_cast<uint64_t>(dims[0]);
    chunk[0] = std::max<hsize_t>(1, std::min<hsize_t>(dims[0], (1u << 20) / std::max<uint64_t>(row_bytes, 1)));
    H5Pset_chunk(dcpl, rank, chunk.data());
    if (opts.gzip_level > 0) {
      H5Pset_shuffle(dcpl);
      H5Pset_deflate(dcpl, static_cast<unsigned>(std::min(opts.gzip_level, 9)));
    }
    H5Pset_fletcher32(dcpl);
  }
  const auto types = h5_types(t.dtype());
  Hid lcpl = lcpl_intermediate();
  Hid ds(h5::check(H5Dcreate2(file, h5path.c_str(), types.file, space, lcpl, dcpl, H5P_DEFAULT), fname, "cannot create dataset '" + h5path + "'"), H5Dclose);
  if (t.numel() > 0) h5::check(H5Dwrite(ds, types.mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw_data()), fname, "cannot write dataset '" + h5path + "'", 0);
  h5::write_attr(ds, "dtype", std::string(dtype_name(t.dtype())), fname);
}

// Reads a dataset into a new tensor after checking its rank/size are sane.
Tensor read_tensor(hid_t file, const std::string& h5path, const std::string& fname) {
  Hid ds(h5::check(H5Dopen2(file, h5path.c_str(), H5P_DEFAULT), fname, "cannot open dataset '" + h5path + "'"), H5Dclose);
  const DType dt = stored_dtype(ds, fname, h5path);
  Hid space(H5Dget_space(ds), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space);
  LOWBIT_CHECK(rank >= 0 && rank <= 8, "{}: dataset '{}' has rank {} (lowbit supports up to 8)", fname, h5path, rank);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  Shape shape(dims.begin(), dims.end());
  const uint64_t n = static_cast<uint64_t>(detail::numel_of(shape));
  LOWBIT_CHECK(n < (uint64_t{1} << 34), "{}: dataset '{}' claims {} elements", fname, h5path, n);
  // the stored element size must match the declared dtype
  Hid ft(H5Dget_type(ds), H5Tclose);
  LOWBIT_CHECK(H5Tget_size(ft) == element_size(dt), "{}: dataset '{}' says dtype {} but stores {}-byte elements", fname, h5path, dtype_name(dt),
               H5Tget_size(ft));
  Tensor t = empty(shape, dt);
  if (n > 0)
    h5::check(H5Dread(ds, h5_types(dt).mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw_data()), fname,
              "cannot read dataset '" + h5path + "' (checksum error or corrupted data)", 0);
  return t;
}

// Opens a file for reading after the integrity check; validates the root attributes.
struct OpenedFile {
  Hid file;
  std::string kind;
  bool integrity = false;
};
OpenedFile open_checkpoint(const std::string& path) {
  h5::quiet();
  OpenedFile of;
  of.integrity = verify_integrity(path);
  LOWBIT_CHECK(H5Fis_hdf5(path.c_str()) > 0, "{}: not an HDF5 file", path);
  of.file = Hid(h5::check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), path, "cannot open as HDF5 (corrupted file?)"), H5Fclose);
  LOWBIT_CHECK(h5::has_attr(of.file, "format"), "{}: not a lowbit checkpoint (the root group has no 'format' attribute; see docs/checkpoint-format.md)", path);
  const std::string format = h5::read_attr_string(of.file, "format", path, "/");
  LOWBIT_CHECK(format == kFormatName, "{}: not a lowbit checkpoint (format is '{}', expected '{}')", path, format, kFormatName);
  const int64_t version = h5::read_attr_int(of.file, "schema_version", path, "/");
  LOWBIT_CHECK(version <= kSchemaVersion, "{}: schema version {} is newer than this lowbit ({}) supports; upgrade lowbit to read it", path, version,
               kSchemaVersion);
  LOWBIT_CHECK(version >= 1, "{}: invalid schema version {}", path, version);
  of.kind = h5::has_attr(of.file, "kind") ? h5::read_attr_string(of.file, "kind", path, "/") : "model";
  LOWBIT_CHECK(of.kind == "training" || of.kind == "model", "{}: unknown checkpoint kind '{}'", path, of.kind);
  LOWBIT_CHECK(h5::link_exists(of.file, "/model"), "{}: missing group '/model'", path);
  return of;
}

// Dotted names of every dataset under /model (hard-linked aliases appear under each name).
void list_datasets(hid_t loc, const std::string& prefix, std::vector<std::string>& out, const std::string& file, int depth = 0) {
  LOWBIT_CHECK(depth < 32, "{}: groups nested deeper than 32 levels under /model", file);
  H5G_info_t info;
  h5::check(H5Gget_info(loc, &info), file, "cannot list group '" + prefix + "'", 0);
  LOWBIT_CHECK(info.nlinks < 1000000, "{}: group '{}' has an implausible number of members", file, prefix);
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    char name[1024] = {0};
    if (H5Lget_name_by_idx(loc, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof(name), H5P_DEFAULT) < 0) throw Error(fmt::format("{}: cannot read member {} of '{}'", file, i, prefix));
    H5O_info_t oi;
    h5::check(H5Oget_info_by_name2(loc, name, &oi, H5O_INFO_BASIC, H5P_DEFAULT), file, fmt::format("cannot stat '{}/{}'", prefix, name), 0);
    const std::string dotted = prefix.empty() ? name : prefix + "." + name;
    if (oi.type == H5O_TYPE_DATASET) {
      out.push_back(dotted);
    } else if (oi.type == H5O_TYPE_GROUP) {
      Hid g(h5::check(H5Gopen2(loc, name, H5P_DEFAULT), file, "cannot open group '" + dotted + "'"), H5Gclose);
      list_datasets(g, dotted, out, file, depth + 1);
    }
  }
}

nn::NamedTensors read_model_group(hid_t file, const std::string& fname) {
  Hid model(h5::check(H5Gopen2(file, "/model", H5P_DEFAULT), fname, "cannot open group '/model'"), H5Gclose);
  std::vector<std::string> names;
  list_datasets(model, "", names, fname);
  nn::NamedTensors out;
  for (const auto& n : names) out.emplace_back(n, read_tensor(file, to_h5_path("/model/", n), fname));
  return out;
}

void write_model_group(hid_t file, const nn::Module& model, const SaveOptions& opts, const std::string& fname) {
  Hid g(h5::check(H5Gcreate2(file, "/model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), fname, "cannot create '/model'"), H5Gclose);
  std::map<const TensorImpl*, std::string> written;
  Hid lcpl = lcpl_intermediate();
  for (const auto& [name, t] : model.state_dict()) {
    LOWBIT_CHECK(name.find('/') == std::string::npos, "{}: tensor name '{}' contains '/'", fname, name);
    const std::string path = to_h5_path("/model/", name);
    auto it = written.find(t.impl());
    if (it != written.end()) {  // a tied tensor: a hard link, stored once
      h5::check(H5Lcreate_hard(file, it->second.c_str(), file, path.c_str(), lcpl, H5P_DEFAULT), fname, "cannot link '" + path + "'", 0);
      continue;
    }
    write_tensor(file, path, t, opts, fname);
    written[t.impl()] = path;
  }
  // modules that describe themselves (quantized linears) get their attributes on their group
  for (const auto& [name, m] : const_cast<nn::Module&>(model).named_modules()) {
    const auto attrs = m->checkpoint_attributes();
    if (attrs.empty()) continue;
    const std::string path = name.empty() ? std::string("/model") : to_h5_path("/model/", name);
    LOWBIT_CHECK(h5::link_exists(file, path), "{}: module '{}' has attributes but no tensors", fname, name);
    Hid grp(h5::check(H5Gopen2(file, path.c_str(), H5P_DEFAULT), fname, "cannot open '" + path + "'"), H5Gclose);
    for (const auto& [k, v] : attrs) h5::write_attr(grp, k, v, fname);
  }
}

Hid create_file(const std::string& tmp, const std::string& target) {
  h5::quiet();
  Hid fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  H5Pset_userblock(fcpl, kUserBlock);
  return Hid(h5::check(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, fcpl, H5P_DEFAULT), target, "cannot create temporary file '" + tmp + "'"), H5Fclose);
}

void write_root_attrs(hid_t file, const std::string& kind, const std::string& config, const std::string& fname) {
  h5::write_attr(file, "format", std::string(kFormatName), fname);
  h5::write_attr(file, "schema_version", kSchemaVersion, fname);
  h5::write_attr(file, "lowbit_version", std::string(LOWBIT_VERSION), fname);
  h5::write_attr(file, "kind", kind, fname);
  h5::write_attr(file, "config", config, fname);
}

// Closes, checksums, fsyncs and renames the temporary file over the target.
void commit(Hid& file, const std::string& tmp, const std::string& target) {
  h5::check(H5Fflush(file, H5F_SCOPE_GLOBAL), target, "cannot flush", 0);
  file.reset();
  write_integrity(tmp);
  fsync_path(tmp, false);
  std::error_code ec;
  std::filesystem::rename(tmp, target, ec);
  LOWBIT_CHECK(!ec, "{}: cannot rename temporary file '{}' into place: {}", target, tmp, ec.message());
  const auto dir = std::filesystem::absolute(target).parent_path().string();
  fsync_path(dir, true);
}

std::string temp_name(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

template <typename F>
void atomic_write(const std::string& path, F&& body) {
  const std::string tmp = temp_name(path);
  try {
    Hid file = create_file(tmp, path);
    body(static_cast<hid_t>(file));
    commit(file, tmp, path);
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
}
}  // namespace

void export_model(const std::string& path, const nn::Module& model, const std::string& config, const SaveOptions& opts) {
  atomic_write(path, [&](hid_t file) {
    write_root_attrs(file, "model", config, path);
    write_model_group(file, model, opts, path);
  });
}

void save_checkpoint(const std::string& path, const nn::Module& model, const optim::Optimizer* opt, const optim::LRScheduler* sched,
                     const data::DataLoader* loader, TrainingState st, const SaveOptions& opts) {
  // names of the model's parameters, to key optimizer state by name
  std::map<const TensorImpl*, std::string> param_names;
  for (const auto& [n, p] : model.named_parameters()) param_names[p.impl()] = n;
  if (loader) {
    st.epoch = loader->epoch();
    st.position = loader->position();
    st.loader_seed = loader->options().seed;
  }
  if (sched) st.scheduler_last_epoch = sched->last_epoch();
  st.rng_seed = default_generator().seed();
  st.rng_offset = default_generator().offset();
  atomic_write(path, [&](hid_t file) {
    write_root_attrs(file, "training", st.config_toml, path);
    h5::write_attr(file, "step", st.step, path);
    write_model_group(file, model, opts, path);
    {
      Hid g(h5::check(H5Gcreate2(file, "/rng", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), path, "cannot create '/rng'"), H5Gclose);
      h5::write_attr_u64(g, "default_seed", st.rng_seed, path);
      h5::write_attr_u64(g, "default_offset", st.rng_offset, path);
    }
    {
      Hid g(h5::check(H5Gcreate2(file, "/data", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), path, "cannot create '/data'"), H5Gclose);
      h5::write_attr(g, "epoch", st.epoch, path);
      h5::write_attr(g, "position", st.position, path);
      h5::write_attr_u64(g, "shuffle_seed", st.loader_seed, path);
    }
    if (st.scheduler_last_epoch >= 0) {
      Hid g(h5::check(H5Gcreate2(file, "/scheduler", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), path, "cannot create '/scheduler'"), H5Gclose);
      h5::write_attr(g, "last_epoch", st.scheduler_last_epoch, path);
      h5::write_attr(g, "name", st.scheduler_name, path);
    }
    if (opt) {
      Hid g(h5::check(H5Gcreate2(file, "/optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), path, "cannot create '/optimizer'"), H5Gclose);
      h5::write_attr(g, "name", opt->name(), path);
      const optim::OptimizerState s = opt->state_dict();
      const auto& groups = opt->param_groups();
      h5::write_attr(g, "num_groups", static_cast<int64_t>(groups.size()), path);
      std::vector<std::string> index_to_name;
      for (size_t gi = 0; gi < groups.size(); ++gi) {
        const std::string gpath = fmt::format("/optimizer/param_groups/{}", gi);
        Hid lcpl = lcpl_intermediate();
        Hid gg(h5::check(H5Gcreate2(file, gpath.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT), path, "cannot create '" + gpath + "'"), H5Gclose);
        for (const auto& [k, v] : groups[gi].options) h5::write_attr(gg, k, v, path);
        std::vector<std::string> names;
        for (const auto& p : groups[gi].params) {
          auto it = param_names.find(p.impl());
          LOWBIT_CHECK(it != param_names.end(), "{}: the optimizer holds a parameter of shape {} that is not a parameter of the model", path,
                       shape_str(p.shape()));
          names.push_back(it->second);
          index_to_name.push_back(it->second);
        }
        h5::write_strings(gg, "params", names, path);
      }
      for (const auto& [index, ps] : s.state) {
        const std::string spath = to_h5_path("/optimizer/state/", index_to_name[static_cast<size_t>(index)]);
        Hid lcpl = lcpl_intermediate();
        Hid sg(h5::check(H5Gcreate2(file, spath.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT), path, "cannot create '" + spath + "'"), H5Gclose);
        h5::write_attr(sg, "step", ps.step, path);
        for (const auto& [name, t] : ps.tensors) write_tensor(file, spath + "/" + name, t, opts, path);
      }
    }
  });
}

nn::NamedTensors read_model_tensors(const std::string& path) {
  OpenedFile f = open_checkpoint(path);
  return read_model_group(f.file, path);
}

LoadReport load_checkpoint(const std::string& path, nn::Module& model, optim::Optimizer* opt, optim::LRScheduler* sched, data::DataLoader* loader,
                           const LoadOptions& options) {
  OpenedFile f = open_checkpoint(path);
  LoadReport report;
  report.kind = f.kind;
  // ---- read and validate everything before touching the caller's objects ----
  const nn::NamedTensors stored = read_model_group(f.file, path);
  std::map<std::string, Tensor> by_name(stored.begin(), stored.end());
  nn::NamedTensors to_load;
  std::set<std::string> known;
  for (const auto& [name, t] : model.state_dict()) {
    known.insert(name);
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      report.missing_keys.push_back(name);
      continue;
    }
    if (it->second.dtype() != t.dtype()) {
      report.mismatched.push_back(fmt::format("{}: dtype {} in the file, {} in the model", name, dtype_name(it->second.dtype()), dtype_name(t.dtype())));
      continue;
    }
    if (it->second.shape() != t.shape()) {
      report.mismatched.push_back(fmt::format("{}: shape {} in the file, {} in the model", name, shape_str(it->second.shape()), shape_str(t.shape())));
      continue;
    }
    to_load.emplace_back(name, it->second);
  }
  for (const auto& [name, _] : stored)
    if (!known.count(name)) report.unexpected_keys.push_back(name);
  if (options.strict && (!report.missing_keys.empty() || !report.unexpected_keys.empty() || !report.mismatched.empty())) {
    std::string msg = fmt::format("{}: checkpoint does not match the model ({}):", path, model.type_name());
    for (const auto& k : report.missing_keys) msg += fmt::format("\n  missing key '{}'", k);
    for (const auto& k : report.unexpected_keys) msg += fmt::format("\n  unexpected key '{}'", k);
    for (const auto& k : report.mismatched) msg += fmt::format("\n  mismatch {}", k);
    throw Error(msg);
  }

  std::optional<optim::OptimizerState> opt_state;
  if (opt) {
    LOWBIT_CHECK(f.kind == "training" && h5::link_exists(f.file, "/optimizer"), "{}: no optimizer state in this file (kind '{}')", path, f.kind);
    Hid g(h5::check(H5Gopen2(f.file, "/optimizer", H5P_DEFAULT), path, "cannot open '/optimizer'"), H5Gclose);
    const std::string name = h5::read_attr_string(g, "name", path, "/optimizer");
    LOWBIT_CHECK(name == opt->name(), "{}: optimizer state was saved by {} but is being loaded into {}", path, name, opt->name());
    const int64_t ngroups = h5::read_attr_int(g, "num_groups", path, "/optimizer");
    LOWBIT_CHECK(ngroups == static_cast<int64_t>(opt->param_groups().size()), "{}: /optimizer has {} param groups, the optimizer has {}", path, ngroups,
                 opt->param_groups().size());
    std::map<const TensorImpl*, std::string> param_names;
    for (const auto& [n, p] : model.named_parameters()) param_names[p.impl()] = n;
    optim::OptimizerState s;
    int64_t index = 0;
    for (int64_t gi = 0; gi < ngroups; ++gi) {
      const std::string gpath = fmt::format("/optimizer/param_groups/{}", gi);
      LOWBIT_CHECK(h5::link_exists(f.file, gpath), "{}: missing group '{}'", path, gpath);
      Hid gg(h5::check(H5Gopen2(f.file, gpath.c_str(), H5P_DEFAULT), path, "cannot open '" + gpath + "'"), H5Gclose);
      optim::Options o;
      for (const auto& [k, _] : opt->param_groups()[static_cast<size_t>(gi)].options) o[k] = h5::read_attr_double(gg, k, path, gpath);
      s.groups.push_back(o);
      const auto names = h5::read_strings(gg, "params", path);
      const auto& params = opt->param_groups()[static_cast<size_t>(gi)].params;
      LOWBIT_CHECK(names.size() == params.size(), "{}: '{}' lists {} parameters, the optimizer's group has {}", path, gpath, names.size(), params.size());
      s.group_params.emplace_back();
      for (size_t i = 0; i < names.size(); ++i) {
        auto it = param_names.find(params[i].impl());
        LOWBIT_CHECK(it != param_names.end() && it->second == names[i], "{}: parameter {} of group {} is '{}' in the file but '{}' in the optimizer", path, i,
                     gi, names[i], it == param_names.end() ? "<not in the model>" : it->second);
        s.group_params.back().push_back(index);
        const std::string spath = to_h5_path("/optimizer/state/", names[i]);
        if (h5::link_exists(f.file, spath)) {
          Hid sg(h5::check(H5Gopen2(f.file, spath.c_str(), H5P_DEFAULT), path, "cannot open '" + spath + "'"), H5Gclose);
          optim::ParamState ps;
          ps.step = h5::read_attr_int(sg, "step", path, spath);
          std::vector<std::string> tensors;
          list_datasets(sg, "", tensors, path);
          for (const auto& tn : tensors) {
            LOWBIT_CHECK(tn.find('.') == std::string::npos, "{}: unexpected nested group in '{}'", path, spath);
            Tensor t = read_tensor(f.file, spath + "/" + tn, path);
            LOWBIT_CHECK(t.dtype() == kFloat32 && t.shape() == params[i].shape(), "{}: optimizer state '{}/{}' is {} {}, the parameter is {} float32", path,
                         spath, tn, shape_str(t.shape()), dtype_name(t.dtype()), shape_str(params[i].shape()));
            ps.tensors[tn] = t;
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
    st.config_toml = h5::read_attr_string(f.file, "config", path, "/");
    Hid rng(h5::check(H5Gopen2(f.file, "/rng", H5P_DEFAULT), path, "missing group '/rng'"), H5Gclose);
    st.rng_seed = h5::read_attr_u64(rng, "default_seed", path, "/rng");
    st.rng_offset = h5::read_attr_u64(rng, "default_offset", path, "/rng");
    Hid dg(h5::check(H5Gopen2(f.file, "/data", H5P_DEFAULT), path, "missing group '/data'"), H5Gclose);
    st.epoch = h5::read_attr_int(dg, "epoch", path, "/data");
    st.position = h5::read_attr_int(dg, "position", path, "/data");
    st.loader_seed = h5::read_attr_u64(dg, "shuffle_seed", path, "/data");
    if (h5::link_exists(f.file, "/scheduler")) {
      Hid sg(h5::check(H5Gopen2(f.file, "/scheduler", H5P_DEFAULT), path, "cannot open '/scheduler'"), H5Gclose);
      st.scheduler_last_epoch = h5::read_attr_int(sg, "last_epoch", path, "/scheduler");
      st.scheduler_name = h5::read_attr_string(sg, "name", path, "/scheduler");
    }
    LOWBIT_CHECK(!sched || st.scheduler_last_epoch >= 0, "{}: no scheduler state in this file", path);
    if (loader) {
      LOWBIT_CHECK(st.loader_seed == loader->options().seed, "{}: data was shuffled with seed {}, the loader uses seed {}", path, st.loader_seed,
                   loader->options().seed);
      LOWBIT_CHECK(st.position <= loader->num_batches() && st.epoch >= 0, "{}: data position (epoch {}, batch {}) is out of range for this loader ({} batches)",
                   path, st.epoch, st.position, loader->num_batches());
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

FileInfo inspect(const std::string& path) {
  OpenedFile f = open_checkpoint(path);
  FileInfo info;
  info.integrity_checked = f.integrity;
  info.file_bytes = std::filesystem::file_size(path);
  for (auto& [k, v] : h5::attrs_as_text(f.file)) info.attributes[k] = v;
  // visit each stored object once (hard-linked aliases are not double counted)
  struct Ctx {
    FileInfo* info;
    std::string file;
    std::set<std::pair<unsigned long, haddr_t>> seen;
  } ctx{&info, path, {}};
  Hid model(H5Gopen2(f.file, "/model", H5P_DEFAULT), H5Gclose);
  auto visit = [](hid_t loc, const char* name, const H5O_info_t* oi, void* data) -> herr_t {
    auto* c = static_cast<Ctx*>(data);
    if (oi->type == H5O_TYPE_GROUP) return 0;
    if (oi->type != H5O_TYPE_DATASET) return 0;
    Hid ds(H5Dopen2(loc, name, H5P_DEFAULT), H5Dclose);
    if (!ds.valid()) return -1;
    TensorInfo ti;
    ti.path = std::string("/model/") + name;
    {  // the scheme of the enclosing quantized group, if any
      std::string parent = name;
      const auto slash = parent.rfind('/');
      parent = slash == std::string::npos ? "." : parent.substr(0, slash);
      if (H5Aexists_by_name(loc, parent.c_str(), "quant_scheme", H5P_DEFAULT) > 0) {
        Hid pg(H5Gopen2(loc, parent.c_str(), H5P_DEFAULT), H5Gclose);
        if (pg.valid()) ti.scheme = h5::read_attr_string(pg, "quant_scheme", c->file, parent) + " " + h5::read_attr_string(pg, "dtype", c->file, parent);
      }
    }
    try {
      ti.dtype = dtype_name(stored_dtype(ds, c->file, ti.path));
    } catch (const Error&) {
      return -1;
    }
    Hid space(H5Dget_space(ds), H5Sclose);
    const int rank = H5Sget_simple_extent_ndims(space);
    if (rank < 0 || rank > 8) return -1;
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    if (rank) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
    ti.shape.assign(dims.begin(), dims.end());
    const int64_t n = detail::numel_of(ti.shape);
    ti.logical_bytes = static_cast<uint64_t>(n) * element_size(dtype_from_name(ti.dtype));
    ti.bytes = H5Dget_storage_size(ds);
    // a quantized module's codes stand for its logical weight ("shape" attribute); its scales and
    // zero points are overhead, not parameters
    int64_t logical = n;
    const std::string leaf = ti.path.substr(ti.path.rfind('/') + 1);
    if (!ti.scheme.empty() && (leaf == "scale" || leaf == "zero_point")) logical = 0;
    if (!ti.scheme.empty() && leaf == "qdata") {
      std::string parent = name;
      parent = parent.rfind('/') == std::string::npos ? "." : parent.substr(0, parent.rfind('/'));
      Hid pg(H5Gopen2(loc, parent.c_str(), H5P_DEFAULT), H5Gclose);
      if (pg.valid() && h5::has_attr(pg, "shape")) {
        const std::string shp = h5::read_attr_string(pg, "shape", c->file, parent);
        logical = 1;
        for (size_t i = 0; i < shp.size();) {
          if (std::isdigit(static_cast<unsigned char>(shp[i]))) {
            size_t used = 0;
            logical *= std::stoll(shp.substr(i), &used);
            i += used;
          } else {
            ++i;
          }
        }
      }
    }
    c->info->parameters += logical;
    c->info->stored_bytes += ti.bytes;
    c->info->float32_bytes += static_cast<uint64_t>(logical) * 4;
    c->info->tensors.push_back(ti);
    return 0;
  };
  h5::check(H5Ovisit2(model, H5_INDEX_NAME, H5_ITER_INC, visit, &ctx, H5O_INFO_BASIC), path, "cannot walk '/model' (corrupted file?)", 0);
  return info;
}

}  // namespace lowbit::io
