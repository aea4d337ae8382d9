// io/ files: the user block's integrity header (CRC-32) and writes with every system call checked.
#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>

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
}  // namespace

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
