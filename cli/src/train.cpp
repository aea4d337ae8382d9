// `lowbit train`: the training loop (progress, metrics, periodic checkpoints, QAT, sampling).
#include "lowbit/cli/train.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "lowbit/autograd/autograd.h"
#include "lowbit/autograd/generator.h"
#include "lowbit/autograd/ops.h"
#include "lowbit/autograd/parallel.h"
#include "lowbit/data/dataset.h"
#include "lowbit/io/checkpoint.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/transformer.h"
#include "lowbit/qat/quantized_linear.h"
#include "lowbit/qat/recipes.h"

#include "internal.h"

namespace lowbit::cli {

using namespace detail;

namespace {
using clk = std::chrono::steady_clock;

std::string fmt_duration(double s) {
  const int64_t t = static_cast<int64_t>(std::max(0.0, s));
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                   : fmt::format("{}:{:02}", t / 60, t % 60);
}

// One status line: a bar on terminals, plain log lines (every log_interval steps) otherwise.
class Progress {
 public:
  Progress(bool tty, int64_t log_interval) : tty_(tty), interval_(std::max<int64_t>(1, log_interval)) {}
  void update(const std::string& prefix, int64_t done, int64_t total, double loss, double samples_per_s, double eta_s) {
    if (tty_) {
      const int width = 24;
      const int filled = total > 0 ? static_cast<int>(width * done / total) : 0;
      std::printf("\r%s [%s%s] %lld/%lld loss %.4f | %.0f samples/s | ETA %s   ", prefix.c_str(),
                  std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                  static_cast<long long>(done), static_cast<long long>(total), loss, samples_per_s,
                  fmt_duration(eta_s).c_str());
      std::fflush(stdout);
    } else if (done % interval_ == 0 || done == total) {
      std::printf("%s step %lld/%lld loss %.4f samples/s %.0f eta %s\n", prefix.c_str(), static_cast<long long>(done),
                  static_cast<long long>(total), loss, samples_per_s, fmt_duration(eta_s).c_str());
      std::fflush(stdout);
    }
  }
  void line(const std::string& text) {
    if (tty_) std::printf("\r\033[K");
    std::printf("%s\n", text.c_str());
    std::fflush(stdout);
  }

 private:
  bool tty_;
  int64_t interval_;
};

// metrics.jsonl: one JSON object per line, each append checked (a full disk is an error).
class Metrics {
 public:
  explicit Metrics(std::string path) : path_(std::move(path)) {}
  void write(const nlohmann::json& j) { io::append_file(path_, j.dump() + "\n"); }

 private:
  std::string path_;
};

// Periodic checkpoints: <dir>/step_00001234.h5, keeping the newest keep_last.
class Checkpointer {
 public:
  explicit Checkpointer(const RunConfig& cfg)
      : enabled_(cfg.get_bool("checkpoint.enabled")),
        interval_(cfg.get_int("checkpoint.interval")),
        keep_(std::max<int64_t>(1, cfg.get_int("checkpoint.keep_last"))),
        dir_(checkpoint_dir(cfg)),
        config_(cfg.to_toml()),
        sched_name_(cfg.get_string("lr_scheduler.name")) {}
  bool due(int64_t step) const { return enabled_ && interval_ > 0 && step % interval_ == 0; }
  std::string save(int64_t step, const nn::Module& m, const optim::Optimizer& o, const optim::LRScheduler* s,
                   const data::DataLoader& l) {
    if (!enabled_) return "";
    std::filesystem::create_directories(dir_);
    const std::string path = fmt::format("{}/step_{:08}.h5", dir_, step);
    io::TrainingState st;
    st.step = step;
    st.config_toml = config_;
    st.scheduler_name = sched_name_;
    io::save_checkpoint(path, m, &o, s, &l, st);
    std::vector<std::string> files;
    for (auto& e : std::filesystem::directory_iterator(dir_)) {
      const auto n = e.path().filename().string();
      if (n.rfind("step_", 0) == 0 && e.path().extension() == ".h5") files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    for (size_t i = 0; i + static_cast<size_t>(keep_) < files.size(); ++i) std::filesystem::remove(files[i]);
    return path;
  }

 private:
  bool enabled_;
  int64_t interval_, keep_;
  std::string dir_, config_, sched_name_;
};

double step_once(nn::Module& model, optim::Optimizer& opt, optim::LRScheduler* sched, const Tensor& x, const Tensor& y,
                 double clip, bool lm) {
  Tensor logits = model.forward(x);
  Tensor loss = lm ? cross_entropy(logits.reshape({-1, logits.size(-1)}), y.reshape({-1})) : cross_entropy(logits, y);
  opt.zero_grad();
  loss.backward();
  if (clip > 0) optim::clip_grad_norm_(model.parameters(), clip);
  opt.step();
  if (sched) sched->step();
  return loss.item<double>();
}

}  // namespace

TrainResult train(const RunConfig& cfg, bool tty, const std::string& resume, const RunOptions& ro) {
  // ---- everything that can be checked before work ----
  validate_config(cfg);
  std::vector<std::string> notes, allowed_changes;
  int64_t resume_step = 0;
  if (!resume.empty()) {
    const auto info = io::inspect(resume);
    LOWBIT_CHECK(info.attributes.count("kind") && info.attributes.at("kind") == "training",
                 "--resume {}: not a training checkpoint (kind '{}')", resume,
                 info.attributes.count("kind") ? info.attributes.at("kind") : "");
    const RunConfig stored = stored_config(info, resume);
    allowed_changes = resume_config_changes(stored, cfg);
    if (!allowed_changes.empty() && !ro.resume_allow_changes) {
      std::string msg = fmt::format(
          "--resume {}: the run config differs from the checkpoint's in keys that change training:", resume);
      for (const auto& c : allowed_changes) msg += "\n  " + c;
      throw Error(msg + "\n(pass --resume-allow-changes to continue with the new values anyway)");
    }
    const auto st = info.attributes.find("step");
    LOWBIT_CHECK(st != info.attributes.end() && !st->second.empty() &&
                     st->second.find_first_not_of("0123456789") == std::string::npos && st->second.size() < 19,
                 "{}: the stored step '{}' is not a non-negative integer (corrupt file)", resume,
                 st == info.attributes.end() ? "" : st->second);
    resume_step = std::stoll(st->second);
  }
  prepare_run_dir(cfg, resume, resume_step, ro, notes);
  if (cfg.get_int("training.threads") > 0) set_num_threads(static_cast<int>(cfg.get_int("training.threads")));
  const uint64_t seed = static_cast<uint64_t>(cfg.get_int("training.seed"));
  manual_seed(seed);
  const std::string run_dir = cfg.get_string("training.run_dir");
  io::write_file_atomic(run_dir + "/config.toml", cfg.to_toml());
  Metrics metrics(run_dir + "/metrics.jsonl");
  Checkpointer ckpt(cfg);
  Progress progress(tty, cfg.get_int("training.log_interval"));
  for (const auto& n : notes) progress.line(n);
  if (!allowed_changes.empty())
    for (const auto& c : allowed_changes) progress.line("--resume-allow-changes: " + c);
  const double clip = cfg.get_float("training.grad_clip");
  const int64_t batch = cfg.get_int("data.batch_size");
  const std::string dataset = cfg.get_string("data.dataset");
  TrainResult result;
  const auto t0 = clk::now();
  int64_t run_steps = 0;  // steps taken by this process (a resumed run starts at 0)

  if (dataset == "fashion_mnist") {
    auto train_set = data::FashionMNIST::load(cfg.get_string("data.path"), true);
    auto test_set = data::FashionMNIST::load(cfg.get_string("data.path"), false);
    data::DataLoader loader(train_set, {.batch_size = batch,
                                        .shuffle = cfg.get_bool("data.shuffle"),
                                        .seed = seed,
                                        .drop_last = cfg.get_bool("data.drop_last")});
    auto model = build_model(cfg);
    auto opt = build_optimizer(cfg, model->parameters());
    const int64_t epochs = cfg.get_int("training.epochs");
    const int64_t max_steps = cfg.get_int("training.max_steps");
    const int64_t total =
        max_steps > 0 ? std::min(max_steps, epochs * loader.num_batches()) : epochs * loader.num_batches();
    auto sched = build_scheduler(cfg, *opt, total);
    if (!resume.empty()) {
      const auto rep = io::load_checkpoint(resume, *model, opt.get(), sched.get(), &loader);
      result.steps = rep.state->step;
      if (!sched && !allowed_changes.empty())
        opt->set_lr(cfg.get_float("optimizer.lr"));  // the stored rate otherwise wins
      progress.line(fmt::format("resumed from {} at step {} (epoch {}, batch {})", resume, result.steps,
                                loader.epoch() + 1, loader.position()));
    }
    progress.line(fmt::format("training {} parameters on {} examples: {} epochs x {} steps", model->num_parameters(),
                              train_set->size(), epochs, loader.num_batches()));
    for (int64_t epoch = loader.epoch() + 1; epoch <= epochs && result.steps < total; ++epoch) {
      const auto te = clk::now();
      double loss_sum = 0;
      int64_t n = 0, samples = 0;
      while (auto b = loader.next()) {
        const double loss = step_once(*model, *opt, sched.get(), b->data, b->target, clip, false);
        loss_sum += loss;
        ++n;
        ++result.steps;
        ++run_steps;
        samples += b->data.size(0);
        const double el = std::chrono::duration<double>(clk::now() - t0).count();
        const double rate = samples / std::max(1e-9, std::chrono::duration<double>(clk::now() - te).count());
        progress.update(fmt::format("epoch {}/{}", epoch, epochs), loader.position(), loader.num_batches(),
                        loss_sum / n, rate, el / run_steps * static_cast<double>(total - result.steps));
        if (ckpt.due(result.steps)) result.last_checkpoint = ckpt.save(result.steps, *model, *opt, sched.get(), loader);
        if (result.steps >= total) break;
      }
      const auto [test_loss, acc] = evaluate(*model, *test_set, 1000);
      result.final_train_loss = loss_sum / std::max<int64_t>(n, 1);
      result.test_accuracy = acc;
      const double secs = std::chrono::duration<double>(clk::now() - te).count();
      progress.line(fmt::format("epoch {}/{}: train loss {:.4f}, test loss {:.4f}, test accuracy {:.2f}%, {:.1f} s",
                                epoch, epochs, result.final_train_loss, test_loss, 100 * acc, secs));
      metrics.write({{"epoch", epoch},
                     {"step", result.steps},
                     {"train_loss", result.final_train_loss},
                     {"test_loss", test_loss},
                     {"test_accuracy", acc},
                     {"lr", opt->lr()},
                     {"epoch_seconds", secs}});
    }
    if (!ckpt.due(result.steps)) result.last_checkpoint = ckpt.save(result.steps, *model, *opt, sched.get(), loader);
    if (!result.last_checkpoint.empty()) progress.line("checkpoint: " + result.last_checkpoint);

    // ---- quantization: QAT fine-tuning then convert, or PTQ ----
    const std::string recipe = cfg.get_string("quantize.recipe");
    if (recipe != "none") {
      result.float_accuracy = result.test_accuracy;
      const int64_t float_bytes = model_bytes(*model);
      const auto qcfg =
          qat::recipe_config(recipe, cfg.get_string("quantize.weight_dtype"), cfg.get_int("quantize.group_size"));
      const std::string mode = cfg.get_string("quantize.mode");
      std::vector<std::string> skipped;
      const auto filter = qat::compatible_linears(*qcfg, &skipped);
      if (mode == "qat") {
        model = qat::quantize_(model, qat::QATConfig(qcfg, "prepare"), filter);
        for (const auto& s : skipped) progress.line("kept in float32: " + s);
        opt->set_lr(cfg.get_float("quantize.qat_lr"));  // the prepared modules share the trained parameters
        const int64_t qat_epochs = cfg.get_int("quantize.qat_epochs");
        if (loader.position() == loader.num_batches()) loader.next();  // step over the finished epoch's end
        for (int64_t e = 1; e <= qat_epochs; ++e) {
          const auto te = clk::now();
          double loss_sum = 0;
          int64_t n = 0;
          while (auto b = loader.next()) {
            loss_sum += step_once(*model, *opt, nullptr, b->data, b->target, clip, false);
            ++n;
            ++result.steps;
            progress.update(
                fmt::format("qat {}/{}", e, qat_epochs), loader.position(), loader.num_batches(), loss_sum / n,
                static_cast<double>(n * batch) / std::max(1e-9, std::chrono::duration<double>(clk::now() - te).count()),
                0.0);
          }
          const auto [tl, acc] = evaluate(*model, *test_set, 1000);
          result.qat_accuracy = acc;
          progress.line(fmt::format(
              "qat epoch {}/{} ({}): train loss {:.4f}, test loss {:.4f}, fake-quantized test accuracy {:.2f}%", e,
              qat_epochs, recipe, loss_sum / std::max<int64_t>(n, 1), tl, 100 * acc));
          metrics.write({{"phase", "qat"},
                         {"epoch", e},
                         {"step", result.steps},
                         {"train_loss", loss_sum / std::max<int64_t>(n, 1)},
                         {"test_loss", tl},
                         {"test_accuracy", acc}});
        }
        model = qat::quantize_(model, qat::QATConfig(qcfg, "convert"));
      } else {
        model = qat::quantize_(model, *qcfg, filter);
        for (const auto& s : skipped) progress.line("kept in float32: " + s);
      }
      const auto [tl, acc] = evaluate(*model, *test_set, 1000);
      result.test_accuracy = acc;
      progress.line(
          fmt::format("converted ({}, {}): test loss {:.4f}, test accuracy {:.2f}% (float {:.2f}%), model {} bytes "
                      "(float32 {} bytes)",
                      recipe, mode, tl, 100 * acc, 100 * result.float_accuracy, model_bytes(*model), float_bytes));
      metrics.write({{"phase", "converted"},
                     {"recipe", recipe},
                     {"mode", mode},
                     {"test_loss", tl},
                     {"test_accuracy", acc},
                     {"float_accuracy", result.float_accuracy},
                     {"model_bytes", model_bytes(*model)}});
    }
    result.model_bytes = model_bytes(*model);
    if (cfg.get_bool("training.export")) {
      result.export_path = run_dir + "/model.h5";
      io::export_model(result.export_path, *model, cfg.to_toml());
      progress.line("exported: " + result.export_path);
    }
  } else if (dataset == "chars") {
    LOWBIT_CHECK(cfg.get_string("model.type") == "gpt", "data.dataset 'chars' needs model.type = \"gpt\", got \"{}\"",
                 cfg.get_string("model.type"));
    const auto corpus = data::CharCorpus::load(cfg.get_string("data.path"), cfg.get_float("data.val_fraction"));
    LOWBIT_CHECK(std::find(corpus.vocab.begin(), corpus.vocab.end(), '\n') != corpus.vocab.end(),
                 "text corpus '{}' has no newline; the sample after training starts from one",
                 cfg.get_string("data.path").empty() ? data::CharCorpus::default_path() : cfg.get_string("data.path"));
    const int64_t ctx = cfg.get_int("model.context");
    auto train_set = std::make_shared<data::CharDataset>(corpus.train_tokens, ctx);
    auto val_set = std::make_shared<data::CharDataset>(corpus.val_tokens, ctx);
    data::DataLoader loader(train_set, {.batch_size = batch, .shuffle = true, .seed = seed, .drop_last = true});
    auto model = build_model(cfg, static_cast<int64_t>(corpus.vocab.size()));
    auto opt = build_optimizer(cfg, model->parameters());
    const int64_t total = cfg.get_int("training.max_steps");
    auto sched = build_scheduler(cfg, *opt, total);
    if (!resume.empty()) {
      const auto rep = io::load_checkpoint(resume, *model, opt.get(), sched.get(), &loader);
      result.steps = rep.state->step;
      if (!sched && !allowed_changes.empty()) opt->set_lr(cfg.get_float("optimizer.lr"));
      progress.line(fmt::format("resumed from {} at step {}", resume, result.steps));
    }
    const int64_t eval_every =
        cfg.get_int("training.eval_interval") > 0 ? cfg.get_int("training.eval_interval") : total;
    progress.line(fmt::format("training a {}-parameter GPT on {} characters (vocabulary {}), {} steps",
                              model->num_parameters(), corpus.train_tokens.size(), corpus.vocab.size(), total));
    auto val_loss = [&] {
      NoGradGuard ng;
      model->eval();
      Generator g(seed + 1);
      double s = 0;
      const int64_t nb = cfg.get_int("training.eval_batches");
      for (int64_t i = 0; i < nb; ++i) {
        std::vector<int64_t> starts(batch);
        for (auto& st : starts)
          st = static_cast<int64_t>(Generator::bits(g.seed(), g.reserve(1)) % static_cast<uint64_t>(val_set->size()));
        auto b = val_set->get_batch(starts);
        Tensor logits = model->forward(b.data);
        s += cross_entropy(logits.reshape({-1, logits.size(-1)}), b.target.reshape({-1})).item<double>();
      }
      model->train();
      return s / static_cast<double>(nb);
    };
    double loss_sum = 0;
    int64_t n = 0;
    while (result.steps < total) {
      auto b = loader.next();
      if (!b) continue;  // epoch boundary
      loss_sum += step_once(*model, *opt, sched.get(), b->data, b->target, clip, true);
      ++n;
      ++result.steps;
      ++run_steps;
      const double el = std::chrono::duration<double>(clk::now() - t0).count();
      progress.update("gpt", result.steps, total, loss_sum / n, static_cast<double>(run_steps * batch * ctx) / el,
                      el / run_steps * static_cast<double>(total - result.steps));
      if (ckpt.due(result.steps)) result.last_checkpoint = ckpt.save(result.steps, *model, *opt, sched.get(), loader);
      if (result.steps % eval_every == 0 || result.steps == total) {
        result.final_train_loss = loss_sum / n;
        result.val_loss = val_loss();
        progress.line(fmt::format("step {}/{}: train loss {:.4f}, validation loss {:.4f}", result.steps, total,
                                  result.final_train_loss, result.val_loss));
        metrics.write({{"step", result.steps},
                       {"train_loss", result.final_train_loss},
                       {"val_loss", result.val_loss},
                       {"lr", opt->lr()}});
        loss_sum = 0;
        n = 0;
      }
    }
    if (!ckpt.due(result.steps)) result.last_checkpoint = ckpt.save(result.steps, *model, *opt, sched.get(), loader);
    auto* gpt = dynamic_cast<nn::GPT*>(model.get());
    Generator g(seed + 2);
    Tensor prompt = from_vector<int64_t>({corpus.encode("\n")[0]}, {1, 1});
    Tensor out = gpt->generate(prompt, cfg.get_int("training.sample_tokens"), cfg.get_float("training.temperature"),
                               cfg.get_int("training.top_k"), &g);
    std::vector<int64_t> ids(out.data_ptr<int64_t>() + 1, out.data_ptr<int64_t>() + out.numel());
    result.sample = corpus.decode(ids);
    progress.line("sample:\n" + result.sample);
  } else {
    throw Error(fmt::format("data.dataset: unknown dataset '{}' (fashion_mnist, chars)", dataset));
  }
  result.train_seconds = std::chrono::duration<double>(clk::now() - t0).count();
  return result;
}

}  // namespace lowbit::cli
