// The training loop, its reporter and checkpoints, the standard tasks and the QAT driver.
#include "lowbit/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/generator.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/io/checkpoint.h"
#include "lowbit/qat/fake_quantizer.h"

namespace lowbit::train {

namespace {
using clk = std::chrono::steady_clock;
double since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

std::string fmt_duration(double s) {
  const int64_t t = static_cast<int64_t>(std::max(0.0, s));
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                   : fmt::format("{}:{:02}", t / 60, t % 60);
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

std::string format_metrics(const Metrics& m) {
  std::string out;
  for (const auto& [name, v] : m) {
    std::string label = name;
    std::replace(label.begin(), label.end(), '_', ' ');
    out += (out.empty() ? "" : ", ") + (ends_with(name, "accuracy") ? fmt::format("{} {:.2f}%", label, 100 * v)
                                                                    : fmt::format("{} {:.4f}", label, v));
  }
  return out;
}

// ---------------- tasks ----------------
Task classification_task(std::shared_ptr<const data::TensorDataset> test_set, int64_t eval_batch) {
  LOWBIT_CHECK(test_set != nullptr && eval_batch > 0, "classification_task: needs a test set and a positive batch");
  Task t;
  t.loss = [](nn::Module& m, const data::Batch& b) { return cross_entropy(m.forward(b.data), b.target); };
  t.evaluate = [test_set, eval_batch](nn::Module& m) -> Metrics {
    double loss = 0;
    int64_t correct = 0;
    const int64_t n = test_set->size();
    for (int64_t s = 0; s < n; s += eval_batch) {
      const int64_t len = std::min(eval_batch, n - s);
      const Tensor x = narrow(test_set->data(), 0, s, len), y = narrow(test_set->target(), 0, s, len);
      const Tensor logits = m.forward(x);
      loss += cross_entropy(logits, y, -100, 0.0, Reduction::Sum).item<double>();
      const Tensor pred = argmax(logits, 1);
      for (int64_t i = 0; i < len; ++i) correct += pred.data_ptr<int64_t>()[i] == y.data_ptr<int64_t>()[i];
    }
    return {{"test_loss", loss / static_cast<double>(n)},
            {"test_accuracy", static_cast<double>(correct) / static_cast<double>(n)}};
  };
  return t;
}

Task language_model_task(std::shared_ptr<const data::CharDataset> val_set, int64_t batch, int64_t eval_batches,
                         uint64_t seed) {
  LOWBIT_CHECK(val_set != nullptr && batch > 0 && eval_batches > 0,
               "language_model_task: needs a validation set and positive batch sizes");
  Task t;
  t.loss = [](nn::Module& m, const data::Batch& b) {
    const Tensor logits = m.forward(b.data);
    return cross_entropy(logits.reshape({-1, logits.size(-1)}), b.target.reshape({-1}));
  };
  t.evaluate = [val_set, batch, eval_batches, seed](nn::Module& m) -> Metrics {
    Generator g(seed);
    double s = 0;
    for (int64_t i = 0; i < eval_batches; ++i) {
      std::vector<int64_t> starts(static_cast<size_t>(batch));
      for (auto& st : starts)
        st = static_cast<int64_t>(Generator::bits(g.seed(), g.reserve(1)) % static_cast<uint64_t>(val_set->size()));
      const auto b = val_set->get_batch(starts);
      const Tensor logits = m.forward(b.data);
      s += cross_entropy(logits.reshape({-1, logits.size(-1)}), b.target.reshape({-1})).item<double>();
    }
    return {{"val_loss", s / static_cast<double>(eval_batches)}};
  };
  return t;
}

// ---------------- reporter ----------------
Reporter::Reporter(bool tty, int64_t log_interval, std::function<void(const std::string&)> sink)
    : tty_(tty), interval_(std::max<int64_t>(1, log_interval)), sink_(std::move(sink)) {}

void Reporter::update(const std::string& prefix, int64_t done, int64_t total, double loss, double samples_per_s,
                      double eta_s) {
  if (tty_ && !sink_) {
    const int width = 24;
    const int filled = total > 0 ? static_cast<int>(width * std::min(done, total) / total) : 0;
    std::printf("\r%s [%s%s] %lld/%lld loss %.4f | %.0f samples/s | ETA %s   ", prefix.c_str(),
                std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                static_cast<long long>(done), static_cast<long long>(total), loss, samples_per_s,
                fmt_duration(eta_s).c_str());
    std::fflush(stdout);
  } else if (done % interval_ == 0 || done == total) {
    line(fmt::format("{} step {}/{} loss {:.4f} samples/s {:.0f} eta {}", prefix, done, total, loss, samples_per_s,
                     fmt_duration(eta_s)));
  }
}

void Reporter::line(const std::string& text) {
  if (sink_) return sink_(text);
  if (tty_) std::printf("\r\033[K");
  std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

// ---------------- checkpoints ----------------
namespace {
void prune_step_files(const CheckpointOptions& c);
std::string save_distributed(const std::string& path, const nn::Module& model, optim::Optimizer& optimizer,
                             const optim::LRScheduler* scheduler, const data::DataLoader& loader, const Options& o,
                             const io::TrainingState& st);
}  // namespace

std::string save_step_checkpoint(int64_t step, const nn::Module& model, optim::Optimizer& optimizer,
                                 const optim::LRScheduler* scheduler, const data::DataLoader& loader,
                                 const Options& o) {
  const CheckpointOptions& c = o.checkpoint;
  if (!c.enabled) return "";
  std::filesystem::create_directories(c.dir);
  const std::string path = fmt::format("{}/step_{:08}.h5", c.dir, step);
  io::TrainingState st;
  st.step = step;
  st.config_toml = c.config_toml;
  st.scheduler_name = c.scheduler_name;
  st.phase = o.phase;
  if (o.ddp) return save_distributed(path, model, optimizer, scheduler, loader, o, st);
  io::save_checkpoint(path, model, &optimizer, scheduler, &loader, st);
  prune_step_files(c);
  return path;
}

namespace {
// keeps the newest keep_last step files of the checkpoint directory
void prune_step_files(const CheckpointOptions& c) {
  std::vector<std::string> files;
  for (auto& e : std::filesystem::directory_iterator(c.dir)) {
    const auto n = e.path().filename().string();
    if (n.rfind("step_", 0) == 0 && e.path().extension() == ".h5") files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  for (size_t i = 0; i + static_cast<size_t>(std::max<int64_t>(1, c.keep_last)) < files.size(); ++i)
    std::filesystem::remove(files[i]);
}

// Data parallel: the replicas must agree (their parameters' checksums), ZeRO-1 state is gathered
// on rank 0, rank 0 writes, and every rank learns whether it could (a failed write ends every
// rank with rank 0's message instead of leaving them waiting).
std::string save_distributed(const std::string& path, const nn::Module& model, optim::Optimizer& optimizer,
                             const optim::LRScheduler* scheduler, const data::DataLoader& loader, const Options& o,
                             const io::TrainingState& st) {
  dist::DistributedDataParallel& ddp = *o.ddp;
  dist::Comm& comm = ddp.comm();
  const std::string differ = comm.ranks_differing_from_root(ddp.parameter_checksum(), "the replica check");
  LOWBIT_CHECK(differ.empty(),
               "data parallel: the parameters of rank(s) {} differ from rank 0's at step {} (the replicas diverged; "
               "checkpoint not written)",
               differ, st.step);
  ddp.gather_optimizer_state(optimizer);
  // ZeRO-1 state is dropped again even when the write fails
  try {
    comm.on_root(fmt::format("writing checkpoint {}", path), [&] {
      io::save_checkpoint(path, model, &optimizer, scheduler, &loader, st);
      prune_step_files(o.checkpoint);
    });
  } catch (...) {
    ddp.drop_unowned_state(optimizer);
    throw;
  }
  ddp.drop_unowned_state(optimizer);
  return path;
}
}  // namespace

// ---------------- the loop ----------------
Metrics evaluate(nn::Module& model, const Task& task) {
  if (!task.evaluate) return {};
  NoGradGuard ng;
  const bool was = model.is_training();
  model.eval();
  Metrics m = task.evaluate(model);
  model.train(was);
  return m;
}

Result fit(nn::Module& model, optim::Optimizer& opt, optim::LRScheduler* sched, data::DataLoader& loader,
           const Task& task, const Options& o, Reporter& rep, int64_t start_step) {
  LOWBIT_CHECK(task.loss != nullptr, "train::fit: the task has no loss");
  Result r;
  r.step = start_step;
  const bool by_epoch = o.eval_interval == 0;
  const auto t0 = clk::now();
  auto te = clk::now();
  int64_t run_steps = 0, samples = 0, window_n = 0;
  double window_loss = 0;
  int64_t epoch_label = o.first_epoch;
  bool epoch_open = false;  // steps taken since the last end-of-epoch evaluation
  auto evaluate = [&](const std::string& what) {
    r.train_loss = window_loss / static_cast<double>(std::max<int64_t>(window_n, 1));
    r.eval = train::evaluate(model, task);
    const double secs = since(te);
    rep.line(fmt::format("{}: train loss {:.4f}{}{}, {:.1f} s", what, r.train_loss, r.eval.empty() ? "" : ", ",
                         format_metrics(r.eval), secs));
    if (!o.metrics_path.empty()) {
      nlohmann::json j = {{"phase", o.phase}, {"step", r.step}, {"train_loss", r.train_loss}};
      if (by_epoch) j["epoch"] = epoch_label;
      for (const auto& [k, v] : r.eval) j[k] = v;
      j["lr"] = opt.lr();
      j["seconds"] = secs;
      io::append_file(o.metrics_path, j.dump() + "\n");
    }
    window_loss = 0;
    window_n = 0;
    samples = 0;
    te = clk::now();
  };
  auto epoch_name = [&] {
    return o.epochs > 0 ? fmt::format("{} {}/{}", o.label, epoch_label, o.first_epoch + o.epochs - 1) : o.label;
  };
  while (r.step < o.total_steps) {
    auto b = loader.next();
    if (!b) {  // the end of an epoch
      if (by_epoch && epoch_open) {
        evaluate(epoch_name());
        ++epoch_label;
      }
      epoch_open = false;
      continue;
    }
    const int64_t global_examples = o.ddp ? loader.global_batch_size(loader.position() - 1) : b->data.size(0);
    if (o.ddp) o.ddp->begin_step(b->data.size(0), global_examples);
    Tensor loss = task.loss(model, *b);
    opt.zero_grad();
    loss.backward();
    if (o.ddp) o.ddp->finish_gradient_sync();
    if (o.grad_clip > 0) {
      if (o.ddp)
        o.ddp->clip_grad_norm(o.grad_clip);
      else
        optim::clip_grad_norm_(model.parameters(), o.grad_clip);
    }
    opt.step();
    if (o.ddp) o.ddp->after_optimizer_step();
    if (sched && o.step_scheduler) sched->step();
    const double step_loss = o.ddp ? o.ddp->global_loss(loss.item<double>()) : loss.item<double>();
    window_loss += step_loss;
    ++window_n;
    ++r.step;
    ++run_steps;
    epoch_open = true;
    samples += global_examples * o.samples_per_batch_item;
    const double rate = static_cast<double>(samples) / std::max(1e-9, since(te));
    const double eta = since(t0) / static_cast<double>(run_steps) * static_cast<double>(o.total_steps - r.step);
    if (by_epoch)
      rep.update(epoch_name(), loader.position(), loader.num_batches(), window_loss / window_n, rate, eta);
    else
      rep.update(o.label, r.step, o.total_steps, window_loss / window_n, rate, eta);
    if (!o.steps_path.empty() && (r.step % std::max<int64_t>(1, o.log_interval) == 0 || r.step == o.total_steps)) {
      const nlohmann::json j = {{"phase", o.phase},      {"step", r.step},
                                {"loss", step_loss},     {"train_loss", window_loss / static_cast<double>(window_n)},
                                {"lr", opt.lr()},        {"samples_per_s", rate},
                                {"elapsed_s", since(t0)}};
      io::append_file(o.steps_path, j.dump() + "\n");
    }
    if (o.ddp) dist::maybe_inject_fault(o.ddp->comm(), r.step);
    if (o.checkpoint.enabled && o.checkpoint.interval > 0 && r.step % o.checkpoint.interval == 0)
      r.last_checkpoint = save_step_checkpoint(r.step, model, opt, sched, loader, o);
    if (!by_epoch && (r.step % o.eval_interval == 0 || r.step == o.total_steps))
      evaluate(fmt::format("step {}/{}", r.step, o.total_steps));
  }
  if (by_epoch && epoch_open) evaluate(epoch_name());  // the phase ended inside an epoch
  const bool saved_now = o.checkpoint.interval > 0 && r.step % o.checkpoint.interval == 0 && run_steps > 0;
  if (!saved_now) r.last_checkpoint = save_step_checkpoint(r.step, model, opt, sched, loader, o);
  return r;
}

// ---------------- QAT statistics ----------------
namespace {
// records its input, then runs the module it stands in for
struct InputRecorder : nn::Module {
  InputRecorder(std::shared_ptr<nn::Module> m, Tensor* slot) : inner(std::move(m)), slot(slot) {}
  std::string type_name() const override { return "InputRecorder"; }
  Tensor forward(const Tensor& x) override {
    *slot = x.detach().clone();
    return inner->forward(x);
  }
  std::shared_ptr<nn::Module> inner;
  Tensor* slot;
};
// the inputs each named module receives when `input` runs through the model (eval, no grad)
std::map<std::string, Tensor> capture_inputs(nn::Module& model, const std::vector<std::string>& names,
                                             const Tensor& input) {
  std::map<std::string, Tensor> got;
  std::vector<std::pair<std::string, std::shared_ptr<nn::Module>>> saved;
  for (const auto& n : names) {
    auto m = model.get_submodule(n);
    saved.emplace_back(n, m);
    model.replace_module(n, std::make_shared<InputRecorder>(m, &got[n]));
  }
  NoGradGuard ng;
  const bool was = model.is_training();
  model.eval();
  try {
    model.forward(input);
  } catch (...) {
    for (auto& [n, m] : saved) model.replace_module(n, m);
    model.train(was);
    throw;
  }
  for (auto& [n, m] : saved) model.replace_module(n, m);
  model.train(was);
  return got;
}
void error_of(const Tensor& ref, const Tensor& q, double& sqnr_db, double& rel) {
  const Tensor a = ref.to(kFloat32), b = q.to(kFloat32);
  const double signal = sum(mul(a, a)).item<double>();
  const Tensor d = sub(a, b);
  const double noise = sum(mul(d, d)).item<double>();
  sqnr_db = noise == 0 ? INFINITY : 10.0 * std::log10(signal / noise);
  rel = signal == 0 ? NAN : std::sqrt(noise / signal);
}
// the fake-quantized Linears of a prepared model, by name
std::vector<std::pair<std::string, std::shared_ptr<qat::FakeQuantizedLinear>>> fake_quant_linears(nn::Module& model) {
  std::vector<std::pair<std::string, std::shared_ptr<qat::FakeQuantizedLinear>>> out;
  for (auto& [n, m] : model.named_modules())
    if (auto f = std::dynamic_pointer_cast<qat::FakeQuantizedLinear>(m)) out.emplace_back(n, f);
  return out;
}
// weight and output error of every fake-quantized Linear on its inputs from `input`
std::map<std::string, QuantError> fake_quant_errors(nn::Module& model, const Tensor& input,
                                                    std::map<std::string, Tensor>* inputs_out = nullptr) {
  const auto layers = fake_quant_linears(model);
  std::vector<std::string> names;
  for (auto& [n, m] : layers) names.push_back(n);
  const auto inputs = capture_inputs(model, names, input);
  NoGradGuard ng;
  std::map<std::string, QuantError> out;
  for (auto& [n, m] : layers) {
    QuantError e;
    const Tensor wq = m->weight_fake_quantizer ? m->weight_fake_quantizer->forward(m->weight) : m->weight;
    error_of(m->weight, wq, e.weight_sqnr_db, e.weight_rel_err);
    const Tensor& x = inputs.at(n);
    if (x.defined()) error_of(linear(x, m->weight, m->bias), m->forward(x), e.output_sqnr_db, e.output_rel_err);
    out[n] = e;
  }
  if (inputs_out) *inputs_out = inputs;
  return out;
}
}  // namespace

// ---------------- QAT ----------------
std::shared_ptr<nn::Module> prepare_for_qat(std::shared_ptr<nn::Module> model, const QatOptions& q) {
  LOWBIT_CHECK(q.config != nullptr, "train::prepare_for_qat: no quantization config");
  return qat::quantize_(std::move(model), qat::QATConfig(q.config, "prepare"), qat::compatible_linears(*q.config));
}

QatResult quantize_model(std::shared_ptr<nn::Module> model, optim::Optimizer& opt, optim::LRScheduler* sched,
                         data::DataLoader& loader, const Task& task, const QatOptions& q, Options o, Reporter& rep,
                         int64_t start_step, bool already_prepared) {
  LOWBIT_CHECK(q.config != nullptr, "train::quantize_model: no quantization config");
  LOWBIT_CHECK(q.mode == "qat" || q.mode == "ptq", "train::quantize_model: mode must be 'qat' or 'ptq', got '{}'",
               q.mode);
  QatResult res;
  res.step = start_step;
  auto eval = [&](nn::Module& m) { return evaluate(m, task); };
  if (q.mode == "qat") {
    std::map<std::string, QuantError> before;
    if (!already_prepared) {
      res.float_eval = eval(*model);
      model = prepare_for_qat(model, q);  // the prepared modules share the trained parameters and their state
      if (q.stats_input.defined()) before = fake_quant_errors(*model, q.stats_input);
    }
    // fine-tuning runs at the constant qat.lr (also after a resume, whose scheduler state may have
    // set the schedule's rate when it was loaded)
    opt.set_lr(q.lr);
    // fine-tuning: qat.epochs epochs of steps after the float phase, continuing the loader, up to
    // options.total_steps (the caller's: float steps + qat.epochs x batches per epoch)
    o.phase = "qat";
    o.label = "qat";
    o.step_scheduler = false;
    const int64_t nb = std::max<int64_t>(1, loader.num_batches());
    const int64_t qat_start = o.total_steps - (q.steps > 0 ? q.steps : q.epochs * nb);
    LOWBIT_CHECK(start_step >= qat_start && start_step <= o.total_steps,
                 "train::quantize_model: step {} is outside the fine-tuning steps {}..{}", start_step, qat_start,
                 o.total_steps);
    o.epochs = q.steps > 0 ? 0 : q.epochs;  // step-based progress when counting steps
    o.first_epoch = 1 + (start_step - qat_start) / nb;
    const Result r = fit(*model, opt, sched, loader, task, o, rep, start_step);
    res.fake_quant_eval = r.eval;
    res.step = r.step;
    res.last_checkpoint = r.last_checkpoint;
    // statistics after fine-tuning, and the float layers (weights shared) for the converted ones
    std::map<std::string, Tensor> inputs;
    std::map<std::string, QuantError> after;
    std::vector<std::pair<std::string, std::shared_ptr<qat::FakeQuantizedLinear>>> layers;
    if (q.stats_input.defined()) {
      after = fake_quant_errors(*model, q.stats_input, &inputs);
      layers = fake_quant_linears(*model);
    }
    model = qat::quantize_(model, qat::QATConfig(q.config, "convert"));
    NoGradGuard ng;
    for (auto& [n, f] : layers) {
      LayerQuantStats st;
      st.name = n;
      st.shape = f->weight.shape();
      st.float_bytes = static_cast<int64_t>(f->weight.nbytes() + (f->bias.defined() ? f->bias.nbytes() : 0));
      if (before.count(n)) st.before = before[n];
      st.after = after[n];
      auto conv = model->get_submodule(n);
      st.converted_bytes = conv->num_bytes();
      const Tensor& x = inputs[n];
      if (x.defined())
        error_of(linear(x, f->weight, f->bias), conv->forward(x), st.converted.output_sqnr_db,
                 st.converted.output_rel_err);
      res.layer_stats.push_back(st);
    }
  } else {
    res.float_eval = eval(*model);
    // PTQ statistics: each converted Linear's outputs against the float layer's on its inputs
    std::vector<std::pair<std::string, std::shared_ptr<nn::Linear>>> linears;
    std::map<std::string, Tensor> inputs;
    if (q.stats_input.defined()) {
      std::vector<std::string> names;
      for (auto& [n, m] : model->named_modules())
        if (auto l = std::dynamic_pointer_cast<nn::Linear>(m); l && !n.empty()) {
          linears.emplace_back(n, l);
          names.push_back(n);
        }
      inputs = capture_inputs(*model, names, q.stats_input);
    }
    model = qat::quantize_(model, *q.config, qat::compatible_linears(*q.config));
    NoGradGuard ng;
    for (auto& [n, l] : linears) {
      auto conv = model->get_submodule(n);
      if (std::dynamic_pointer_cast<nn::Linear>(conv)) continue;  // kept in float
      LayerQuantStats st;
      st.name = n;
      st.shape = l->weight.shape();
      st.float_bytes = static_cast<int64_t>(l->weight.nbytes() + (l->bias.defined() ? l->bias.nbytes() : 0));
      st.converted_bytes = conv->num_bytes();
      if (inputs[n].defined())
        error_of(linear(inputs[n], l->weight, l->bias), conv->forward(inputs[n]), st.converted.output_sqnr_db,
                 st.converted.output_rel_err);
      res.layer_stats.push_back(st);
    }
  }
  res.converted_eval = eval(*model);
  res.model = model;
  return res;
}

}  // namespace lowbit::train
