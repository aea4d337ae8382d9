// io/ files: the user block's integrity header (CRC-32) and writes with every system call checked.
#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>

#include "internal.h"

namespace lowbit::io {
namespace detail {

namespace {
constexpr char kMagic[8] = {'L', 'O', 'W', 'B', 'I', 'T', 'C', 'K'};
struct UserBlockHeader {
  char magic[8];
  uint32_t version;
  uint32_t crc32;
  uint64_t hdf5_bytes;  // bytes after the user block
};

// CRC-32 (zlib) of len bytes of fd from offset; false when the file ends or a read fails first.
bool crc_of_fd(int fd, uint64_t offset, uint64_t len, uint32_t& out) {
  std::vector<char> buf(size_t{4} << 20);
  uLong crc = crc32(0L, Z_NULL, 0);
  for (uint64_t done = 0; done < len;) {
    const ssize_t n =
        ::pread(fd, buf.data(), std::min<uint64_t>(buf.size(), len - done), static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buf.data()), static_cast<uInt>(n));
    done += static_cast<uint64_t>(n);
  }
  out = static_cast<uint32_t>(crc);
  return true;
}
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};
}  // namespace

bool verify_integrity(const std::string& path) {
  namespace fs = std::filesystem;
  LOWBIT_CHECK(fs::exists(path), "{}: no such file", path);
  LOWBIT_CHECK(fs::is_regular_file(path), "{}: not a regular file", path);
  const uint64_t size = fs::file_size(path);
  const Fd in{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  LOWBIT_CHECK(in.fd >= 0, "{}: cannot open for reading: {}", path, errno_text(errno));
  UserBlockHeader h{};
  if (::pread(in.fd, &h, sizeof(h), 0) != static_cast<ssize_t>(sizeof(h)) || std::memcmp(h.magic, kMagic, 8) != 0)
    return false;  // not lowbit's header: a file written by another tool
  LOWBIT_CHECK(h.version == 1, "{}: unknown integrity header version {}", path, h.version);
  LOWBIT_CHECK(size >= kUserBlock && h.hdf5_bytes == size - kUserBlock,
               "{}: file is truncated or was extended: header records {} bytes of data, the file has {} (the "
               "checkpoint is corrupted)",
               path, h.hdf5_bytes, size >= kUserBlock ? size - kUserBlock : 0);
  uint32_t crc = 0;
  const bool complete = crc_of_fd(in.fd, kUserBlock, h.hdf5_bytes, crc);
  LOWBIT_CHECK(complete && crc == h.crc32,
               "{}: checksum mismatch (stored CRC-32 {:08x}, computed {:08x}): the checkpoint is corrupted", path,
               h.crc32, crc);
  return true;
}

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
  LOWBIT_CHECK(crc_of_fd(fd, kUserBlock, h.hdf5_bytes, h.crc32), "{}: cannot read back the HDF5 image: {}", target,
               errno_text(errno));
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
namespace {
void replace_file(const std::string& path, const char* data, size_t size) {
  replace_with(path,
               [&](const std::string& tmp) { write_fd_checked(tmp, path, data, size, O_WRONLY | O_CREAT | O_TRUNC); });
}
}  // namespace

}  // namespace detail

void write_file_atomic(const std::string& path, const std::string& bytes) {
  detail::replace_file(path, bytes.data(), bytes.size());
}

void append_file(const std::string& path, const std::string& bytes) {
  detail::write_fd_checked(path, path, bytes.data(), bytes.size(), O_WRONLY | O_CREAT | O_APPEND);
}

}  // namespace lowbit::io
