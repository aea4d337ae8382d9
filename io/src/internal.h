// Shared internals of io/ (not installed): file integrity and checked writes (files.cpp), reading
// datasets under lowbit's checks (read.cpp). write.cpp, read.cpp and inspect.cpp build on them.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "h5.h"
#include "lowbit/autograd/tensor.h"
#include "lowbit/io/checkpoint.h"

namespace lowbit::io::detail {

using h5::Hid;

// ---- files.cpp: the user block's integrity header and checked writes ----
/// lowbit files start with a 512-byte user block whose first 24 bytes are the integrity header.
inline constexpr size_t kUserBlock = 512;
/// true when the file carries lowbit's header (and it verified); throws naming the file on a mismatch.
bool verify_integrity(const std::string& path);
/// "no space left on device (errno 28)"
std::string errno_text(int e);
/// Writes the header (CRC-32 of everything after the user block) into the image held in fd.
void stamp_integrity(int fd, const std::string& target);
/// Copies all of src into a new file dst with checked calls, then fsyncs it.
void copy_to_file(int src, const std::string& dst, const std::string& target);
void fsync_path(const std::string& path, bool directory);
/// Writes size bytes to a file opened with flags, every call checked, then fsyncs and closes it.
void write_fd_checked(const std::string& file, const std::string& target, const char* data, size_t size, int flags);
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

// ---- read.cpp: datasets under lowbit's checks ----
struct H5Types {
  hid_t file, mem;
};
H5Types h5_types(DType d);
/// The dtype a stored dataset holds (its "dtype" attribute, consistent with the HDF5 type).
DType stored_dtype(hid_t ds, const std::string& file, const std::string& key);
/// "/model/" + "blocks.0.w" -> "/model/blocks/0/w"
std::string to_h5_path(const std::string& root, const std::string& dotted);
/// What a dataset declares (metadata only, nothing allocated).
struct TensorMeta {
  DType dtype = kFloat32;
  Shape shape;
  uint64_t stored_bytes = 0;
  uint64_t object_key = 0;  // hard-linked aliases share it
};
TensorMeta probe_tensor(hid_t ds, const std::string& fname, const std::string& h5path);
/// Reads a dataset into a new tensor; its declared size is checked against its storage first, and
/// check_before_read (when given) sees its metadata before anything is allocated.
Tensor read_tensor(hid_t file, const std::string& h5path, const std::string& fname,
                   const std::function<void(const TensorMeta&)>& check_before_read = {});
/// A file opened for reading after the integrity check, with its root attributes validated.
struct OpenedFile {
  Hid file;
  std::string kind;
  bool integrity = false;
  int64_t schema_version = 0;
};
OpenedFile open_checkpoint(const std::string& path);
/// Dotted names of every dataset below a group (h5::walk's checks).
std::vector<std::string> list_datasets(hid_t file, const std::string& group_path, const std::string& fname);
/// Declared dtype/shape of every dataset under /model, by dotted name.
std::map<std::string, TensorMeta> probe_model_group(hid_t file, const std::string& fname);
/// Reads the named datasets of /model; hard-linked aliases are read once and shared.
nn::NamedTensors read_model_group(hid_t file, const std::string& fname, const std::vector<std::string>& names,
                                  const std::map<std::string, TensorMeta>& metas);

}  // namespace lowbit::io::detail
