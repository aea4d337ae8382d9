// io/ inspection: the inspect report and verify_file (a complete parse, optionally in a child).
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include "internal.h"

namespace lowbit::io {

using namespace detail;

namespace {
// The element count of a quantized group's "shape" attribute (a list of up to 8 non-negative
// integers); throws naming the group on anything else or on a product that cannot be real.
int64_t logical_elements(hid_t group, const std::string& file, const std::string& where) {
  const std::vector<int64_t> dims = h5::read_attr_ints(group, "shape", file, where);
  LOWBIT_CHECK(dims.size() <= 8, "{}: the 'shape' attribute of '{}' has {} dimensions (at most 8)", file, where,
               dims.size());
  int64_t product = 1;
  for (int64_t d : dims) {
    LOWBIT_CHECK(d >= 0 && d < (int64_t{1} << 40) && (d == 0 || product <= (int64_t{1} << 50) / d),
                 "{}: the 'shape' attribute of '{}' ({}) is not a plausible shape", file, where, shape_str(dims));
    product *= d;
  }
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
  if (h5::has_attr(model, "module_type")) info.model_type = h5::read_attr_string(model, "module_type", path, "/model");
  // every object once: hard-linked aliases (tied weights) are not double counted
  std::map<uint64_t, size_t> seen;  // object -> its entry in info.tensors
  for (const auto& e : h5::walk(model, "/model", path)) {
    if (e.type == H5O_TYPE_GROUP) continue;
    LOWBIT_CHECK(e.type == H5O_TYPE_DATASET, "{}: '/model/{}' is neither a group nor a dataset", path, e.path);
    if (auto it = seen.find(e.object_key); it != seen.end()) {
      info.tensors[it->second].aliases.push_back("/model/" + e.path);
      continue;
    }
    seen[e.object_key] = info.tensors.size();
    TensorInfo ti;
    ti.path = "/model/" + e.path;
    const auto slash = e.path.rfind('/');
    const std::string parent = slash == std::string::npos ? "." : e.path.substr(0, slash);
    const std::string leaf = slash == std::string::npos ? e.path : e.path.substr(slash + 1);
    const std::string parent_path = parent == "." ? "/model" : "/model/" + parent;
    Hid pg = parent == "." ? h5::open_group(f.file, "/model", path) : h5::open_group(model, parent, path);
    const bool quantized = h5::has_attr(pg, "quant_scheme");
    if (quantized) {
      LOWBIT_CHECK(f.schema_version >= 2,
                   "{}: '{}' is a quantized layer in schema version 1's attribute layout, which this lowbit no longer "
                   "reads; quantize the float model again",
                   path, parent_path);
      const std::string scheme = h5::read_attr_string(pg, "quant_scheme", path, parent_path);
      // integer layouts name their format "weight_format", float8 and MX ones "weight_dtype"
      const char* fmt_key =
          scheme == "float8" || scheme == "mx" || scheme == "nvfp4" ? "weight_dtype" : "weight_format";
      ti.scheme = scheme + " " + h5::read_attr_string(pg, fmt_key, path, parent_path);
    }
    Hid ds = h5::open_dataset(model, e.path, path);
    const TensorMeta m = probe_tensor(ds, path, ti.path);
    ti.dtype = dtype_name(m.dtype);
    ti.shape = m.shape;
    const int64_t n = lowbit::detail::numel_of(ti.shape);
    ti.logical_bytes = static_cast<uint64_t>(n) * element_size(m.dtype);
    ti.bytes = m.stored_bytes;
    // a quantized module's codes stand for its logical weight ("shape" attribute); its scales and
    // zero points are overhead, not parameters
    int64_t logical = n;
    if (quantized &&
        (leaf == "scale" || leaf == "zero_point" || leaf == "weight_scale" || leaf == "weight_per_tensor_scale"))
      logical = 0;
    if (quantized && leaf == "qdata" && h5::has_attr(pg, "shape")) {
      logical = logical_elements(pg, path, parent_path);
      // at least one bit per code: a group cannot describe more weights than 8 per stored byte
      LOWBIT_CHECK(logical <= 8 * n, "{}: '{}' claims a {}-element weight but stores {} bytes of codes", path,
                   parent_path, logical, n);
    }
    // packed fp4 codes (MX, NVFP4): two weights per stored element
    if (quantized && leaf == "weight" && m.dtype == kFloat4_e2m1fn_x2) logical = 2 * n;
    info.parameters += logical;
    info.stored_bytes += ti.bytes;
    info.float32_bytes += static_cast<uint64_t>(logical) * 4;
    info.tensors.push_back(ti);
  }
  // optimizer state, per parameter: what it costs (state bytes per parameter element) and what its
  // tensors are (a low-bit optimizer's codes carry their code book and block size)
  if (h5::hard_path_exists(f.file, "/optimizer", path)) {
    Hid og = h5::open_group(f.file, "/optimizer", path);
    info.optimizer = h5::read_attr_string(og, "name", path, "/optimizer");
    if (h5::hard_path_exists(f.file, "/optimizer/state", path)) {
      Hid sg = h5::open_group(f.file, "/optimizer/state", path);
      std::map<std::string, size_t> by_param;
      for (const auto& e : h5::walk(sg, "/optimizer/state", path)) {
        if (e.type != H5O_TYPE_DATASET) continue;
        const auto slash = e.path.rfind('/');
        LOWBIT_CHECK(slash != std::string::npos, "{}: '/optimizer/state/{}' is not inside a parameter's group", path,
                     e.path);
        const std::string param_path = e.path.substr(0, slash);
        auto it = by_param.find(param_path);
        if (it == by_param.end()) {
          OptimizerStateInfo oi;
          oi.param = param_path;
          for (char& c : oi.param) c = c == '/' ? '.' : c;
          Hid pg = h5::open_group(sg, param_path, path);
          oi.step = h5::read_attr_int(pg, "step", path, "/optimizer/state/" + param_path);
          if (h5::hard_path_exists(f.file, "/model/" + param_path, path)) {
            Hid md = h5::open_dataset(f.file, "/model/" + param_path, path);
            oi.numel = lowbit::detail::numel_of(probe_tensor(md, path, "/model/" + param_path).shape);
          }
          it = by_param.emplace(param_path, info.optimizer_states.size()).first;
          info.optimizer_states.push_back(oi);
        }
        OptimizerStateInfo& oi = info.optimizer_states[it->second];
        TensorInfo ti;
        ti.path = e.path.substr(slash + 1);
        Hid ds = h5::open_dataset(sg, e.path, path);
        const TensorMeta m = probe_tensor(ds, path, "/optimizer/state/" + e.path);
        ti.dtype = dtype_name(m.dtype);
        ti.shape = m.shape;
        ti.bytes = m.stored_bytes;
        ti.logical_bytes = static_cast<uint64_t>(lowbit::detail::numel_of(m.shape)) * element_size(m.dtype);
        for (const auto& [k, v] : h5::attrs_as_text(ds))
          if (k == "codebook" || k == "block_size" || k == "packing")
            ti.scheme += (ti.scheme.empty() ? "" : ", ") + k + "=" + v;
        oi.bytes += ti.logical_bytes;
        oi.tensors.push_back(ti);
      }
    }
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

}  // namespace lowbit::io
