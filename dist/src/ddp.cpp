// DistributedDataParallel: gradient buckets filled by post-accumulate hooks and sent while the
// backward pass runs (MPI_Iallreduce, or under ZeRO-1 sends to the owner, who sums), the ZeRO-1
// parameter all-gather, and the optimizer-state gather for checkpoints.
#include "lowbit/dist/ddp.h"

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/ops.h"

namespace lowbit::dist {

namespace {
// dst = src * w (a gradient into its bucket, weighted by this rank's share of the batch)
void scaled_copy(const float* __restrict src, float w, float* __restrict dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * w;
}

void put(std::string& s, const void* p, size_t n) { s.append(static_cast<const char*>(p), n); }
template <typename T>
void put(std::string& s, T v) {
  put(s, &v, sizeof v);
}
// a bounds-checked reader of the bytes another rank sent
struct Reader {
  const std::string& s;
  size_t at = 0;
  const char* take(size_t n) {
    LOWBIT_CHECK(n <= s.size() - at, "ZeRO-1 state gather: a rank sent {} bytes, {} more were expected", s.size(),
                 n - (s.size() - at));
    const char* p = s.data() + at;
    at += n;
    return p;
  }
  template <typename T>
  T get() {
    T v;
    std::memcpy(&v, take(sizeof v), sizeof v);
    return v;
  }
};
}  // namespace

struct DistributedDataParallel::Impl {
  struct Bucket {
    std::vector<int> params;       // indices into `params`, in launch order
    std::vector<int64_t> offsets;  // each parameter's first element in buf
    int64_t numel = 0;             // gradient elements (buf has one presence flag per param after them)
    int owner = -1;                // -1: all-reduce; else the rank the sum goes to
    std::vector<float> buf;
    int arrived = 0;
    bool launched = false, done = false;
    // requests in flight: the all-reduce; or (ZeRO-1) the send to the owner / the owner's
    // receives from every other rank into `incoming`
    std::vector<MPI_Request> reqs;
    std::vector<std::vector<float>> incoming;
  };
  // starts bucket b's collective; false when MPI refused
  bool launch(Bucket& b, int tag, int rank, int size);
  // the owner's sum of the received contributions and its own, in rank order (deterministic)
  static void sum_in_rank_order(Bucket& b, int rank, int size);
  std::vector<Tensor> params;
  std::vector<std::string> names;
  std::vector<const TensorImpl*> ids;
  std::vector<int> owner, bucket_of, slot_of;
  std::vector<char> arrived;
  std::vector<Bucket> buckets;
  std::vector<uint64_t> hook_ids;
  size_t next_launch = 0;
  float weight = 1.0f;
  double loss_weight = 1.0;
  std::vector<unsigned char> gather_buf;  // ZeRO-1 parameter all-gather
  std::vector<int64_t> param_byte_offset, rank_bytes;
};

bool DistributedDataParallel::Impl::launch(Bucket& b, int tag, int rank, int size) {
  const int count = static_cast<int>(b.buf.size());
  b.launched = true;
  b.done = false;
  if (b.owner < 0) {
    b.reqs.assign(1, MPI_REQUEST_NULL);
    return MPI_Iallreduce(MPI_IN_PLACE, b.buf.data(), count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &b.reqs[0]) ==
           MPI_SUCCESS;
  }
  // ZeRO-1: point to point to the owner (OpenMPI's MPI_Ireduce measured 55 ms for 16.8 MB between
  // two processes here, a send 3 ms); the owner sums in rank order
  if (b.owner != rank) {
    b.reqs.assign(1, MPI_REQUEST_NULL);
    return MPI_Isend(b.buf.data(), count, MPI_FLOAT, b.owner, tag, MPI_COMM_WORLD, &b.reqs[0]) == MPI_SUCCESS;
  }
  b.incoming.resize(static_cast<size_t>(size));
  b.reqs.assign(static_cast<size_t>(size - 1), MPI_REQUEST_NULL);
  size_t k = 0;
  for (int r = 0; r < size; ++r) {
    if (r == rank) continue;
    auto& in = b.incoming[static_cast<size_t>(r)];
    in.resize(b.buf.size());
    if (MPI_Irecv(in.data(), count, MPI_FLOAT, r, tag, MPI_COMM_WORLD, &b.reqs[k++]) != MPI_SUCCESS) return false;
  }
  return true;
}

void DistributedDataParallel::Impl::sum_in_rank_order(Bucket& b, int rank, int size) {
  // this rank's own part moves aside, then out = ((p0 + p1) + p2) + ... pass by pass (vectorized)
  auto& own = b.incoming[static_cast<size_t>(rank)];
  own = b.buf;
  float* __restrict out = b.buf.data();
  const int64_t n = static_cast<int64_t>(b.buf.size());
  const float* __restrict p0 = b.incoming[0].data();
  const float* __restrict p1 = b.incoming[1].data();
  for (int64_t i = 0; i < n; ++i) out[i] = p0[i] + p1[i];
  for (int r = 2; r < size; ++r) {
    const float* __restrict pr = b.incoming[static_cast<size_t>(r)].data();
    for (int64_t i = 0; i < n; ++i) out[i] += pr[i];
  }
}

namespace {
int64_t bytes_of(const Tensor& t) { return static_cast<int64_t>(t.nbytes()); }
}  // namespace

DistributedDataParallel::DistributedDataParallel(nn::Module& module, Comm& comm, DDPOptions options)
    : impl_(std::make_unique<Impl>()), module_(module), comm_(comm), opts_(options) {
  LOWBIT_CHECK(opts_.bucket_cap_mb > 0 && opts_.bucket_cap_mb <= 4096,
               "DistributedDataParallel: bucket_cap_mb must be in (0, 4096], got {}", opts_.bucket_cap_mb);
  begin_step(1, 1);  // registers hooks and buckets
  // same parameters everywhere, then rank 0's values
  uint64_t h = kFnvBasis;
  for (size_t i = 0; i < impl_->params.size(); ++i) {
    const Tensor& p = impl_->params[i];
    h = fnv1a(h, impl_->names[i].data(), impl_->names[i].size());
    for (int64_t d : p.shape()) h = fnv1a(h, &d, sizeof d);
    const auto dt = static_cast<uint8_t>(p.dtype());
    h = fnv1a(h, &dt, 1);
  }
  const std::string differ = comm_.ranks_differing_from_root(h, "the parameter check");
  LOWBIT_CHECK(differ.empty(),
               "DistributedDataParallel: rank(s) {} hold different parameters (names, shapes or dtypes) than rank 0; "
               "every rank must build the same model",
               differ);
  NoGradGuard ng;
  for (auto& [name, t] : module_.named_parameters())
    comm_.broadcast(t.raw_data(), bytes_of(t), 0, "parameter broadcast");
  for (auto& [name, t] : module_.named_buffers()) comm_.broadcast(t.raw_data(), bytes_of(t), 0, "buffer broadcast");
}

DistributedDataParallel::~DistributedDataParallel() {
  for (size_t i = 0; i < impl_->params.size(); ++i)
    impl_->params[i].remove_post_accumulate_grad_hook(impl_->hook_ids[i]);
}

void DistributedDataParallel::begin_step(int64_t local_examples, int64_t global_examples) {
  LOWBIT_CHECK(local_examples >= 0 && global_examples > 0 && local_examples <= global_examples,
               "DistributedDataParallel::begin_step: {} local of {} global examples", local_examples, global_examples);
  Impl& m = *impl_;
  m.weight = static_cast<float>(static_cast<double>(local_examples) / static_cast<double>(global_examples));
  m.loss_weight = static_cast<double>(local_examples) / static_cast<double>(global_examples);
  // the parameter list (rebuilt when the module's parameters changed)
  std::vector<Tensor> now;
  std::vector<std::string> names;
  for (auto& [name, t] : module_.named_parameters())
    if (t.requires_grad()) {
      now.push_back(t);
      names.push_back(name);
    }
  std::vector<const TensorImpl*> ids;
  for (const auto& t : now) ids.push_back(t.impl());
  if (ids != m.ids) {
    for (size_t i = 0; i < m.params.size(); ++i) m.params[i].remove_post_accumulate_grad_hook(m.hook_ids[i]);
    m.params = now;
    m.names = names;
    m.ids = ids;
    const int n = static_cast<int>(now.size()), N = comm_.size();
    // owners: contiguous ranges in backward (reverse) order, balanced by elements
    int64_t total = 0;
    for (const auto& t : now) total += t.numel();
    m.owner.assign(static_cast<size_t>(n), 0);
    int64_t cum = 0;
    for (int k = n - 1; k >= 0; --k) {
      const int64_t e = now[static_cast<size_t>(k)].numel();
      m.owner[static_cast<size_t>(k)] =
          opts_.shard_optimizer_state && total > 0
              ? static_cast<int>(std::min<int64_t>(N - 1, (2 * cum + e) * N / (2 * total)))
              : comm_.rank();
      cum += e;
    }
    // buckets in backward order: a new one at the cap or where the owner changes
    m.buckets.clear();
    m.bucket_of.assign(static_cast<size_t>(n), -1);
    m.slot_of.assign(static_cast<size_t>(n), -1);
    const int64_t cap = std::max<int64_t>(1, static_cast<int64_t>(opts_.bucket_cap_mb * 1048576.0 / 4.0));
    for (int k = n - 1; k >= 0; --k) {
      const int own = opts_.shard_optimizer_state ? m.owner[static_cast<size_t>(k)] : -1;
      if (m.buckets.empty() || m.buckets.back().numel >= cap || m.buckets.back().owner != own) {
        m.buckets.emplace_back();
        m.buckets.back().owner = own;
      }
      Impl::Bucket& b = m.buckets.back();
      m.bucket_of[static_cast<size_t>(k)] = static_cast<int>(m.buckets.size() - 1);
      m.slot_of[static_cast<size_t>(k)] = static_cast<int>(b.params.size());
      b.params.push_back(k);
      b.offsets.push_back(b.numel);
      b.numel += now[static_cast<size_t>(k)].numel();
    }
    for (auto& b : m.buckets) b.buf.assign(static_cast<size_t>(b.numel) + b.params.size(), 0.0f);
    // ZeRO-1 parameter all-gather layout: backward order, so each owner's bytes are contiguous
    m.param_byte_offset.assign(static_cast<size_t>(n), 0);
    m.rank_bytes.assign(static_cast<size_t>(N), 0);
    int64_t off = 0;
    for (int k = n - 1; k >= 0; --k) {
      m.param_byte_offset[static_cast<size_t>(k)] = off;
      const int64_t b = bytes_of(now[static_cast<size_t>(k)]);
      off += b;
      m.rank_bytes[static_cast<size_t>(m.owner[static_cast<size_t>(k)])] += b;
    }
    m.gather_buf.assign(opts_.shard_optimizer_state ? static_cast<size_t>(off) : 0, 0);
    m.hook_ids.assign(static_cast<size_t>(n), 0);
    for (int k = 0; k < n; ++k)
      m.hook_ids[static_cast<size_t>(k)] =
          m.params[static_cast<size_t>(k)].register_post_accumulate_grad_hook([this, k](const Tensor& leaf) {
            Impl& im = *impl_;
            if (comm_.size() == 1 || im.arrived[static_cast<size_t>(k)]) return;
            im.arrived[static_cast<size_t>(k)] = 1;
            Impl::Bucket& b = im.buckets[static_cast<size_t>(im.bucket_of[static_cast<size_t>(k)])];
            const int slot = im.slot_of[static_cast<size_t>(k)];
            const Tensor g = leaf.grad().dtype() == kFloat32 ? leaf.grad() : leaf.grad().to(kFloat32);
            scaled_copy(g.data_ptr<float>(), im.weight, b.buf.data() + b.offsets[static_cast<size_t>(slot)], g.numel());
            b.buf[static_cast<size_t>(b.numel) + static_cast<size_t>(slot)] = 1.0f;
            ++b.arrived;
            // send every bucket that is complete, in bucket order; poll the ones in flight
            while (im.next_launch < im.buckets.size() &&
                   im.buckets[im.next_launch].arrived == static_cast<int>(im.buckets[im.next_launch].params.size())) {
              const int tag = static_cast<int>(im.next_launch);
              Impl::Bucket& nb = im.buckets[im.next_launch++];
              LOWBIT_CHECK(im.launch(nb, tag, comm_.rank(), comm_.size()),
                           "DistributedDataParallel: starting a gradient bucket failed (MPI)");
              comm_.comm_bytes += static_cast<int64_t>(nb.buf.size()) * 4;
            }
            for (size_t j = 0; j < im.next_launch; ++j)
              if (!im.buckets[j].done) {
                bool all = true;
                for (auto& r : im.buckets[j].reqs) all = comm_.test(&r) && all;
                im.buckets[j].done = all;
              }
          });
  }
  m.arrived.assign(m.params.size(), 0);
  m.next_launch = 0;
  for (auto& b : m.buckets) {  // the gradients are overwritten by the hooks; the presence flags start at 0
    b.arrived = 0;
    b.launched = b.done = false;
    std::fill(b.buf.begin() + b.numel, b.buf.end(), 0.0f);
  }
}

void DistributedDataParallel::finish_gradient_sync() {
  Impl& m = *impl_;
  if (comm_.size() == 1) return;
  NoGradGuard ng;
  // parameters without a gradient on this rank: zeros (their flags stay 0)
  for (size_t k = 0; k < m.params.size(); ++k)
    if (!m.arrived[k]) {
      m.arrived[k] = 1;
      Impl::Bucket& b = m.buckets[static_cast<size_t>(m.bucket_of[k])];
      const int64_t at = b.offsets[static_cast<size_t>(m.slot_of[k])];
      std::fill(b.buf.begin() + at, b.buf.begin() + at + m.params[k].numel(), 0.0f);
      ++b.arrived;
    }
  for (; m.next_launch < m.buckets.size(); ++m.next_launch) {
    Impl::Bucket& b = m.buckets[m.next_launch];
    LOWBIT_CHECK(m.launch(b, static_cast<int>(m.next_launch), comm_.rank(), comm_.size()),
                 "DistributedDataParallel: starting a gradient bucket failed (MPI)");
    comm_.comm_bytes += static_cast<int64_t>(b.buf.size()) * 4;
  }
  const double waited = comm_.comm_seconds;
  for (auto& b : m.buckets) {
    for (auto& r : b.reqs) comm_.wait(&r, b.owner < 0 ? "the gradient all-reduce" : "the ZeRO-1 gradient reduce");
    b.done = true;
    if (b.owner == comm_.rank()) Impl::sum_in_rank_order(b, comm_.rank(), comm_.size());
  }
  gradient_wait_s_ += comm_.comm_seconds - waited;
  for (auto& b : m.buckets) {
    const bool mine = b.owner < 0 || b.owner == comm_.rank();
    for (size_t s = 0; s < b.params.size(); ++s) {
      const Tensor& p = m.params[static_cast<size_t>(b.params[s])];
      const bool any = b.buf[static_cast<size_t>(b.numel) + s] > 0.0f;  // some rank had a gradient
      if (!mine || !any) {
        p.set_grad(Tensor());
        continue;
      }
      const float* sum = b.buf.data() + b.offsets[s];
      const Tensor cur = p.grad();
      if (cur.defined() && cur.dtype() == kFloat32) {  // in place, as torch's DDP
        std::memcpy(cur.raw_data(), sum, static_cast<size_t>(p.numel()) * 4);
        continue;
      }
      Tensor g = empty(p.shape(), kFloat32);
      std::memcpy(g.raw_data(), sum, static_cast<size_t>(p.numel()) * 4);
      p.set_grad(p.dtype() == kFloat32 ? g : g.to(p.dtype()));
    }
  }
}

double DistributedDataParallel::global_loss(double local_mean_loss) {
  double v = local_mean_loss * impl_->loss_weight;
  comm_.allreduce_sum(&v, 1, "the loss all-reduce");
  return v;
}

double DistributedDataParallel::clip_grad_norm(double max_norm) {
  Impl& m = *impl_;
  // one term per parameter (only its owner has it), summed in parameter order as clip_grad_norm_
  std::vector<double> terms(m.params.size(), 0.0);
  for (size_t k = 0; k < m.params.size(); ++k) {
    if (m.params[k].grad().defined()) terms[k] = optim::grad_norm_term(m.params[k].grad());
  }
  if (opts_.shard_optimizer_state) comm_.allreduce_sum(terms.data(), static_cast<int64_t>(terms.size()), "grad norm");
  return optim::clip_grad_norm_from_terms(m.params, terms, max_norm);
}

void DistributedDataParallel::after_optimizer_step() {
  Impl& m = *impl_;
  if (!opts_.shard_optimizer_state || comm_.size() == 1) return;
  NoGradGuard ng;
  for (size_t k = 0; k < m.params.size(); ++k)
    if (m.owner[k] == comm_.rank())
      std::memcpy(m.gather_buf.data() + m.param_byte_offset[k], m.params[k].raw_data(), m.params[k].nbytes());
  const double waited = comm_.comm_seconds;
  comm_.allgatherv_inplace(m.gather_buf.data(), m.rank_bytes, "the ZeRO-1 parameter all-gather");
  gather_wait_s_ += comm_.comm_seconds - waited;
  for (size_t k = 0; k < m.params.size(); ++k)
    if (m.owner[k] != comm_.rank())
      std::memcpy(m.params[k].raw_data(), m.gather_buf.data() + m.param_byte_offset[k], m.params[k].nbytes());
}

bool DistributedDataParallel::owns(const Tensor& p) const {
  const Impl& m = *impl_;
  for (size_t k = 0; k < m.params.size(); ++k)
    if (m.ids[k] == p.impl()) return m.owner[k] == comm_.rank();
  return true;
}

std::vector<int> DistributedDataParallel::owners() const { return impl_->owner; }

namespace {
// optimizer indices (over all groups) of the parameters this rank owns
std::vector<std::pair<int64_t, Tensor>> indexed_params(const optim::Optimizer& opt) {
  std::vector<std::pair<int64_t, Tensor>> out;
  int64_t i = 0;
  for (const auto& g : opt.param_groups())
    for (const auto& p : g.params) out.emplace_back(i++, p);
  return out;
}
}  // namespace

void DistributedDataParallel::gather_optimizer_state(optim::Optimizer& opt) {
  if (!opts_.shard_optimizer_state || comm_.size() == 1) return;
  std::string mine;
  if (!comm_.is_root()) {
    for (const auto& [index, p] : indexed_params(opt)) {
      const optim::ParamState* st = opt.find_state(p);
      if (!st || !owns(p)) continue;
      put<int64_t>(mine, index);
      put<int64_t>(mine, st->step);
      put<uint32_t>(mine, static_cast<uint32_t>(st->tensors.size()));
      for (const auto& [key, t] : st->tensors) {
        put<uint32_t>(mine, static_cast<uint32_t>(key.size()));
        put(mine, key.data(), key.size());
        put<uint8_t>(mine, static_cast<uint8_t>(t.dtype()));
        put<uint32_t>(mine, static_cast<uint32_t>(t.dim()));
        for (int64_t d : t.shape()) put<int64_t>(mine, d);
        put<uint64_t>(mine, t.nbytes());
        put(mine, t.raw_data(), t.nbytes());
      }
    }
  }
  const std::vector<std::string> all = comm_.gather_bytes(mine, 0, "the ZeRO-1 optimizer state gather");
  if (!comm_.is_root()) return;
  optim::OptimizerState merged = opt.state_dict();
  for (size_t r = 1; r < all.size(); ++r) {
    Reader rd{all[r]};
    while (rd.at < all[r].size()) {
      const auto index = rd.get<int64_t>();
      optim::ParamState st;
      st.step = rd.get<int64_t>();
      const auto keys = rd.get<uint32_t>();
      for (uint32_t k = 0; k < keys; ++k) {
        const auto klen = rd.get<uint32_t>();
        const std::string key(rd.take(klen), klen);
        const auto dt = static_cast<DType>(rd.get<uint8_t>());
        const auto dims = rd.get<uint32_t>();
        LOWBIT_CHECK(dims <= 8, "ZeRO-1 state gather: rank {} sent a {}-dim state tensor", r, dims);
        Shape shape;
        for (uint32_t d = 0; d < dims; ++d) shape.push_back(rd.get<int64_t>());
        const auto nbytes = rd.get<uint64_t>();
        Tensor t = empty(shape, dt);
        LOWBIT_CHECK(t.nbytes() == nbytes, "ZeRO-1 state gather: rank {} sent {} bytes for a {} tensor", r, nbytes,
                     shape_str(shape));
        std::memcpy(t.raw_data(), rd.take(nbytes), nbytes);
        st.tensors[key] = t;
      }
      merged.state[index] = std::move(st);
    }
  }
  opt.load_state_dict(merged);
}

void DistributedDataParallel::drop_unowned_state(optim::Optimizer& opt) {
  if (!opts_.shard_optimizer_state || comm_.size() == 1) return;
  optim::OptimizerState s = opt.state_dict();
  for (const auto& [index, p] : indexed_params(opt))
    if (!owns(p)) s.state.erase(index);
  opt.load_state_dict(s);
}

int64_t DistributedDataParallel::state_bytes(const optim::Optimizer& opt) {
  int64_t b = 0;
  for (const auto& [index, st] : opt.state_dict().state)
    for (const auto& [key, t] : st.tensors) b += static_cast<int64_t>(t.nbytes());
  return b;
}

uint64_t DistributedDataParallel::parameter_checksum() const {
  uint64_t h = kFnvBasis;
  for (auto& [name, t] : module_.named_parameters()) h = fnv1a(h, t.raw_data(), t.nbytes());
  return h;
}

}  // namespace lowbit::dist
