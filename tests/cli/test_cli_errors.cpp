// The lowbit executable on the failure paths a user meets: configs that are wrong before any
// work, run directories that hold another run, resumes that would break exactness, bad data,
// and a full disk. Each case asserts the exit code and the message.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <lowbit/lowbit.h>

#include "../io/subprocess.h"
#include "lowbit/cli/train.h"
#include "lowbit/io/checkpoint.h"

using namespace lowbit;
namespace fs = std::filesystem;

namespace {
const std::string kMlp = std::string(LOWBIT_SOURCE_DIR) + "/configs/fmnist_mlp.toml";
const std::string kGpt = std::string(LOWBIT_SOURCE_DIR) + "/configs/gpt_chars.toml";

std::string scratch(const std::string& name) {
  const auto p = fs::temp_directory_path() / ("lowbit_clierr_" + std::to_string(::getpid())) / name;
  fs::remove_all(p);
  fs::create_directories(p.parent_path());
  return p.string();
}
bool have_fmnist() { return fs::exists(data::FashionMNIST::default_dir() + "/t10k-images-idx3-ubyte.gz"); }

lowbit::testing::ProcessResult lowbit_run(std::vector<std::string> args, const std::vector<std::string>& env = {}) {
  args.insert(args.begin(), LOWBIT_EXE);
  auto r = lowbit::testing::run_process(
      args, fs::temp_directory_path() / ("lowbit_clierr_out_" + std::to_string(::getpid()) + ".txt"), 0, 300.0, env);
  EXPECT_EQ(r.signal, 0) << "killed by signal " << r.signal << ":\n" << r.output;
  EXPECT_FALSE(r.timed_out);
  return r;
}
// a tiny, fast Fashion-MNIST run
std::vector<std::string> tiny(const std::string& run_dir, std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {"train",
                                kMlp,
                                "--model.hidden",
                                "[8]",
                                "--training.epochs",
                                "1",
                                "--training.max_steps",
                                "4",
                                "--training.run_dir",
                                run_dir};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}
// a tiny character-level GPT run (the corpus comes from --data.path or the environment)
std::vector<std::string> tiny_gpt(const std::string& run_dir, int steps) {
  return {"train",
          kGpt,
          "--model.context",
          "8",
          "--model.d_model",
          "16",
          "--model.n_layers",
          "1",
          "--data.batch_size",
          "4",
          "--training.max_steps",
          std::to_string(steps),
          "--lr_scheduler.warmup_steps",
          "1",
          "--training.run_dir",
          run_dir};
}
#define EXPECT_FAILS_WITH(r, text)                                                                            \
  do {                                                                                                        \
    EXPECT_EQ((r).exit_code, 1) << (r).output;                                                                \
    EXPECT_NE((r).output.find("lowbit: error: "), std::string::npos) << (r).output;                           \
    EXPECT_NE((r).output.find(text), std::string::npos) << "expected '" << (text) << "' in:\n" << (r).output; \
  } while (0)
int count_lines(const std::string& path) {
  std::ifstream in(path);
  std::string l;
  int n = 0;
  while (std::getline(in, l)) ++n;
  return n;
}
}  // namespace

TEST(CliErrors, ConfigIsValidatedBeforeAnyWork) {
  const std::string run = scratch("validate");
  struct Bad {
    std::vector<std::string> overrides;
    std::string message;
  };
  const std::vector<Bad> bad = {
      {{"--quantize.recipe", "8da5w"}, "unknown quantization recipe '8da5w'"},
      {{"--quantize.recipe", "8da4w", "--quantize.mode", "qta"}, "quantize.mode: unknown value 'qta'"},
      {{"--quantize.recipe", "8da-intx", "--quantize.weight_dtype", "int9"}, "unknown target dtype 'int9'"},
      {{"--quantize.recipe", "8da4w", "--quantize.group_size", "-2"}, "group_size must be positive"},
      {{"--quantize.recipe", "float8-dyn-row", "--quantize.float8_qat_backward", "parity"},
       "quantize.float8_qat_backward must be 'straight_through' or 'torchao_parity', got 'parity'"},
      {{"--quantize.recipe", "8da4w", "--quantize.float8_qat_backward", "torchao_parity"},
       "apply to the float8 recipes only (float8-dyn, float8-dyn-row, float8-weight-only), not to quantize.recipe "
       "'8da4w'"},
      {{"--quantize.float8_guard_zero_blocks", "true"},
       "apply to the float8 recipes only, and quantize.recipe is 'none'"},
      {{"--training.epochs", "0"}, "training.epochs must be positive, got 0"},
      {{"--training.max_steps", "-1"}, "training.max_steps must be >= 0"},
      {{"--training.threads", "-1"}, "training.threads must be >= 0"},
      {{"--lr_scheduler.name", "warmup_cosine", "--lr_scheduler.warmup_steps", "10"},
       "lr_scheduler.warmup_steps (10) must be below training.max_steps (4)"},
      {{"--optimizer.lr", "nan"}, "optimizer.lr must be a finite number > 0, got nan"},
      {{"--optimizer.lr", "inf"}, "optimizer.lr must be a finite number > 0, got inf"},
      {{"--optimizer.name", "adamw9"}, "optimizer.name: unknown value 'adamw9'"},
      {{"--lr_scheduler.name", "cosin"}, "lr_scheduler.name: unknown value 'cosin'"},
      {{"--model.hidden", "[8, 0]"}, "model.hidden: layer widths must be positive, got 0"},
      {{"--model.hidden", "[4000000, 4000000]"}, "lowbit refuses models above 2^32"},
      {{"--training.run_dir", "/etc/hostname/run"},
       "training.run_dir '/etc/hostname/run': cannot create the directory"},
      {{"--checkpoint.dir", "/etc/hostname/ckpt"}, "checkpoint.dir '/etc/hostname/ckpt': cannot create the directory"},
  };
  for (const auto& b : bad) {
    SCOPED_TRACE(b.message);
    fs::remove_all(run);
    auto args = tiny(run, b.overrides);
    const auto r = lowbit_run(args);
    EXPECT_FAILS_WITH(r, b.message);
    EXPECT_EQ(r.output.find("training "), std::string::npos) << "work started before the error:\n" << r.output;
    EXPECT_FALSE(fs::exists(run + "/config.toml"));
  }
  // a directory is not a config file (it used to train the defaults)
  EXPECT_FAILS_WITH(lowbit_run({"train", fs::temp_directory_path().string()}), "is a directory");
}

TEST(CliErrors, DataProblemsAreErrorsBeforeTraining) {
  const std::string d = scratch("data");
  fs::create_directories(d);
  {  // a corpus without a newline fails before the first step, not after training
    std::ofstream f(d + "/no_newline.txt");
    for (int i = 0; i < 400; ++i) f << "abcdefgh ";
  }
  const std::vector<std::string> gpt = tiny_gpt(d + "/run", 3);
  auto args = gpt;
  args.insert(args.end(), {"--data.path", d + "/no_newline.txt"});
  auto r = lowbit_run(args);
  EXPECT_FAILS_WITH(r, "has no newline");
  EXPECT_EQ(r.output.find("gpt step"), std::string::npos) << r.output;
  // an endless corpus is read up to a cap, then refused
  fs::remove_all(d + "/run");
  r = lowbit_run(gpt, {"LOWBIT_TEXT_CORPUS=/dev/zero"});
  EXPECT_FAILS_WITH(r, "is larger than 64 MiB");
  EXPECT_LT(r.max_rss_kb, 400 * 1024);
  // a test set with zero images is an error, not "accuracy -nan%"
  const std::string mn = d + "/fmnist";
  fs::create_directories(mn);
  auto idx = [&](const std::string& name, std::vector<unsigned char> header, size_t payload) {
    gzFile g = gzopen((mn + "/" + name).c_str(), "wb");
    std::vector<unsigned char> bytes = header;
    bytes.resize(header.size() + payload, 1);
    gzwrite(g, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(g);
  };
  idx("train-images-idx3-ubyte.gz", {0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28}, 2 * 784);
  idx("train-labels-idx1-ubyte.gz", {0, 0, 8, 1, 0, 0, 0, 2}, 2);
  idx("t10k-images-idx3-ubyte.gz", {0, 0, 8, 3, 0, 0, 0, 0, 0, 0, 0, 28, 0, 0, 0, 28}, 0);
  idx("t10k-labels-idx1-ubyte.gz", {0, 0, 8, 1, 0, 0, 0, 0}, 0);
  fs::remove_all(d + "/run");
  r = lowbit_run(tiny(d + "/run", {"--data.path", mn}));
  EXPECT_FAILS_WITH(r, "the test set has no images");
}

TEST(CliErrors, OneRunPerRunDirectory) {
  if (!have_fmnist()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  const std::string run = scratch("reuse");
  ASSERT_EQ(lowbit_run(tiny(run)).exit_code, 0);
  const int metrics_lines = count_lines(run + "/metrics.jsonl");
  ASSERT_TRUE(fs::exists(run + "/checkpoints/step_00000004.h5"));
  // a second run into the same directory is refused and touches nothing
  const auto before = fs::last_write_time(run + "/checkpoints/step_00000004.h5");
  auto r = lowbit_run(tiny(run, {"--training.max_steps", "3"}));
  EXPECT_FAILS_WITH(r, "already holds a run");
  EXPECT_NE(r.output.find("--overwrite"), std::string::npos);
  EXPECT_EQ(fs::last_write_time(run + "/checkpoints/step_00000004.h5"), before);
  EXPECT_EQ(count_lines(run + "/metrics.jsonl"), metrics_lines);
  // --overwrite replaces the earlier run: only the new run's files remain
  r = lowbit_run(tiny(run, {"--training.max_steps", "3", "--overwrite"}));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(run + "/checkpoints/step_00000004.h5"));
  EXPECT_TRUE(fs::exists(run + "/checkpoints/step_00000003.h5"));
  EXPECT_EQ(count_lines(run + "/metrics.jsonl"), metrics_lines);
  // a checkpoint.dir shared with another run counts as that run's output
  const std::string other = scratch("reuse_other");
  r = lowbit_run(tiny(other, {"--checkpoint.dir", run + "/checkpoints"}));
  EXPECT_FAILS_WITH(r, "already holds a run");
}

TEST(CliErrors, ResumeRefusesWhatWouldBreakExactness) {
  if (!have_fmnist()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  const std::string run = scratch("resume");
  const std::vector<std::string> base = {"--lr_scheduler.name", "cosine", "--checkpoint.interval", "2"};
  ASSERT_EQ(lowbit_run(tiny(run, base)).exit_code, 0);
  const std::string ck2 = run + "/checkpoints/step_00000002.h5";
  ASSERT_TRUE(fs::exists(ck2));
  struct Change {
    std::vector<std::string> overrides;
    std::string message;
  };
  for (const auto& c : std::vector<Change>{
           {{"--optimizer.lr", "0.002"}, "optimizer.lr: 0.001 in the checkpoint, 0.002 now"},
           {{"--lr_scheduler.name", "step"}, "lr_scheduler.name: \"cosine\" in the checkpoint, \"step\" now"},
           {{"--data.batch_size", "128"}, "data.batch_size: 256 in the checkpoint, 128 now"},
           {{"--training.max_steps", "6"}, "training.max_steps: 4 in the checkpoint, 6 now"}}) {
    auto extra = base;
    extra.insert(extra.end(), c.overrides.begin(), c.overrides.end());
    extra.insert(extra.end(), {"--resume", ck2});
    const auto r = lowbit_run(tiny(run, extra));
    EXPECT_FAILS_WITH(r, c.message);
    EXPECT_NE(r.output.find("--resume-allow-changes"), std::string::npos);
  }
  // an unchanged config still refuses: step 4 and model.h5 of this run came after step 2
  auto extra = base;
  extra.insert(extra.end(),
               {"--training.log_interval", "1", "--resume", ck2});  // log_interval does not change training
  auto r = lowbit_run(tiny(run, extra));
  EXPECT_FAILS_WITH(r, "written after step 2");
  // with --overwrite the later outputs go, metrics.jsonl keeps the records up to step 2, and the
  // resumed run ends where the original did, bit for bit
  const auto original = io::read_model_tensors(run + "/checkpoints/step_00000004.h5");
  extra.push_back("--overwrite");
  r = lowbit_run(tiny(run, extra));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto resumed = io::read_model_tensors(run + "/checkpoints/step_00000004.h5");
  ASSERT_EQ(original.size(), resumed.size());
  for (size_t i = 0; i < original.size(); ++i)
    EXPECT_EQ(std::memcmp(original[i].second.raw_data(), resumed[i].second.raw_data(), original[i].second.nbytes()), 0)
        << original[i].first;
  // allowed changes continue with the new values and say so
  extra = base;
  extra.insert(extra.end(), {"--optimizer.lr", "0.002", "--resume", ck2, "--resume-allow-changes", "--overwrite"});
  r = lowbit_run(tiny(run, extra));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--resume-allow-changes: optimizer.lr: 0.001 in the checkpoint, 0.002 now"),
            std::string::npos)
      << r.output;
}

TEST(CliErrors, ConvertReportsKeptLayersAndWritesNothingOnFailure) {
  if (!have_fmnist()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  const std::string run = scratch("convert");
  ASSERT_EQ(lowbit_run(tiny(run, {"--model.hidden", "[64]", "--checkpoint.enabled", "false"})).exit_code, 0);
  auto r = lowbit_run({"convert", run + "/model.h5", run + "/q.h5", "--recipe", "8da4w", "--group-size", "32"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  // every linear is quantized: 784 inputs end each row in a ragged group of 16
  EXPECT_NE(r.output.find("quantized (8da4w): 0\nquantized (8da4w): 2"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("kept in float"), std::string::npos) << r.output;
  r = lowbit_run({"convert", run + "/q.h5", run + "/twice.h5", "--recipe", "8da4w"});
  EXPECT_FAILS_WITH(r, "the model is already quantized");
  EXPECT_FALSE(fs::exists(run + "/twice.h5"));
  // a GPT checkpoint: refused before anything is written (it used to write the file, then fail)
  {
    std::ofstream f(run + "/corpus.txt");
    for (int i = 0; i < 100; ++i) f << "a small corpus line\n";
  }
  auto gpt = tiny_gpt(run + "/gpt", 2);
  gpt.insert(gpt.end(), {"--data.path", run + "/corpus.txt", "--training.sample_tokens", "4"});
  ASSERT_EQ(lowbit_run(gpt).exit_code, 0);
  r = lowbit_run({"convert", run + "/gpt/checkpoints/step_00000002.h5", run + "/gpt.h5", "--recipe", "8da4w",
                  "--group-size", "16"});
  EXPECT_FAILS_WITH(r, "lowbit convert quantizes Fashion-MNIST MLP files");
  EXPECT_FALSE(fs::exists(run + "/gpt.h5"));
}

// A full disk during every kind of save: an error naming ENOSPC, exit code 1, no signal, the
// previous file intact and no temporary file left. Needs a small tmpfs (CI runs as root).
TEST(CliErrors, FullDiskIsAnErrorAndLosesNothing) {
  const std::string mnt = scratch("tmpfs");
  fs::create_directories(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=4m") != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno) << "); the disk-full test needs root";
  struct Unmount {
    std::string p;
    ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount{mnt};
  auto fill = [&](uintmax_t leave) {  // a filler file that leaves `leave` bytes free
    const auto space = fs::space(mnt);
    std::ofstream f(mnt + "/filler", std::ios::binary | std::ios::app);
    std::vector<char> zeros(4096, 0);
    for (uintmax_t left = space.available > leave ? space.available - leave : 0; left >= zeros.size();
         left -= zeros.size())
      f.write(zeros.data(), 4096);
  };
  auto no_temporaries = [&] {
    for (auto& e : fs::recursive_directory_iterator(mnt))
      EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
  };
  // library: a checkpoint that fits, then a bigger save over it on a full disk, with the image
  // staged in /dev/shm and (LOWBIT_SAVE_IN_PROCESS) in this process
  for (const char* staging : {"0", "1"}) {
    SCOPED_TRACE(std::string("LOWBIT_SAVE_IN_PROCESS=") + staging);
    ::setenv("LOWBIT_SAVE_IN_PROCESS", staging, 1);
    fs::remove(mnt + "/filler");
    fs::remove(mnt + "/model.h5");
    auto small = std::make_shared<nn::Linear>(16, 16);
    io::export_model(mnt + "/model.h5", *small);
    const auto before = io::read_model_tensors(mnt + "/model.h5");
    fill(64 << 10);
    auto big = std::make_shared<nn::Linear>(512, 512);
    try {
      io::export_model(mnt + "/model.h5", *big);
      ADD_FAILURE() << "a 1 MB export fit in 64 KB";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("no space left on device"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(mnt + "/model.h5"), std::string::npos) << e.what();
    }
    const auto after = io::read_model_tensors(mnt + "/model.h5");
    ASSERT_EQ(after.size(), before.size());
    EXPECT_EQ(std::memcmp(after[0].second.raw_data(), before[0].second.raw_data(), before[0].second.nbytes()), 0);
    no_temporaries();
    optim::AdamW opt(big->parameters());
    EXPECT_THROW(io::save_checkpoint(mnt + "/ck.h5", *big, &opt, nullptr, nullptr, {}), Error);
    EXPECT_FALSE(fs::exists(mnt + "/ck.h5"));
    no_temporaries();
  }
  ::unsetenv("LOWBIT_SAVE_IN_PROCESS");
  // the executable: config.toml on a disk with no room at all
  fs::remove(mnt + "/filler");
  fill(0);
  auto r = lowbit_run(tiny(mnt + "/run"));
  EXPECT_FAILS_WITH(r, "no space left on device");
  no_temporaries();
  // the executable: the checkpoint of a run whose config and metrics fit
  fs::remove(mnt + "/filler");
  fs::remove_all(mnt + "/run");
  fill(256 << 10);
  if (have_fmnist()) {
    r = lowbit_run(tiny(mnt + "/run", {"--model.hidden", "[256]"}));
    EXPECT_FAILS_WITH(r, "no space left on device");
    EXPECT_NE(r.output.find("step_00000004.h5"), std::string::npos) << r.output;
    no_temporaries();
  }
}
