// `lowbit train`: builds what a run config describes (data, model, task, optimizer, scheduler,
// quantization recipe) and runs the library's workflow on it (lowbit::train: the training loop,
// then the QAT driver), handling resume (also mid-QAT), the GPT sample and the export.
#include "lowbit/cli/train.h"

#include "lowbit/cli/report.h"

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
#include "lowbit/dist/ddp.h"
#include "lowbit/float8/float8.h"
#include "lowbit/mx/linear.h"
#include "lowbit/mx/nvfp4_training.h"
#include "lowbit/io/checkpoint.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/transformer.h"
#include "lowbit/qat/quantized_linear.h"
#include "lowbit/qat/recipes.h"
#include "lowbit/train/trainer.h"

#include "internal.h"

namespace lowbit::cli {

using namespace detail;

namespace {
double metric(const train::Metrics& m, const std::string& name) {
  for (const auto& [k, v] : m)
    if (k == name) return v;
  return 0.0;
}
// [float8] / [mx]: every Linear becomes a Float8Linear / MXLinear unless its name contains one of
// filter_fqns or, with float8's auto_filter, torchao's _auto_filter_for_recipe skips it; says
// which layers were converted and which were kept (and why).
std::shared_ptr<nn::Module> convert_for_training_recipe(const std::shared_ptr<nn::Module>& model, const RunConfig& cfg,
                                                        train::Reporter& progress) {
  const bool is_mx = cfg.get_string("mx.recipe_name") != "none";
  const std::string section = is_mx ? "mx" : "float8";
  const std::string recipe = cfg.get_string(section + ".recipe_name");
  if (recipe == "none") return model;
  const bool emulate = cfg.get_bool(section + ".emulate");
  const std::vector<std::string> fqns = cfg.get_string_list(section + ".filter_fqns");
  const float8::ModuleFilter autof = !is_mx && cfg.get_bool("float8.auto_filter")
                                         ? float8::auto_filter_for_recipe(recipe, {})
                                         : float8::ModuleFilter();
  std::vector<std::string> converted, kept;
  auto filter = [&](const nn::Linear& m, const std::string& fqn) {
    const std::string name = fqn.empty() ? "(root)" : fqn;
    for (const auto& f : fqns)
      if (fqn.find(f) != std::string::npos) {
        kept.push_back(fmt::format("{} (filter_fqns: '{}')", name, f));
        return false;
      }
    if (autof && !autof(m, fqn)) {
      kept.push_back(fmt::format("{} (auto filter: {}x{})", name, m.out_features, m.in_features));
      return false;
    }
    converted.push_back(name);
    return true;
  };
  std::shared_ptr<nn::Module> out;
  if (is_mx && recipe == "nvfp4") {
    std::vector<std::string> shapes;
    out = mx::convert_to_nvfp4_training(model, {}, filter, &shapes);
    kept.insert(kept.end(), shapes.begin(), shapes.end());
  } else if (is_mx) {
    mx::MXLinearConfig config = mx::MXLinearConfig::from_recipe_name(recipe);
    config.emulate = config.emulate || emulate;
    out = mx::convert_to_mx_training(model, config, filter);
  } else {
    float8::Float8LinearConfig config = float8::Float8LinearConfig::from_recipe_name(recipe);
    config.emulate = emulate;
    out = float8::convert_to_float8_training(model, config, filter);
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s.empty() ? std::string("none") : s;
  };
  progress.line(fmt::format("{} ({}{}): {} layers converted: {}", section, recipe, emulate ? ", emulate" : "",
                            converted.size(), join(converted)));
  if (!kept.empty()) progress.line(fmt::format("{}: kept in high precision: {}", section, join(kept)));
  return out;
}
// Runs fn on rank 0 only; every rank then learns whether it succeeded and throws rank 0's error
// if not (the others would otherwise wait for it in the next collective).
// fn on rank 0 only under mpirun (dist::Comm::on_root), else here
template <typename F>
void on_root(dist::Comm* comm, const char* what, F&& fn) {
  if (!comm) return fn();
  comm->on_root(what, fn);
}

// Every rank must run the same config (and resume the same checkpoint): hashes compared at start.
void check_same_run(dist::Comm& comm, const RunConfig& cfg, const std::string& resume) {
  const std::string text = cfg.to_toml() + "\nresume=" + resume;
  const std::string differ =
      comm.ranks_differing_from_root(dist::fnv1a(dist::kFnvBasis, text.data(), text.size()), "the run config check");
  LOWBIT_CHECK(differ.empty(),
               "data parallel: rank(s) {} were started with a different run config or --resume than rank 0; every "
               "rank must run the same command (compare `lowbit train ... --print-config` on each host)",
               differ);
}
}  // namespace

TrainResult train(const RunConfig& cfg, bool tty, const std::string& resume, const RunOptions& ro) {
  // ---- everything that can be checked before work ----
  validate_config(cfg);
  std::vector<std::string> notes, allowed_changes;
  int64_t resume_step = 0;
  std::string resume_phase = "train";
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
    if (auto ph = info.attributes.find("phase"); ph != info.attributes.end()) resume_phase = ph->second;
  }
  // ---- data parallel under mpirun: same config everywhere, rank 0 owns the run directory ----
  dist::Comm* comm = dist::launched_by_mpi() ? &dist::Comm::world() : nullptr;
  if (comm && comm->size() == 1) comm = nullptr;  // mpirun -np 1: a plain run
  if (comm) {
    comm->set_timeout(cfg.get_float("distributed.timeout_s"));
    check_same_run(*comm, cfg, resume);
  }
  on_root(comm, "preparing the run directory", [&] { prepare_run_dir(cfg, resume, resume_step, ro, notes); });
  if (cfg.get_int("training.threads") > 0)
    set_num_threads(static_cast<int>(cfg.get_int("training.threads")));
  else if (comm)
    set_num_threads(dist::default_threads_per_rank(*comm));
  // the run's GEMM precision, restored when the run ends (tests and library users run several)
  struct PrecisionScope {
    std::string saved = get_float32_matmul_precision();
    explicit PrecisionScope(const std::string& p) { set_float32_matmul_precision(p); }
    ~PrecisionScope() { set_float32_matmul_precision(saved); }
  } precision_scope(cfg.get_string("training.precision") == "bf16" ? "medium" : "highest");
  const uint64_t seed = static_cast<uint64_t>(cfg.get_int("training.seed"));
  manual_seed(seed);
  const std::string run_dir = cfg.get_string("training.run_dir");
  on_root(comm, "writing config.toml", [&] { io::write_file_atomic(run_dir + "/config.toml", cfg.to_toml()); });
  // progress and logs from rank 0 only
  train::Reporter progress =
      comm && !comm->is_root() ? train::Reporter(false, cfg.get_int("training.log_interval"), [](const std::string&) {})
                               : train::Reporter(tty, cfg.get_int("training.log_interval"));
  for (const auto& n : notes) progress.line(n);
  if (!allowed_changes.empty())
    for (const auto& c : allowed_changes) progress.line("--resume-allow-changes: " + c);
  const int64_t batch = cfg.get_int("data.batch_size");
  const std::string dataset = cfg.get_string("data.dataset");
  TrainResult result;
  const auto t0 = std::chrono::steady_clock::now();

  // ---- the data, the model and what it is judged on ----
  train::Options o;
  o.grad_clip = cfg.get_float("training.grad_clip");
  o.metrics_path = comm && !comm->is_root() ? "" : run_dir + "/metrics.jsonl";
  o.steps_path = comm && !comm->is_root() ? "" : run_dir + "/steps.jsonl";
  o.log_interval = cfg.get_int("training.log_interval");
  o.checkpoint = {cfg.get_bool("checkpoint.enabled"),  checkpoint_dir(cfg), cfg.get_int("checkpoint.interval"),
                  cfg.get_int("checkpoint.keep_last"), cfg.to_toml(),       cfg.get_string("lr_scheduler.name")};
  std::shared_ptr<nn::Module> model;
  std::unique_ptr<data::DataLoader> loader;
  train::Task task;
  std::shared_ptr<data::Dataset> train_set;
  data::CharCorpus corpus;
  std::string what;    // "training ..." line
  Tensor stats_input;  // a held-out batch for the quantization statistics
  if (dataset == "fashion_mnist") {
    auto train_images = data::FashionMNIST::load(cfg.get_string("data.path"), true);
    auto test_set = data::FashionMNIST::load(cfg.get_string("data.path"), false);
    train_set = train_images;
    loader = std::make_unique<data::DataLoader>(train_set,
                                                data::DataLoaderOptions{.batch_size = batch,
                                                                        .shuffle = cfg.get_bool("data.shuffle"),
                                                                        .seed = seed,
                                                                        .drop_last = cfg.get_bool("data.drop_last"),
                                                                        .num_replicas = comm ? comm->size() : 1,
                                                                        .rank = comm ? comm->rank() : 0});
    model = build_model(cfg);
    task = train::classification_task(test_set, 1000);
    stats_input = narrow(test_set->data(), 0, 0, std::min<int64_t>(256, test_set->size())).clone();
    const int64_t epochs = cfg.get_int("training.epochs"), max_steps = cfg.get_int("training.max_steps");
    o.total_steps =
        max_steps > 0 ? std::min(max_steps, epochs * loader->num_batches()) : epochs * loader->num_batches();
    o.epochs = epochs;
    o.label = "epoch";
    what = fmt::format("training {} parameters on {} examples: {} epochs x {} steps", model->num_parameters(),
                       train_set->size(), epochs, loader->num_batches());
  } else if (dataset == "chars") {
    LOWBIT_CHECK(cfg.get_string("model.type") == "gpt", "data.dataset 'chars' needs model.type = \"gpt\", got \"{}\"",
                 cfg.get_string("model.type"));
    corpus = data::CharCorpus::load(cfg.get_string("data.path"), cfg.get_float("data.val_fraction"));
    LOWBIT_CHECK(std::find(corpus.vocab.begin(), corpus.vocab.end(), '\n') != corpus.vocab.end(),
                 "text corpus '{}' has no newline; the sample after training starts from one",
                 cfg.get_string("data.path").empty() ? data::CharCorpus::default_path() : cfg.get_string("data.path"));
    const int64_t ctx = cfg.get_int("model.context");
    train_set = std::make_shared<data::CharDataset>(corpus.train_tokens, ctx);
    auto val_set = std::make_shared<data::CharDataset>(corpus.val_tokens, ctx);
    loader =
        std::make_unique<data::DataLoader>(train_set, data::DataLoaderOptions{.batch_size = batch,
                                                                              .shuffle = true,
                                                                              .seed = seed,
                                                                              .drop_last = true,
                                                                              .num_replicas = comm ? comm->size() : 1,
                                                                              .rank = comm ? comm->rank() : 0});
    model = build_model(cfg, static_cast<int64_t>(corpus.vocab.size()));
    {  // 8 validation windows for the per-layer quantization statistics
      std::vector<int64_t> starts;
      for (int64_t i = 0; i < 8; ++i) starts.push_back(i * (val_set->size() / 8));
      stats_input = val_set->get_batch(starts).data;
    }
    task = train::language_model_task(val_set, batch, cfg.get_int("training.eval_batches"), seed + 1);
    o.total_steps = cfg.get_int("training.max_steps");
    o.label = "gpt";
    o.eval_interval = cfg.get_int("training.eval_interval") > 0 ? cfg.get_int("training.eval_interval") : o.total_steps;
    o.samples_per_batch_item = ctx;
    what = fmt::format("training a {}-parameter GPT on {} characters (vocabulary {}), {} steps",
                       model->num_parameters(), corpus.train_tokens.size(), corpus.vocab.size(), o.total_steps);
  } else {
    throw Error(fmt::format("data.dataset: unknown dataset '{}' (fashion_mnist, chars)", dataset));
  }
  model = convert_for_training_recipe(model, cfg, progress);
  if (cfg.get_string("training.param_dtype") == "bf16") model->to(kBFloat16);  // no float32 master copy
  const int64_t float_steps = o.total_steps;
  auto opt = build_optimizer(cfg, *model);
  auto sched = build_scheduler(cfg, *opt, float_steps);

  // ---- quantization settings; a checkpoint taken during QAT holds the prepared model ----
  const std::string recipe = cfg.get_string("quantize.recipe");
  train::QatOptions q;
  if (recipe != "none") {
    q.config = build_quantize_config(cfg);
    q.name = recipe;
    q.mode = cfg.get_string("quantize.mode");
    q.epochs = cfg.get_int("quantize.qat_epochs");
    q.steps = cfg.get_int("quantize.qat_steps");
    q.lr = cfg.get_float("quantize.qat_lr");
    q.stats_input = stats_input;
  }
  bool in_qat = false;
  if (!resume.empty()) {
    in_qat = resume_phase == "qat";
    LOWBIT_CHECK(!in_qat || (recipe != "none" && q.mode == "qat"),
                 "--resume {}: the checkpoint was taken during QAT fine-tuning, but this run's quantize.recipe is '{}' "
                 "and quantize.mode '{}'",
                 resume, recipe, cfg.get_string("quantize.mode"));
    if (in_qat) model = train::prepare_for_qat(model, q);  // the same tree the checkpoint holds
    const auto rep = io::load_checkpoint(resume, *model, opt.get(), sched.get(), loader.get());
    result.steps = rep.state->step;
    if (!sched && !allowed_changes.empty() && !in_qat)
      opt->set_lr(cfg.get_float("optimizer.lr"));  // the stored rate otherwise wins
    progress.line(fmt::format("resumed from {} at step {}{} (epoch {}, batch {})", resume, result.steps,
                              in_qat ? " of QAT fine-tuning" : "", loader->epoch() + 1, loader->position()));
  }
  progress.line(what);
  // ---- data parallel: hooks, buckets, rank 0's parameters everywhere; ZeRO-1 keeps this rank's share ----
  std::unique_ptr<dist::DistributedDataParallel> ddp;
  const int64_t ddp_start_step = result.steps;
  if (comm) {
    ddp = std::make_unique<dist::DistributedDataParallel>(
        *model, *comm,
        dist::DDPOptions{.bucket_cap_mb = cfg.get_float("distributed.bucket_cap_mb"),
                         .shard_optimizer_state = cfg.get_bool("distributed.shard_optimizer_state")});
    ddp->drop_unowned_state(*opt);
    o.ddp = ddp.get();
    progress.line(fmt::format("data parallel: {} ranks x {} threads, global batch {} ({} per rank), {}bucket {} MiB",
                              comm->size(), get_num_threads(), batch, batch / comm->size(),
                              ddp->options().shard_optimizer_state ? "ZeRO-1 optimizer state sharding, " : "",
                              cfg.get_float("distributed.bucket_cap_mb")));
    comm->comm_seconds = 0;
    comm->comm_bytes = 0;
  }

  // ---- the float phase ----
  if (!in_qat) {
    const train::Result r = train::fit(*model, *opt, sched.get(), *loader, task, o, progress, result.steps);
    result.steps = r.step;
    result.final_train_loss = r.train_loss;
    result.test_accuracy = metric(r.eval, "test_accuracy");
    result.val_loss = metric(r.eval, "val_loss");
    result.last_checkpoint = r.last_checkpoint;
    if (!r.last_checkpoint.empty()) progress.line("checkpoint: " + r.last_checkpoint);
  }

  // ---- quantization: QAT fine-tuning then convert, or PTQ ----
  if (recipe != "none") {
    const int64_t float_bytes = model_bytes(*model);
    train::Options qo = o;
    qo.total_steps = float_steps + (q.mode != "qat" ? 0 : q.steps > 0 ? q.steps : q.epochs * loader->num_batches());
    const auto qr =
        train::quantize_model(model, *opt, sched.get(), *loader, task, q, qo, progress, result.steps, in_qat);
    model = qr.model;
    result.steps = qr.step;
    if (!qr.last_checkpoint.empty()) result.last_checkpoint = qr.last_checkpoint;
    if (!qr.float_eval.empty()) result.float_accuracy = metric(qr.float_eval, "test_accuracy");
    result.qat_accuracy = metric(qr.fake_quant_eval, "test_accuracy");
    result.test_accuracy = metric(qr.converted_eval, "test_accuracy");
    if (dataset == "chars") result.val_loss = metric(qr.converted_eval, "val_loss");
    progress.line(fmt::format("converted ({}, {}): {}{}, model {} bytes (float32 {} bytes)", recipe, q.mode,
                              train::format_metrics(qr.converted_eval),
                              qr.float_eval.empty() ? "" : " (float: " + train::format_metrics(qr.float_eval) + ")",
                              model_bytes(*model), float_bytes));
    nlohmann::json j = {{"phase", "converted"}, {"recipe", recipe}, {"mode", q.mode}, {"step", result.steps}};
    for (const auto& [k, v] : qr.converted_eval) j[k] = v;
    for (const auto& [k, v] : qr.float_eval) j["float_" + k] = v;
    j["model_bytes"] = model_bytes(*model);
    if (!o.metrics_path.empty()) io::append_file(o.metrics_path, j.dump() + "\n");
    if (!qr.layer_stats.empty() && (!comm || comm->is_root())) {  // for `lowbit report`
      auto err = [](const train::QuantError& e) {
        return nlohmann::json{{"weight_sqnr_db", e.weight_sqnr_db},
                              {"weight_rel_err", e.weight_rel_err},
                              {"output_sqnr_db", e.output_sqnr_db},
                              {"output_rel_err", e.output_rel_err}};
      };
      nlohmann::json layers = nlohmann::json::array();
      for (const auto& l : qr.layer_stats)
        layers.push_back({{"name", l.name},
                          {"shape", l.shape},
                          {"float_bytes", l.float_bytes},
                          {"converted_bytes", l.converted_bytes},
                          {"before", err(l.before)},
                          {"after", err(l.after)},
                          {"converted", err(l.converted)}});
      const nlohmann::json stats = {{"recipe", recipe}, {"mode", q.mode}, {"step", result.steps}, {"layers", layers}};
      io::write_file_atomic(run_dir + "/quant_stats.json", stats.dump(1) + "\n");
    }
  }
  result.model_bytes = model_bytes(*model);
  if (dataset == "chars") {  // a sample from the final (possibly quantized) model
    auto* gpt = dynamic_cast<nn::GPT*>(model.get());
    Generator g(seed + 2);
    Tensor prompt = from_vector<int64_t>({corpus.encode("\n")[0]}, {1, 1});
    Tensor out = gpt->generate(prompt, cfg.get_int("training.sample_tokens"), cfg.get_float("training.temperature"),
                               cfg.get_int("training.top_k"), &g);
    std::vector<int64_t> ids(out.data_ptr<int64_t>() + 1, out.data_ptr<int64_t>() + out.numel());
    result.sample = corpus.decode(ids);
    progress.line("sample:\n" + result.sample);
  }
  if (ddp) {
    result.ranks = comm->size();
    result.optimizer_state_bytes = dist::DistributedDataParallel::state_bytes(*opt);
    result.comm_seconds = comm->comm_seconds;
    const double steps = static_cast<double>(std::max<int64_t>(1, result.steps - ddp_start_step));
    double worst[5] = {static_cast<double>(result.optimizer_state_bytes), result.comm_seconds,
                       static_cast<double>(comm->comm_bytes) / steps, ddp->gradient_wait_seconds(),
                       ddp->gather_wait_seconds()};
    comm->allreduce_max(worst, 5, "the run summary");
    progress.line(
        fmt::format("data parallel: optimizer state {} bytes on the largest rank; {:.2f} s waiting in "
                    "collectives (gradient sync {:.2f} s, ZeRO-1 all-gather {:.2f} s), {:.2f} MB sent per "
                    "step (the largest rank)",
                    static_cast<int64_t>(worst[0]), worst[1], worst[3], worst[4], worst[2] / 1e6));
  }
  if (cfg.get_bool("training.export")) {
    result.export_path = run_dir + "/model.h5";
    on_root(comm, "exporting the model", [&] { io::export_model(result.export_path, *model, cfg.to_toml()); });
    progress.line("exported: " + result.export_path);
  }
  result.train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (cfg.get_bool("training.report"))
    on_root(comm, "writing report.html", [&] { progress.line("report: " + report_command(run_dir, "", false)); });
  return result;
}

}  // namespace lowbit::cli
