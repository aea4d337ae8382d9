// io/ writing: tensors and the model group, the in-memory staging of a save, export_model and
// save_checkpoint.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <memory>

#include "internal.h"
#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/generator.h"
#include "lowbit/data/dataset.h"

#ifndef LOWBIT_VERSION
#define LOWBIT_VERSION "unknown"
#endif

namespace lowbit::io {

using namespace detail;

namespace {
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
  // every module's group says what it is: module_type, its position among its siblings, and its
  // own attributes (constructor arguments, quantization schemes), so load_model can rebuild the
  // tree from the file alone
  std::map<const nn::Module*, int64_t> index_of;
  auto& root = const_cast<nn::Module&>(model);
  for (const auto& [name, m] : root.named_modules()) {
    int64_t i = 0;
    for (const auto& [child_name, child] : m->named_children()) index_of[child.get()] = i++;
  }
  for (const auto& [name, m] : root.named_modules()) {
    const std::string path = name.empty() ? std::string("/model") : to_h5_path("/model/", name);
    if (!h5::hard_path_exists(file, path, fname))
      Hid(h5::check(H5Gcreate2(file, path.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT), fname,
                    "cannot create '" + path + "'"),
          H5Gclose);
    Hid grp(h5::check(H5Gopen2(file, path.c_str(), H5P_DEFAULT), fname, "cannot open '" + path + "'"), H5Gclose);
    h5::write_attr(grp, "module_type", m->type_name(), fname);
    if (!name.empty()) h5::write_attr(grp, "module_index", index_of[m.get()], fname);
    for (const auto& [k, v] : m->checkpoint_attributes()) {
      LOWBIT_CHECK(k != "module_type" && k != "module_index", "{}: {} uses the reserved attribute name '{}'", fname,
                   m->type_name(), k);
      std::visit([&](const auto& value) { h5::write_attr(grp, k, value, fname); }, v);
    }
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
  const optim::OptimizerState s = opt ? opt->state_dict() : optim::OptimizerState{};
  uint64_t bytes = tensor_bytes(model.state_dict());
  for (const auto& [i, ps] : s.state)
    for (const auto& [k, t] : ps.tensors) bytes += t.nbytes();
  atomic_write(path, bytes, [&](hid_t file) {
    write_root_attrs(file, "training", st.config_toml, path);
    h5::write_attr(file, "step", st.step, path);
    h5::write_attr(file, "phase", st.phase, path);
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
      const auto& groups = opt->param_groups();
      h5::write_attr(g, "num_groups", static_cast<int64_t>(groups.size()), path);
      std::vector<std::string> index_to_name;
      std::vector<Tensor> index_to_param;
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
          index_to_param.push_back(p);
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
        for (const auto& [name, t] : ps.tensors) {
          write_tensor(file, spath + "/" + name, t, opts, path);
          const auto attrs = opt->state_attributes(index_to_param[static_cast<size_t>(index)], name);
          if (attrs.empty()) continue;
          Hid ds = h5::open_dataset(file, spath + "/" + name, path);
          for (const auto& a : attrs) {
            if (a.text.empty())
              h5::write_attr(ds, a.name, a.number, path);
            else
              h5::write_attr(ds, a.name, a.text, path);
          }
        }
      }
    }
  });
}

}  // namespace lowbit::io
