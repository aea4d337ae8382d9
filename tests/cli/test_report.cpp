// Run reports: the chart geometry against hand-computed pixels, the HTML/SVG's structure
// (well-formed XML, axes, one polyline and one legend entry per series, no external references),
// reports of an fp32 run, a QAT run and their comparison (HTML and --text), and -- where Debian's
// chromium is installed -- a headless screenshot that is not blank.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <fmt/format.h>

#include "lowbit/cli/config.h"
#include "lowbit/cli/report.h"
#include "lowbit/cli/train.h"
#include <lowbit/lowbit.h>

#include "test_util.h"

using namespace lowbit;
using namespace lowbit::cli;
using lowbit::testing::expect_error;

namespace {
std::string tmpdir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("lowbit_report_" + name);
  std::filesystem::remove_all(p);
  return p.string();
}
int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + what.size())) ++n;
  return n;
}
// Well-formed XML (the pages are XHTML-compatible): every tag closed in order, attributes
// quoted, entities among the five XML ones or numeric; returns "" or what is wrong.
std::string xml_problem(const std::string& s) {
  std::vector<std::string> stack;
  size_t i = 0;
  if (s.rfind("<!DOCTYPE html>", 0) == 0) i = 15;
  while (i < s.size()) {
    if (s[i] == '&') {
      const size_t semi = s.find(';', i);
      if (semi == std::string::npos || semi - i > 8) return "bare & at " + std::to_string(i);
      const std::string ent = s.substr(i, semi - i + 1);
      if (ent != "&amp;" && ent != "&lt;" && ent != "&gt;" && ent != "&quot;" && ent != "&apos;" &&
          ent.rfind("&#", 0) != 0)
        return "unknown entity " + ent;
      i = semi + 1;
      continue;
    }
    if (s[i] != '<') {
      ++i;
      continue;
    }
    const size_t end = s.find('>', i);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
    std::string tag = s.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag.empty()) return "empty tag";
    if (tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name)
        return "</" + name + "> closes <" + (stack.empty() ? "" : stack.back()) + ">";
      stack.pop_back();
      continue;
    }
    const bool self = tag.back() == '/';
    const std::string name = tag.substr(0, tag.find_first_of(" /"));
    if (count(tag, "\"") % 2) return "unbalanced quotes in <" + name + ">";
    if (!self) stack.push_back(name);
  }
  return stack.empty() ? "" : "<" + stack.back() + "> not closed";
}
// nothing the page would fetch: scripts, links, sources, CSS urls/imports; "http" only as the SVG namespace
void expect_self_contained(const std::string& html) {
  for (const char* bad : {"<script", "<link", "src=", "href=", "url(", "@import", "<iframe", "<img"})
    EXPECT_EQ(html.find(bad), std::string::npos) << bad;
  EXPECT_EQ(count(html, "http"), count(html, "xmlns=\"http://www.w3.org/2000/svg\""));
}
std::vector<std::string> polylines(const std::string& svg) {
  std::vector<std::string> pts;
  const std::regex re("<polyline class=\"series\"[^>]* points=\"([^\"]*)\"");
  for (std::sregex_iterator it(svg.begin(), svg.end(), re), e; it != e; ++it) pts.push_back((*it)[1]);
  return pts;
}
bool have_fmnist() { return std::filesystem::exists(data::FashionMNIST::default_dir() + "/t10k-images-idx3-ubyte.gz"); }
}  // namespace

// Known series, pixels computed by hand: a 640x300 chart has its plot area at x 64..624 and
// y 48..256; x in [0, 10] (ticks of 2), y in [0, 1] (ticks of 0.2) map linearly.
TEST(Report, LineChartCoordinatesAreTheData) {
  const std::vector<Series> s = {{"a", {0, 5, 10}, {0, 0.5, 1}}, {"b", {0, 10}, {0.13, 0.87}}};
  const ChartFrame f = chart_frame(s, {"t", "x", "y", 640, 300});
  EXPECT_EQ(f.left, 64);
  EXPECT_EQ(f.right, 624);
  EXPECT_EQ(f.top, 48);
  EXPECT_EQ(f.bottom, 256);
  EXPECT_DOUBLE_EQ(f.x_step, 2);
  EXPECT_DOUBLE_EQ(f.y_step, 0.2);
  const std::string svg = svg_line_chart(s, {"t", "x", "y", 640, 300});
  const auto p = polylines(svg);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0], "64.00,256.00 344.00,152.00 624.00,48.00");
  EXPECT_EQ(p[1], "64.00,228.96 624.00,75.04");  // 256 - 0.13 * 208, 256 - 0.87 * 208
  EXPECT_EQ(count(svg, "class=\"legend-entry\""), 2);
  EXPECT_NE(svg.find(">a</text>"), std::string::npos);
  EXPECT_NE(svg.find(">b</text>"), std::string::npos);
  EXPECT_NE(svg.find("class=\"x-axis\""), std::string::npos);
  EXPECT_NE(svg.find("class=\"y-axis\""), std::string::npos);
  EXPECT_EQ(xml_problem(svg), "");
  // ranges widen to whole ticks; NaNs are skipped; a constant series still gets a range
  const ChartFrame g = chart_frame({{"c", {3, 7, NAN}, {2.5, 2.5, 9}}}, {"t", "x", "y"});
  EXPECT_DOUBLE_EQ(g.x0, 3);
  EXPECT_DOUBLE_EQ(g.x1, 7);
  EXPECT_LT(g.y0, 2.5);
  EXPECT_GT(g.y1, 2.5);
  EXPECT_NE(svg_line_chart({}, {"t", "x", "y"}).find("no data"), std::string::npos);
  // bars: heights proportional to the values from a zero baseline
  const std::string bars = svg_bar_chart({"l0", "l1"}, {"v"}, {{1.0}, {0.5}}, {"t", "x", "y"});
  const std::regex re("class=\"bar\" x=\"[^\"]*\" y=\"([^\"]*)\" width=\"[^\"]*\" height=\"([^\"]*)\"");
  std::vector<double> h;
  for (std::sregex_iterator it(bars.begin(), bars.end(), re), e; it != e; ++it) h.push_back(std::stod((*it)[2]));
  ASSERT_EQ(h.size(), 2u);
  EXPECT_NEAR(h[0], 2 * h[1], 0.02);
  EXPECT_EQ(xml_problem(bars), "");
}

TEST(Report, XmlCheckerCatchesBrokenMarkup) {  // the structural check can fail
  EXPECT_NE(xml_problem("<a><b></a></b>"), "");
  EXPECT_NE(xml_problem("<a>x & y</a>"), "");
  EXPECT_NE(xml_problem("<a x=\"1></a>"), "");
  EXPECT_NE(xml_problem("<a>"), "");
  EXPECT_EQ(xml_problem("<a><b/>&lt;</a>"), "");
}

TEST(Report, Fp32AndQatRunsAndTheirComparison) {
  if (!have_fmnist()) LOWBIT_SKIP_OR_FAIL("dataset-fashion-mnist not installed");
  const std::string f32 = tmpdir("fp32"), q = tmpdir("qat");
  auto a = RunConfig::from_file(std::string(LOWBIT_SOURCE_DIR) + "/configs/fmnist_mlp.toml");
  a.apply_overrides({"--training.max_steps", "30", "--training.epochs", "1", "--model.hidden", "[64]",
                     "--training.log_interval", "5", "--training.run_dir", f32, "--training.report", "true"});
  train(a, false);
  auto b = RunConfig::from_file(std::string(LOWBIT_SOURCE_DIR) + "/configs/fmnist_qat.toml");
  b.apply_overrides({"--training.max_steps", "30", "--training.epochs", "1", "--model.hidden", "[64]",
                     "--quantize.qat_steps", "10", "--training.log_interval", "5", "--training.run_dir", q});
  train(b, false);

  // training.report = true wrote the fp32 report; the QAT run gets one from report_command
  ASSERT_TRUE(std::filesystem::exists(f32 + "/report.html"));
  ASSERT_TRUE(std::filesystem::exists(q + "/quant_stats.json"));
  const std::string qpath = report_command(q, "", false);
  EXPECT_EQ(qpath, q + "/report.html");
  auto slurp = [](const std::string& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  const std::string h32 = slurp(f32 + "/report.html"), hq = slurp(qpath);
  for (const std::string* h : {&h32, &hq}) {
    EXPECT_EQ(xml_problem(*h), "");
    expect_self_contained(*h);
    // loss (train per step, train mean, test), accuracy, learning rate, throughput
    EXPECT_EQ(count(*h, "<polyline class=\"series\""), 6);
    EXPECT_EQ(count(*h, "class=\"legend-entry\""), 6 + (h == &hq ? 6 : 0));
    EXPECT_EQ(count(*h, "class=\"x-axis\""), 4 + (h == &hq ? 2 : 0));
    EXPECT_NE(h->find("[optimizer]"), std::string::npos);       // the resolved config
    EXPECT_NE(h->find("step_00000030.h5"), std::string::npos);  // the checkpoint list
  }
  // the train-loss polyline has one point per logged step (every 5 of 30; QAT: 40 steps)
  const auto p32 = polylines(h32);
  EXPECT_EQ(count(p32[0], ","), 6);
  // the QAT report: a row per quantized layer (hidden [64]: 784->64, 64->10), SQNR bars, bytes
  EXPECT_EQ(h32.find("Quantization"), std::string::npos);
  EXPECT_NE(hq.find("Quantization: 8da4w (qat)"), std::string::npos);
  EXPECT_EQ(count(hq, "<rect class=\"bar\""), 2 * 4 + 2 * 2);
  EXPECT_NE(hq.find("64x784"), std::string::npos);
  EXPECT_NE(hq.find("10x64"), std::string::npos);
  EXPECT_NE(hq.find("converted test_accuracy"), std::string::npos);

  // --text: the same tables
  const std::string text = render_report_text(load_run(q));
  EXPECT_NE(text.find("converted test_accuracy"), std::string::npos);
  EXPECT_NE(text.find("64x784"), std::string::npos);
  EXPECT_NE(text.find("step_00000040.h5"), std::string::npos);

  // the comparison: one polyline per run in each chart, differing keys highlighted
  const std::string cpath = tmpdir("cmp") + ".html";
  EXPECT_EQ(compare_command({f32, q}, cpath, false), cpath);
  const std::string hc = slurp(cpath);
  EXPECT_EQ(xml_problem(hc), "");
  expect_self_contained(hc);
  EXPECT_EQ(count(hc, "<polyline class=\"series\""), 2 * 4);  // loss by step, by time, eval loss, accuracy
  EXPECT_NE(hc.find("Train loss by wall time"), std::string::npos);
  const std::regex diff_row(
      "<tr class=\"diff\"><td class=\"l\">quantize.recipe</td><td>&quot;none&quot;</td><td>&quot;8da4w&quot;</td>");
  EXPECT_TRUE(std::regex_search(hc, diff_row));
  EXPECT_EQ(hc.find("<tr class=\"diff\"><td class=\"l\">optimizer.lr</td>"), std::string::npos);  // same lr: no
  const std::string ct = render_compare_text({load_run(f32), load_run(q)});
  EXPECT_NE(ct.find("quantize.recipe"), std::string::npos);
  EXPECT_EQ(ct.find("optimizer.lr"), std::string::npos);

  // bad run directories name the problem
  expect_error([&] { load_run(f32 + "/nope"); }, {"nope", "not a run directory"});
  std::ofstream(f32 + "/steps.jsonl", std::ios::app) << "{broken\n";
  expect_error([&] { load_run(f32); }, {"steps.jsonl:", "not a JSON object"});

  // hostile files: wrong JSON types and a foreign quant_stats.json give errors naming the run
  const std::string bad = tmpdir("hostile");
  std::filesystem::create_directories(bad);
  std::ofstream(bad + "/config.toml") << "[training]\nseed = 0\n";
  std::ofstream(bad + "/metrics.jsonl") << "{\"phase\": 7, \"step\": \"x\"}\n";
  expect_error([&] { report_command(bad, "", false); }, {bad, "unexpected type"});
  std::ofstream(bad + "/metrics.jsonl", std::ios::trunc) << "{\"phase\": \"train\", \"step\": 1}\n";
  EXPECT_NE(report_command(bad, "", false), "");  // a sparse but well-typed run renders
  std::ofstream(bad + "/quant_stats.json") << "[1, 2, 3]\n";
  expect_error([&] { load_run(bad); }, {"quant_stats.json", "not a lowbit quantization-statistics file"});
  std::ofstream(bad + "/quant_stats.json", std::ios::trunc) << "{\"layers\": [{\"name\": 5, \"shape\": 2}]}\n";
  expect_error([&] { report_command(bad, "", false); }, {bad, "unexpected type"});
}

// A browser draws it: a headless chromium screenshot of a report that is not blank (chromium is an
// optional tool: scripts/setup.sh --with-chromium; CI installs it).
TEST(Report, ChromiumScreenshotIsNotBlank) {
  // a small run directory written by hand: curves, one quantized layer, the config
  const std::string run = tmpdir("shot_run");
  std::filesystem::create_directories(run);
  std::ofstream(run + "/config.toml") << "[training]\nseed = 0\n";
  {
    std::ofstream m(run + "/metrics.jsonl"), st(run + "/steps.jsonl");
    for (int k = 1; k <= 20; ++k) {
      st << fmt::format(
                R"({{"phase":"train","step":{},"loss":{},"train_loss":{},"lr":0.001,"samples_per_s":{},"elapsed_s":{}}})",
                k, 2.0 / k, 2.0 / k, 1000 + 10 * k, 0.1 * k)
         << "\n";
      if (k % 5 == 0)
        m << fmt::format(R"({{"phase":"train","step":{},"train_loss":{},"test_loss":{},"test_accuracy":{}}})", k,
                         2.0 / k, 2.2 / k, 0.5 + 0.02 * k)
          << "\n";
    }
    std::ofstream(run + "/quant_stats.json")
        << R"({"recipe":"8da4w","mode":"qat","layers":[{"name":"0","shape":[4,8],"float_bytes":144,"converted_bytes":40,)"
        << R"("before":{"weight_sqnr_db":20,"output_sqnr_db":25},"after":{"weight_sqnr_db":21,"output_sqnr_db":27}}]})";
  }
  const std::string qpath = report_command(run, "", false);
  const char* chromium = "/usr/bin/chromium";
  if (!std::filesystem::exists(chromium))
    LOWBIT_SKIP_OR_FAIL("chromium not installed (scripts/setup.sh --with-chromium): screenshot check skipped");
  const std::string blank = tmpdir("blank") + ".html", shot_blank = tmpdir("blank") + ".png",
                    shot = tmpdir("shot") + ".png";
  std::ofstream(blank) << "<!DOCTYPE html><html><body></body></html>\n";
  auto screenshot = [&](const std::string& page, const std::string& png) {
    const std::string cmd = std::string(chromium) +
                            " --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,1600 "
                            "--screenshot=" +
                            png + " file://" + page + " > /dev/null 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return std::filesystem::exists(png) ? static_cast<int64_t>(std::filesystem::file_size(png)) : 0;
  };
  const int64_t empty = screenshot(blank, shot_blank), full = screenshot(qpath, shot);
  // the PNG of a blank page compresses to almost nothing; charts, text and tables do not
  EXPECT_GT(empty, 0);
  EXPECT_GT(full, 5 * empty) << "the screenshot of the report looks blank";
}
