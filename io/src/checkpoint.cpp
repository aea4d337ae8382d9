#include "lowbit/io/checkpoint.h"

#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <cctype>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
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
               "{}: file is truncated or was extended: header records {} bytes of data, the file has {} (the "
               "checkpoint is corrupted)",
               path, h.hdf5_bytes, size >= kUserBlock ? size - kUserBlock : 0);
  const uint32_t crc = crc_of_file(in, kUserBlock, h.hdf5_bytes);
  LOWBIT_CHECK(crc == h.crc32,
               "{}: checksum mismatch (stored CRC-32 {:08x}, computed {:08x}): the checkpoint is corrupted", path,
               h.crc32, crc);
  return true;
}

// Stamps the integrity header into the user block of an in-memory file image.
std::string errno_text(int e) {
  std::string m = std::strerror(e);
  if (!m.empty()) m[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(m[0])));
  return fmt::format("{} (errno {})", m, e);
}

// Writes the integrity header into the user block of a finished HDF5 image held in fd: the CRC-32
// of everything after the user block.
void stamp_integrity(int fd, const std::string& target) {
  struct stat sb {};
  LOWBIT_CHECK(::fstat(fd, &sb) == 0 && static_cast<uint64_t>(sb.st_size) >= kUserBlock,
               "{}: the HDF5 image is shorter than its user block", target);
  UserBlockHeader h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = 1;
  h.hdf5_bytes = static_cast<uint64_t>(sb.st_size) - kUserBlock;
  std::vector<char> buf(size_t{4} << 20);
  uLong crc = crc32(0L, Z_NULL, 0);
  for (uint64_t off = kUserBlock; off < static_cast<uint64_t>(sb.st_size);) {
    const ssize_t n = ::pread(fd, buf.data(), std::min<uint64_t>(buf.size(), static_cast<uint64_t>(sb.st_size) - off),
                              static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    LOWBIT_CHECK(n > 0, "{}: cannot read back the HDF5 image: {}", target,
                 n < 0 ? errno_text(errno) : "unexpected end of file");
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buf.data()), static_cast<uInt>(n));
    off += static_cast<uint64_t>(n);
  }
  h.crc32 = static_cast<uint32_t>(crc);
  LOWBIT_CHECK(::pwrite(fd, &h, sizeof(h), 0) == static_cast<ssize_t>(sizeof(h)),
               "{}: cannot write the integrity header: {}", target, errno_text(errno));
}

// Copies all of src (the in-memory image) into a new file at dst with every system call checked
// (a full disk is an error naming errno, never a short file), then fsyncs it.
void copy_to_file(int src, const std::string& dst, const std::string& target) {
  struct stat sb {};
  LOWBIT_CHECK(::fstat(src, &sb) == 0, "{}: cannot size the HDF5 image: {}", target, errno_text(errno));
  const int fd = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  LOWBIT_CHECK(fd >= 0, "{}: cannot open '{}' for writing: {}", target, dst, errno_text(errno));
  const uint64_t size = static_cast<uint64_t>(sb.st_size);
  off_t in_off = 0;
  int err = 0;
  while (static_cast<uint64_t>(in_off) < size) {
    const ssize_t n =
        ::sendfile(fd, src, &in_off,
                   static_cast<size_t>(std::min<uint64_t>(size - static_cast<uint64_t>(in_off), uint64_t{1} << 30)));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : ENOSPC;
      break;
    }
  }
  if (!err && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && !err) err = errno;
  LOWBIT_CHECK(!err, "{}: cannot write '{}' ({} of {} bytes written): {}", target, dst, static_cast<uint64_t>(in_off),
               size, errno_text(err));
}

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// Writes size bytes to a file opened with flags, every system call checked (a full disk is an
// error naming errno, never a short file), then fsyncs and closes it. target names the file the
// caller is producing (in errors).
void write_fd_checked(const std::string& file, const std::string& target, const char* data, size_t size, int flags) {
  const int fd = ::open(file.c_str(), flags | O_CLOEXEC, 0644);
  LOWBIT_CHECK(fd >= 0, "{}: cannot open '{}' for writing: {}", target, file, errno_text(errno));
  size_t done = 0;
  int err = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, std::min<size_t>(size - done, size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : ENOSPC;
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (!err && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && !err) err = errno;
  LOWBIT_CHECK(!err, "{}: cannot write '{}' ({} of {} bytes written): {}", target, file, done, size, errno_text(err));
}
// Replaces path atomically: write_tmp(tmp) fills a temporary file beside it (checked writes,
// fsync), which is renamed over path, then the directory is fsync'ed; a failure removes the
// temporary file and leaves path as it was.
template <typename W>
void replace_with(const std::string& path, W&& write_tmp) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    write_tmp(tmp);
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    LOWBIT_CHECK(!ec, "{}: cannot rename temporary file '{}' into place: {}", path, tmp, ec.message());
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  fsync_path(std::filesystem::absolute(path).parent_path().string(), true);
}
void replace_file(const std::string& path, const char* data, size_t size) {
  replace_with(path,
               [&](const std::string& tmp) { write_fd_checked(tmp, path, data, size, O_WRONLY | O_CREAT | O_TRUNC); });
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

Hid lcpl_intermediate() {
  Hid p(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(p, 1);
  return p;
}

void write_tensor(hid_t file, const std::string& h5path, const Tensor& t_in, const SaveOptions& opts,
                  const std::string& fname) {
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
  Hid ds(h5::check(H5Dcreate2(file, h5path.c_str(), types.file, space, lcpl, dcpl, H5P_DEFAULT), fname,
                   "cannot create dataset '" + h5path + "'"),
         H5Dclose);
  if (t.numel() > 0)
    h5::check(H5Dwrite(ds, types.mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw_data()), fname,
              "cannot write dataset '" + h5path + "'", 0);
  h5::write_attr(ds, "dtype", std::string(dtype_name(t.dtype())), fname);
}

// What a dataset under a lowbit file declares (metadata only, nothing allocated).
struct TensorMeta {
  DType dtype = kFloat32;
  Shape shape;
  uint64_t stored_bytes = 0;
  uint64_t object_key = 0;  // hard-linked aliases share it
};
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
Tensor read_tensor(hid_t file, const std::string& h5path, const std::string& fname, TensorMeta* meta_out = nullptr) {
  Hid ds = h5::open_dataset(file, h5path, fname);
  const TensorMeta meta = probe_tensor(ds, fname, h5path);
  if (meta_out) *meta_out = meta;
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
  of.kind = h5::has_attr(of.file, "kind") ? h5::read_attr_string(of.file, "kind", path, "/") : "model";
  LOWBIT_CHECK(of.kind == "training" || of.kind == "model", "{}: unknown checkpoint kind '{}'", path, of.kind);
  LOWBIT_CHECK(h5::link_exists(of.file, "/model", path), "{}: missing group '/model'", path);
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

void write_model_group(hid_t file, const nn::Module& model, const SaveOptions& opts, const std::string& fname) {
  Hid g(h5::check(H5Gcreate2(file, "/model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), fname, "cannot create '/model'"),
        H5Gclose);
  std::map<const TensorImpl*, std::string> written;
  Hid lcpl = lcpl_intermediate();
  for (const auto& [name, t] : model.state_dict()) {
    LOWBIT_CHECK(name.find('/') == std::string::npos, "{}: tensor name '{}' contains '/'", fname, name);
    const std::string path = to_h5_path("/model/", name);
    auto it = written.find(t.impl());
    if (it != written.end()) {  // a tied tensor: a hard link, stored once
      h5::check(H5Lcreate_hard(file, it->second.c_str(), file, path.c_str(), lcpl, H5P_DEFAULT), fname,
                "cannot link '" + path + "'", 0);
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
    LOWBIT_CHECK(h5::link_exists(file, path, fname), "{}: module '{}' has attributes but no tensors", fname, name);
    Hid grp(h5::check(H5Gopen2(file, path.c_str(), H5P_DEFAULT), fname, "cannot open '" + path + "'"), H5Gclose);
    for (const auto& [k, v] : attrs) h5::write_attr(grp, k, v, fname);
  }
}

// Saves never let HDF5 write to the target's file system: HDF5 1.10 cannot close a file whose
// writes fail (the handle stays half-open and the library crashes at exit; seen with a full
// disk). HDF5 builds the file in memory -- a file in /dev/shm (tmpfs, as fast as the page cache)
// when it has room for the checkpoint with a wide margin, otherwise HDF5's core driver in this
// process, copied into an anonymous memfd -- and the finished image is copied by the kernel
// (sendfile) into a temporary file beside the target with every call checked, fsync'ed and
// renamed over the target. LOWBIT_SAVE_IN_PROCESS=1 forces the second way.
struct Staging {
  int fd = -1;           // the finished image
  std::string shm_name;  // the /dev/shm file HDF5 writes, removed on destruction
  ~Staging() {
    if (fd >= 0) ::close(fd);
    if (!shm_name.empty()) ::unlink(shm_name.c_str());
  }
  bool open_shm(uint64_t need) {
    const char* force = std::getenv("LOWBIT_SAVE_IN_PROCESS");
    if (force && *force && std::string(force) != "0") return false;
    struct statvfs v {};
    if (::statvfs("/dev/shm", &v) != 0 || static_cast<uint64_t>(v.f_bavail) * v.f_frsize < need) return false;
    char name[] = "/dev/shm/lowbit-save-XXXXXX";
    fd = ::mkstemp(name);
    if (fd < 0) return false;
    shm_name = name;
    return true;
  }
};

Hid create_file(const std::string& shm_path, const std::string& target, uint64_t data_bytes) {
  h5::quiet();
  Hid fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  H5Pset_userblock(fcpl, kUserBlock);
  Hid fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  // the core driver grows its buffer by this increment: about the whole file at once
  if (shm_path.empty())
    H5Pset_fapl_core(fapl, static_cast<size_t>(data_bytes + data_bytes / 16 + (uint64_t{1} << 20)),
                     /*backing_store=*/0);
  else
    H5Pset_fapl_sec2(fapl);
  H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
  return Hid(h5::check(H5Fcreate(shm_path.empty() ? target.c_str() : shm_path.c_str(), H5F_ACC_TRUNC, fcpl, fapl),
                       target, "cannot create the HDF5 image"),
             H5Fclose);
}

// The core driver's image (which starts at the superblock) behind a zeroed user block, in a memfd.
int image_to_memfd(hid_t file, const std::string& target) {
  const ssize_t size = H5Fget_file_image(file, nullptr, 0);
  h5::check(static_cast<hid_t>(size), target, "cannot size the HDF5 image");
  std::unique_ptr<char[]> image(new char[kUserBlock + static_cast<size_t>(size)]);
  std::memset(image.get(), 0, kUserBlock);
  h5::check(static_cast<hid_t>(H5Fget_file_image(file, image.get() + kUserBlock, static_cast<size_t>(size))), target,
            "cannot copy the HDF5 image");
  const int fd = static_cast<int>(::syscall(SYS_memfd_create, "lowbit-save", 1u /* MFD_CLOEXEC */));
  LOWBIT_CHECK(fd >= 0, "{}: cannot create an in-memory file for the save: {}", target, errno_text(errno));
  const char* p = image.get();
  for (size_t left = kUserBlock + static_cast<size_t>(size); left > 0;) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = n < 0 ? errno : EIO;
      ::close(fd);
      throw Error(fmt::format("{}: cannot stage the HDF5 image in memory: {}", target, errno_text(e)));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  return fd;
}

void write_root_attrs(hid_t file, const std::string& kind, const std::string& config, const std::string& fname) {
  h5::write_attr(file, "format", std::string(kFormatName), fname);
  h5::write_attr(file, "schema_version", kSchemaVersion, fname);
  h5::write_attr(file, "lowbit_version", std::string(LOWBIT_VERSION), fname);
  h5::write_attr(file, "kind", kind, fname);
  h5::write_attr(file, "config", config, fname);
}

uint64_t tensor_bytes(const nn::NamedTensors& ts) {
  uint64_t n = 0;
  for (const auto& [_, t] : ts) n += t.nbytes();
  return n;
}

// Runs body on a new HDF5 file built in memory (data_bytes: about how many bytes of tensors it
// will hold), stamps the integrity header, writes the image to a temporary file, fsyncs it and
// renames it over path. Any failure leaves path as it was and no temporary file.
template <typename F>
void atomic_write(const std::string& path, uint64_t data_bytes, F&& body) {
  Staging st;
  const bool shm = st.open_shm(data_bytes + data_bytes / 4 + (uint64_t{16} << 20));
  {
    Hid file = create_file(st.shm_name, path, data_bytes);
    if (shm) {  // HDF5 holds the file open: drop the name now, so a killed process leaves no RAM behind
      ::unlink(st.shm_name.c_str());
      st.shm_name.clear();
    }
    body(static_cast<hid_t>(file));
    h5::check(H5Fflush(file, H5F_SCOPE_GLOBAL), path, "cannot flush the HDF5 image", 0);
    if (!shm) st.fd = image_to_memfd(file, path);
    h5::check(H5Fclose(file.release()), path, "cannot close the HDF5 image", 0);
  }
  stamp_integrity(st.fd, path);
  replace_with(path, [&](const std::string& tmp) { copy_to_file(st.fd, tmp, path); });
}
}  // namespace

void export_model(const std::string& path, const nn::Module& model, const std::string& config,
                  const SaveOptions& opts) {
  atomic_write(path, tensor_bytes(model.state_dict()), [&](hid_t file) {
    write_root_attrs(file, "model", config, path);
    write_model_group(file, model, opts, path);
  });
}

void save_checkpoint(const std::string& path, const nn::Module& model, const optim::Optimizer* opt,
                     const optim::LRScheduler* sched, const data::DataLoader* loader, TrainingState st,
                     const SaveOptions& opts) {
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
  uint64_t bytes = tensor_bytes(model.state_dict());
  if (opt)
    for (const auto& [i, ps] : opt->state_dict().state)
      for (const auto& [k, t] : ps.tensors) bytes += t.nbytes();
  atomic_write(path, bytes, [&](hid_t file) {
    write_root_attrs(file, "training", st.config_toml, path);
    h5::write_attr(file, "step", st.step, path);
    write_model_group(file, model, opts, path);
    {
      Hid g(h5::check(H5Gcreate2(file, "/rng", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), path, "cannot create '/rng'"),
            H5Gclose);
      h5::write_attr_u64(g, "default_seed", st.rng_seed, path);
      h5::write_attr_u64(g, "default_offset", st.rng_offset, path);
    }
    {
      Hid g(h5::check(H5Gcreate2(file, "/data", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), path, "cannot create '/data'"),
            H5Gclose);
      h5::write_attr(g, "epoch", st.epoch, path);
      h5::write_attr(g, "position", st.position, path);
      h5::write_attr_u64(g, "shuffle_seed", st.loader_seed, path);
    }
    if (st.scheduler_last_epoch >= 0) {
      Hid g(h5::check(H5Gcreate2(file, "/scheduler", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), path,
                      "cannot create '/scheduler'"),
            H5Gclose);
      h5::write_attr(g, "last_epoch", st.scheduler_last_epoch, path);
      h5::write_attr(g, "name", st.scheduler_name, path);
      if (sched) h5::write_attr(g, "class", std::string(sched->name()), path);
    }
    if (opt) {
      Hid g(h5::check(H5Gcreate2(file, "/optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), path,
                      "cannot create '/optimizer'"),
            H5Gclose);
      h5::write_attr(g, "name", opt->name(), path);
      const optim::OptimizerState s = opt->state_dict();
      const auto& groups = opt->param_groups();
      h5::write_attr(g, "num_groups", static_cast<int64_t>(groups.size()), path);
      std::vector<std::string> index_to_name;
      for (size_t gi = 0; gi < groups.size(); ++gi) {
        const std::string gpath = fmt::format("/optimizer/param_groups/{}", gi);
        Hid lcpl = lcpl_intermediate();
        Hid gg(h5::check(H5Gcreate2(file, gpath.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT), path,
                         "cannot create '" + gpath + "'"),
               H5Gclose);
        for (const auto& [k, v] : groups[gi].options) h5::write_attr(gg, k, v, path);
        std::vector<std::string> names;
        for (const auto& p : groups[gi].params) {
          auto it = param_names.find(p.impl());
          LOWBIT_CHECK(it != param_names.end(),
                       "{}: the optimizer holds a parameter of shape {} that is not a parameter of the model", path,
                       shape_str(p.shape()));
          names.push_back(it->second);
          index_to_name.push_back(it->second);
        }
        h5::write_strings(gg, "params", names, path);
      }
      for (const auto& [index, ps] : s.state) {
        const std::string spath = to_h5_path("/optimizer/state/", index_to_name[static_cast<size_t>(index)]);
        Hid lcpl = lcpl_intermediate();
        Hid sg(h5::check(H5Gcreate2(file, spath.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT), path,
                         "cannot create '" + spath + "'"),
               H5Gclose);
        h5::write_attr(sg, "step", ps.step, path);
        for (const auto& [name, t] : ps.tensors) write_tensor(file, spath + "/" + name, t, opts, path);
      }
    }
  });
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
    LOWBIT_CHECK(f.kind == "training" && h5::link_exists(f.file, "/optimizer", path),
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
        if (h5::link_exists(f.file, spath, path)) {
          Hid sg = h5::open_group(f.file, spath, path);
          optim::ParamState ps;
          ps.step = h5::read_attr_int(sg, "step", path, spath);
          LOWBIT_CHECK(ps.step >= 0, "{}: optimizer state '{}' has step {} (corrupt file)", path, spath, ps.step);
          for (const auto& tn : list_datasets(f.file, spath, path)) {
            LOWBIT_CHECK(tn.find('.') == std::string::npos, "{}: unexpected nested group in '{}'", path, spath);
            const std::string tpath = spath + "/" + tn;
            {  // check the declared dtype and shape before reading
              Hid ds = h5::open_dataset(f.file, tpath, path);
              const TensorMeta m = probe_tensor(ds, path, tpath);
              LOWBIT_CHECK(m.dtype == kFloat32 && m.shape == params[i].shape(),
                           "{}: optimizer state '{}' is {} {}, the parameter is {} float32", path, tpath,
                           shape_str(m.shape), dtype_name(m.dtype), shape_str(params[i].shape()));
            }
            ps.tensors[tn] = read_tensor(f.file, tpath, path);
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
    if (h5::link_exists(f.file, "/scheduler", path)) {
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

namespace {
// The dims of a quantized group's "shape" attribute ("[4096, 4096]" or "(4096, 4096)") and their
// product; throws naming the group on anything but up to 8 non-negative integers that fit.
int64_t parse_logical_shape(const std::string& text, const std::string& file, const std::string& where) {
  int64_t product = 1;
  int dims = 0;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (std::isdigit(static_cast<unsigned char>(c))) {
      uint64_t v = 0;
      while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
        v = v * 10 + static_cast<uint64_t>(text[i] - '0');
        LOWBIT_CHECK(v < (uint64_t{1} << 40), "{}: the 'shape' attribute of '{}' ('{}') has an impossible dimension",
                     file, where, text);
        ++i;
      }
      LOWBIT_CHECK(++dims <= 8 && (v == 0 || static_cast<uint64_t>(product) <= (uint64_t{1} << 50) / v),
                   "{}: the 'shape' attribute of '{}' ('{}') is not a plausible shape", file, where, text);
      product *= static_cast<int64_t>(v);
    } else {
      LOWBIT_CHECK(c == '[' || c == ']' || c == '(' || c == ')' || c == ',' || c == ' ',
                   "{}: the 'shape' attribute of '{}' ('{}') is not a shape", file, where, text);
      ++i;
    }
  }
  LOWBIT_CHECK(dims > 0, "{}: the 'shape' attribute of '{}' ('{}') is not a shape", file, where, text);
  return product;
}
}  // namespace

FileInfo inspect(const std::string& path) {
  OpenedFile f = open_checkpoint(path);
  FileInfo info;
  info.integrity_checked = f.integrity;
  info.file_bytes = std::filesystem::file_size(path);
  for (auto& [k, v] : h5::attrs_as_text(f.file)) info.attributes[k] = v;
  Hid model = h5::open_group(f.file, "/model", path);
  // every object once: hard-linked aliases (tied weights) are not double counted
  std::set<uint64_t> seen;
  for (const auto& e : h5::walk(model, "/model", path)) {
    if (e.type == H5O_TYPE_GROUP) continue;
    LOWBIT_CHECK(e.type == H5O_TYPE_DATASET, "{}: '/model/{}' is neither a group nor a dataset", path, e.path);
    if (!seen.insert(e.object_key).second) continue;
    TensorInfo ti;
    ti.path = "/model/" + e.path;
    const auto slash = e.path.rfind('/');
    const std::string parent = slash == std::string::npos ? "." : e.path.substr(0, slash);
    const std::string leaf = slash == std::string::npos ? e.path : e.path.substr(slash + 1);
    const std::string parent_path = parent == "." ? "/model" : "/model/" + parent;
    Hid pg = parent == "." ? h5::open_group(f.file, "/model", path) : h5::open_group(model, parent, path);
    const bool quantized = h5::has_attr(pg, "quant_scheme");
    if (quantized) {
      const std::string scheme = h5::read_attr_string(pg, "quant_scheme", path, parent_path);
      ti.scheme = scheme + " " + h5::read_attr_string(pg, "dtype", path, parent_path);
    }
    Hid ds = h5::open_dataset(model, e.path, path);
    const TensorMeta m = probe_tensor(ds, path, ti.path);
    ti.dtype = dtype_name(m.dtype);
    ti.shape = m.shape;
    const int64_t n = detail::numel_of(ti.shape);
    ti.logical_bytes = static_cast<uint64_t>(n) * element_size(m.dtype);
    ti.bytes = m.stored_bytes;
    // a quantized module's codes stand for its logical weight ("shape" attribute); its scales and
    // zero points are overhead, not parameters
    int64_t logical = n;
    if (quantized && (leaf == "scale" || leaf == "zero_point")) logical = 0;
    if (quantized && leaf == "qdata" && h5::has_attr(pg, "shape")) {
      logical = parse_logical_shape(h5::read_attr_string(pg, "shape", path, parent_path), path, parent_path);
      // at least one bit per code: a group cannot describe more weights than 8 per stored byte
      LOWBIT_CHECK(logical <= 8 * n, "{}: '{}' claims a {}-element weight but stores {} bytes of codes", path,
                   parent_path, logical, n);
    }
    info.parameters += logical;
    info.stored_bytes += ti.bytes;
    info.float32_bytes += static_cast<uint64_t>(logical) * 4;
    info.tensors.push_back(ti);
  }
  return info;
}

namespace {
void verify_in_process(const std::string& path) {
  OpenedFile f = open_checkpoint(path);
  (void)h5::attrs_as_text(f.file);
  (void)inspect(path);
  Hid root = h5::open_group(f.file, "/", path);
  for (const auto& e : h5::walk(root, "", path)) {
    const std::string p = "/" + e.path;
    if (e.type == H5O_TYPE_GROUP) {
      Hid g = h5::open_group(f.file, p, path);
      for (const auto& [k, v] : h5::attrs_as_text(g))
        LOWBIT_CHECK(v != "<unreadable>", "{}: attribute '{}' of '{}' cannot be read", path, k, p);
      continue;
    }
    LOWBIT_CHECK(e.type == H5O_TYPE_DATASET, "{}: '{}' is neither a group nor a dataset", path, p);
    Hid ds = h5::open_dataset(f.file, p, path);
    for (const auto& [k, v] : h5::attrs_as_text(ds))
      LOWBIT_CHECK(v != "<unreadable>", "{}: attribute '{}' of '{}' cannot be read", path, k, p);
    Hid t(h5::check(H5Dget_type(ds), path, "cannot read the type of '" + p + "'"), H5Tclose);
    if (H5Tget_class(t) == H5T_STRING) {
      (void)h5::read_strings(f.file, p, path);
    } else {
      (void)read_tensor(f.file, p, path);
    }
  }
}
}  // namespace

void verify_file(const std::string& path, bool isolated) {
  if (!isolated) return verify_in_process(path);
  int fds[2];
  LOWBIT_CHECK(::pipe(fds) == 0, "{}: cannot verify the file: pipe failed: {}", path, errno_text(errno));
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    throw Error(fmt::format("{}: cannot verify the file: fork failed: {}", path, errno_text(errno)));
  }
  if (pid == 0) {  // child: report an Error's message through the pipe, exit without cleanup
    ::close(fds[0]);
    int code = 0;
    std::string msg;
    try {
      verify_in_process(path);
    } catch (const std::exception& e) {
      msg = e.what();
      code = 1;
    }
    for (size_t done = 0; done < msg.size();) {
      const ssize_t n = ::write(fds[1], msg.data() + done, msg.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    ::_exit(code);
  }
  ::close(fds[1]);
  std::string msg;
  char buf[4096];
  while (true) {
    const ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (msg.size() < (1u << 20)) msg.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  if (WIFSIGNALED(status))
    throw Error(fmt::format("{}: malformed HDF5 file: parsing it crashed the HDF5 library (signal {}, {}); refusing it",
                            path, WTERMSIG(status), strsignal(WTERMSIG(status))));
  LOWBIT_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "{}", msg.empty() ? path + ": verification failed" : msg);
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  replace_file(path, bytes.data(), bytes.size());
}

void append_file(const std::string& path, const std::string& bytes) {
  write_fd_checked(path, path, bytes.data(), bytes.size(), O_WRONLY | O_CREAT | O_APPEND);
}

}  // namespace lowbit::io
