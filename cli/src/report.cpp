// `lowbit report` and `lowbit compare`: run directories to self-contained HTML (inline SVG drawn
// here) or text tables.
#include "lowbit/cli/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/autograd/error.h"
#include "lowbit/io/checkpoint.h"

namespace lowbit::cli {

namespace {
using json = nlohmann::json;
namespace fs = std::filesystem;

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}
// the colours of series 0, 1, ... (colour-blind safe, Okabe-Ito)
const char* colour(size_t i) {
  static const char* c[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"};
  return c[i % 8];
}
// a tick step of 1, 2 or 5 x 10^k giving about `ticks` intervals over span
double nice_step(double span, int ticks) {
  if (!(span > 0) || !std::isfinite(span)) return 1.0;
  const double raw = span / ticks, p = std::pow(10.0, std::floor(std::log10(raw))), f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}
std::string num(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e5 || a < 1e-3) return fmt::format("{:.2g}", v);
  return fmt::format("{:.6g}", v);
}
std::string fixed(double v, int d) { return std::isfinite(v) ? fmt::format("{:.{}f}", v, d) : "-"; }
}  // namespace

// ---------------- charts ----------------
ChartFrame chart_frame(const std::vector<Series>& series, const ChartOptions& o) {
  ChartFrame f{};
  f.left = 64;
  f.right = o.width - 16.0;
  f.top = 48;
  f.bottom = o.height - 44.0;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& s : series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      x0 = std::min(x0, s.x[i]);
      x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, s.y[i]);
      y1 = std::max(y1, s.y[i]);
    }
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x0 -= 0.5, x1 += 0.5;
  if (y1 == y0) y0 -= 0.5, y1 += 0.5;
  f.x_step = nice_step(x1 - x0, 6);
  f.y_step = nice_step(y1 - y0, 5);
  f.x0 = std::floor(x0 / f.x_step) * f.x_step;
  f.x1 = std::ceil(x1 / f.x_step) * f.x_step;
  f.y0 = std::floor(y0 / f.y_step) * f.y_step;
  f.y1 = std::ceil(y1 / f.y_step) * f.y_step;
  return f;
}

namespace {
std::string svg_open(const ChartOptions& o) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"11\">\n<rect x=\"0\" y=\"0\" width=\"{0}\" height=\"{1}\" "
      "fill=\"#ffffff\"/>\n<text x=\"{2}\" y=\"16\" text-anchor=\"middle\" font-size=\"13\" "
      "font-weight=\"bold\">{3}</text>\n",
      o.width, o.height, o.width / 2, esc(o.title));
}
// axes, ticks, grid and labels of a frame
std::string svg_axes(const ChartFrame& f, const ChartOptions& o, bool x_ticks) {
  std::string s = "<g class=\"axes\" stroke=\"#333333\">\n";
  s += fmt::format("<line class=\"x-axis\" x1=\"{:.2f}\" y1=\"{:.2f}\" x2=\"{:.2f}\" y2=\"{:.2f}\"/>\n", f.left,
                   f.bottom, f.right, f.bottom);
  s += fmt::format("<line class=\"y-axis\" x1=\"{:.2f}\" y1=\"{:.2f}\" x2=\"{:.2f}\" y2=\"{:.2f}\"/>\n", f.left, f.top,
                   f.left, f.bottom);
  s += "</g>\n<g class=\"ticks\" fill=\"#333333\">\n";
  for (int k = 0;; ++k) {
    const double v = f.y0 + k * f.y_step;
    if (v > f.y1 + f.y_step * 1e-9) break;
    const double y = f.py(v);
    s += fmt::format("<line x1=\"{:.2f}\" y1=\"{:.2f}\" x2=\"{:.2f}\" y2=\"{:.2f}\" stroke=\"#e5e5e5\"/>", f.left, y,
                     f.right, y);
    s += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"end\">{}</text>\n", f.left - 4, y + 4, num(v));
  }
  if (x_ticks)
    for (int k = 0;; ++k) {
      const double v = f.x0 + k * f.x_step;
      if (v > f.x1 + f.x_step * 1e-9) break;
      const double x = f.px(v);
      s += fmt::format("<line x1=\"{:.2f}\" y1=\"{:.2f}\" x2=\"{:.2f}\" y2=\"{:.2f}\" stroke=\"#333333\"/>", x,
                       f.bottom, x, f.bottom + 4);
      s += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"middle\">{}</text>\n", x, f.bottom + 16, num(v));
    }
  s += "</g>\n";
  s += fmt::format("<text class=\"x-label\" x=\"{:.2f}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                   (f.left + f.right) / 2, o.height - 8, esc(o.x_label));
  s += fmt::format(
      "<text class=\"y-label\" x=\"14\" y=\"{:.2f}\" text-anchor=\"middle\" transform=\"rotate(-90 14 "
      "{:.2f})\">{}</text>\n",
      (f.top + f.bottom) / 2, (f.top + f.bottom) / 2, esc(o.y_label));
  return s;
}
std::string svg_legend(const std::vector<std::string>& names, const ChartFrame& f) {
  std::string s = "<g class=\"legend\">\n";
  double x = f.left + 8;
  for (size_t i = 0; i < names.size(); ++i) {
    s += fmt::format(
        "<g class=\"legend-entry\"><rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"12\" height=\"4\" fill=\"{}\"/><text "
        "x=\"{:.2f}\" y=\"{:.2f}\">{}</text></g>\n",
        x, f.top - 19, colour(i), x + 16, f.top - 15, esc(names[i]));
    x += 28 + 6.5 * static_cast<double>(names[i].size());
  }
  return s + "</g>\n";
}
}  // namespace

std::string svg_line_chart(const std::vector<Series>& series, const ChartOptions& o) {
  std::string s = svg_open(o);
  bool any = false;
  for (const auto& se : series)
    for (size_t i = 0; i < se.x.size() && i < se.y.size(); ++i)
      any = any || (std::isfinite(se.x[i]) && std::isfinite(se.y[i]));
  if (!any)
    return s + fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>\n</svg>\n", o.width / 2,
                           o.height / 2);
  const ChartFrame f = chart_frame(series, o);
  s += svg_axes(f, o, true);
  std::vector<std::string> names;
  for (size_t k = 0; k < series.size(); ++k) {
    std::string pts;
    for (size_t i = 0; i < series[k].x.size() && i < series[k].y.size(); ++i) {
      if (!std::isfinite(series[k].x[i]) || !std::isfinite(series[k].y[i])) continue;
      pts += fmt::format("{}{:.2f},{:.2f}", pts.empty() ? "" : " ", f.px(series[k].x[i]), f.py(series[k].y[i]));
    }
    s += fmt::format(
        "<polyline class=\"series\" data-name=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" "
        "points=\"{}\"/>\n",
        esc(series[k].name), colour(k), pts);
    names.push_back(series[k].name);
  }
  return s + svg_legend(names, f) + "</svg>\n";
}

std::string svg_bar_chart(const std::vector<std::string>& labels, const std::vector<std::string>& value_names,
                          const std::vector<std::vector<double>>& values, const ChartOptions& o) {
  LOWBIT_CHECK(values.size() == labels.size(), "bar chart: {} value rows for {} labels", values.size(), labels.size());
  std::string s = svg_open(o);
  if (labels.empty())
    return s + fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>\n</svg>\n", o.width / 2,
                           o.height / 2);
  // the value axis from 0 (or the smallest negative value) to the largest
  Series all{"", {0.0}, {0.0}};
  for (const auto& row : values)
    for (double v : row)
      if (std::isfinite(v)) {
        all.x.push_back(0);
        all.y.push_back(v);
      }
  ChartFrame f = chart_frame({all}, o);
  s += svg_axes(f, o, false);
  const double group = (f.right - f.left) / static_cast<double>(labels.size());
  const double bar = group * 0.8 / static_cast<double>(std::max<size_t>(1, value_names.size()));
  for (size_t g = 0; g < labels.size(); ++g) {
    const double gx = f.left + g * group + group * 0.1;
    for (size_t k = 0; k < value_names.size() && k < values[g].size(); ++k) {
      const double v = values[g][k];
      if (!std::isfinite(v)) continue;
      const double y = f.py(std::max(v, 0.0)), y0 = f.py(std::min(v, 0.0));
      s += fmt::format(
          "<rect class=\"bar\" x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\"><title>{} {}: "
          "{}</title></rect>\n",
          gx + k * bar, y, bar, std::max(0.0, y0 - y), colour(k), esc(labels[g]), esc(value_names[k]), num(v));
    }
    s += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"middle\">{}</text>\n", gx + group * 0.4,
                     f.bottom + 16, esc(labels[g]));
  }
  return s + svg_legend(value_names, f) + "</svg>\n";
}

// ---------------- runs ----------------
namespace {
std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  LOWBIT_CHECK(in.good(), "cannot read '{}'", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
std::vector<std::string> read_jsonl(const fs::path& p) {
  std::vector<std::string> out;
  if (!fs::exists(p)) return out;
  std::ifstream in(p);
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    const json j = json::parse(line, nullptr, false);
    LOWBIT_CHECK(j.is_object(), "{}:{}: not a JSON object", p.string(), n);
    out.push_back(line);
  }
  return out;
}
std::vector<json> parse_all(const std::vector<std::string>& lines) {
  std::vector<json> v;
  for (const auto& l : lines) v.push_back(json::parse(l));
  return v;
}
double get(const json& j, const char* k) { return j.contains(k) && j[k].is_number() ? j[k].get<double>() : NAN; }
// the config as key -> value ("section.key" -> text), from the TOML lowbit wrote
std::map<std::string, std::string> config_map(const std::string& toml) {
  std::map<std::string, std::string> m;
  std::istringstream in(toml);
  std::string line, section;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      section = line.substr(1, line.find(']') - 1);
      continue;
    }
    const auto eq = line.find(" = ");
    if (eq != std::string::npos) m[section + "." + line.substr(0, eq)] = line.substr(eq + 3);
  }
  return m;
}
// the cumulative wall time of each steps.jsonl line (elapsed_s restarts with each phase)
std::vector<double> wall_times(const std::vector<json>& steps) {
  std::vector<double> t;
  double base = 0, last = 0;
  std::string phase;
  for (const auto& j : steps) {
    const std::string ph = j.value("phase", "");
    if (!t.empty() && ph != phase) base += last;
    phase = ph;
    last = get(j, "elapsed_s");
    t.push_back(base + last);
  }
  return t;
}
Series series_of(const std::string& name, const std::vector<json>& rows, const char* xk, const char* yk) {
  Series s{name, {}, {}};
  for (const auto& j : rows)
    if (j.contains(yk) && j.contains(xk)) {
      s.x.push_back(get(j, xk));
      s.y.push_back(get(j, yk));
    }
  return s;
}
// evaluation rows of metrics.jsonl (train/qat phases), the converted line apart
std::vector<json> eval_rows(const RunData& r) {
  std::vector<json> v;
  for (auto& j : parse_all(r.metrics))
    if (j.value("phase", "") != "converted") v.push_back(j);
  return v;
}
// the final metrics: the last evaluation, the converted model's line when there is one
std::vector<std::pair<std::string, std::string>> final_metrics(const RunData& r) {
  std::vector<std::pair<std::string, std::string>> out;
  const auto m = parse_all(r.metrics);
  const auto st = parse_all(r.steps);
  if (!st.empty()) {
    out.emplace_back("steps", fmt::format("{}", st.back().value("step", int64_t{0})));
    out.emplace_back("wall time (s)", fixed(wall_times(st).back(), 1));
    out.emplace_back("throughput (samples/s)", fixed(get(st.back(), "samples_per_s"), 0));
  }
  const json* last = nullptr;
  const json* conv = nullptr;
  for (const auto& j : m) (j.value("phase", "") == "converted" ? conv : last) = &j;
  auto add = [&](const json* j, const std::string& prefix) {
    if (!j) return;
    for (const char* k : {"train_loss", "test_loss", "test_accuracy", "val_loss"})
      if (j->contains(k))
        out.emplace_back(prefix + k,
                         std::string(k) == "test_accuracy" ? fixed(100 * get(*j, k), 2) + "%" : fixed(get(*j, k), 4));
  };
  add(last, "");
  add(conv, "converted ");
  if (conv && conv->contains("model_bytes")) out.emplace_back("converted model bytes", conv->at("model_bytes").dump());
  return out;
}
std::string page_open(const std::string& title) {
  return "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>" + esc(title) +
         "</title>\n<style>\nbody{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}"
         "table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;"
         "text-align:right;font-size:13px}th{background:#f2f2f2}td.l,th.l{text-align:left}"
         "tr.diff td{background:#fff3c4}pre{background:#f7f7f7;padding:8px;font-size:12px}"
         "svg.chart{margin:4px 8px 12px 0;border:1px solid "
         "#ddd}div.charts{display:flex;flex-wrap:wrap}\n</style>\n</head>\n<body>\n";
}
std::string table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows,
                  const std::vector<bool>& highlight = {}) {
  std::string s = "<table>\n<tr>";
  for (size_t i = 0; i < head.size(); ++i) s += (i ? "<th>" : "<th class=\"l\">") + esc(head[i]) + "</th>";
  s += "</tr>\n";
  for (size_t r = 0; r < rows.size(); ++r) {
    s += r < highlight.size() && highlight[r] ? "<tr class=\"diff\">" : "<tr>";
    for (size_t i = 0; i < rows[r].size(); ++i) s += (i ? "<td>" : "<td class=\"l\">") + esc(rows[r][i]) + "</td>";
    s += "</tr>\n";
  }
  return s + "</table>\n";
}
std::string text_table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(head.size());
  for (size_t i = 0; i < head.size(); ++i) w[i] = head[i].size();
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  auto line = [&](const std::vector<std::string>& r) {
    std::string s = " ";
    for (size_t i = 0; i < r.size() && i < w.size(); ++i)
      s += " " + (i ? std::string(w[i] - r[i].size(), ' ') + r[i] : r[i] + std::string(w[i] - r[i].size(), ' '));
    return s + "\n";
  };
  std::string s = line(head);
  for (const auto& r : rows) s += line(r);
  return s;
}
// the per-layer quantization table of quant_stats.json
struct QuantTable {
  std::vector<std::string> head;
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> labels;
  std::vector<std::vector<double>> sqnr, bytes;
  std::string title;
};
QuantTable quant_table(const RunData& r) {
  QuantTable t;
  if (r.quant_stats_json.empty()) return t;
  const json q = json::parse(r.quant_stats_json, nullptr, false);
  LOWBIT_CHECK(q.is_object() && q.contains("layers") && q["layers"].is_array(),
               "{}/quant_stats.json: not a lowbit quantization-statistics file", r.dir);
  t.title = fmt::format("{} ({})", q.value("recipe", std::string("?")), q.value("mode", std::string("?")));
  t.head = {"layer",           "shape",          "W SQNR before",     "W SQNR after",       "W rel err after",
            "out SQNR before", "out SQNR after", "out rel err after", "converted out SQNR", "bytes float",
            "bytes converted"};
  for (const auto& l : q["layers"]) {
    const json none = json::object();
    const json& b = l.contains("before") ? l["before"] : none;
    const json& a = l.contains("after") ? l["after"] : none;
    const json& c = l.contains("converted") ? l["converted"] : none;
    std::string shape;
    for (const auto& d : l.value("shape", json::array())) shape += (shape.empty() ? "" : "x") + d.dump();
    const std::string name = l.value("name", std::string("?"));
    t.rows.push_back({name, shape, fixed(get(b, "weight_sqnr_db"), 1), fixed(get(a, "weight_sqnr_db"), 1),
                      fixed(get(a, "weight_rel_err"), 4), fixed(get(b, "output_sqnr_db"), 1),
                      fixed(get(a, "output_sqnr_db"), 1), fixed(get(a, "output_rel_err"), 4),
                      fixed(get(c, "output_sqnr_db"), 1), fmt::format("{}", l.value("float_bytes", int64_t{0})),
                      fmt::format("{}", l.value("converted_bytes", int64_t{0}))});
    t.labels.push_back(name);
    t.sqnr.push_back(
        {get(b, "weight_sqnr_db"), get(a, "weight_sqnr_db"), get(b, "output_sqnr_db"), get(a, "output_sqnr_db")});
    t.bytes.push_back({static_cast<double>(l.value("float_bytes", int64_t{0})),
                       static_cast<double>(l.value("converted_bytes", int64_t{0}))});
  }
  return t;
}
std::string run_name(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}
}  // namespace

RunData load_run(const std::string& dir) {
  LOWBIT_CHECK(fs::is_directory(dir), "'{}' is not a run directory (no such directory)", dir);
  RunData r;
  r.dir = dir;
  r.name = run_name(dir);
  const fs::path d(dir);
  LOWBIT_CHECK(fs::exists(d / "config.toml") || fs::exists(d / "metrics.jsonl"),
               "'{}' is not a lowbit run directory (no config.toml or metrics.jsonl)", dir);
  if (fs::exists(d / "config.toml")) r.config_toml = read_text(d / "config.toml");
  r.metrics = read_jsonl(d / "metrics.jsonl");
  r.steps = read_jsonl(d / "steps.jsonl");
  if (fs::exists(d / "quant_stats.json")) {
    r.quant_stats_json = read_text(d / "quant_stats.json");
    const json q = json::parse(r.quant_stats_json, nullptr, false);
    LOWBIT_CHECK(q.is_object() && q.contains("layers") && q["layers"].is_array(),
                 "{}: not a lowbit quantization-statistics file (a JSON object with a 'layers' array)",
                 (d / "quant_stats.json").string());
  }
  const auto cfg = config_map(r.config_toml);
  std::string ck = cfg.count("checkpoint.dir") ? cfg.at("checkpoint.dir") : "\"\"";
  ck = ck.size() >= 2 ? ck.substr(1, ck.size() - 2) : "";
  const fs::path cdir = ck.empty() ? d / "checkpoints" : fs::path(ck);
  if (fs::is_directory(cdir)) {
    for (const auto& e : fs::directory_iterator(cdir)) {
      const std::string n = e.path().filename().string();
      if (n.rfind("step_", 0) != 0 || e.path().extension() != ".h5") continue;
      RunData::Checkpoint c;
      c.path = e.path().string();
      c.step = std::strtoll(n.c_str() + 5, nullptr, 10);
      c.bytes = static_cast<int64_t>(e.file_size());
      r.checkpoints.push_back(c);
    }
    std::sort(r.checkpoints.begin(), r.checkpoints.end(), [](auto& a, auto& b) { return a.step < b.step; });
  }
  return r;
}

std::string render_report_html(const RunData& r) {
  std::string s = page_open("lowbit report: " + r.name);
  s += "<h1>" + esc(r.name) + "</h1>\n<p>run directory " + esc(r.dir) + "</p>\n<h2>Final metrics</h2>\n";
  std::vector<std::vector<std::string>> rows;
  for (auto& [k, v] : final_metrics(r)) rows.push_back({k, v});
  s += table({"metric", "value"}, rows);
  const auto steps = parse_all(r.steps);
  const auto evals = eval_rows(r);
  s += "<h2>Curves</h2>\n<div class=\"charts\">\n";
  std::vector<Series> loss = {series_of("train loss (step)", steps, "step", "loss"),
                              series_of("train loss (mean)", evals, "step", "train_loss")};
  for (const char* k : {"test_loss", "val_loss"}) {
    Series e = series_of(k, evals, "step", k);
    if (!e.x.empty()) loss.push_back(e);
  }
  s += svg_line_chart(loss, {"Loss", "step", "loss"});
  Series acc = series_of("test accuracy", evals, "step", "test_accuracy");
  if (!acc.x.empty()) s += svg_line_chart({acc}, {"Accuracy", "step", "test accuracy"});
  s += svg_line_chart({series_of("learning rate", steps, "step", "lr")}, {"Learning rate", "step", "lr"});
  s += svg_line_chart({series_of("throughput", steps, "step", "samples_per_s")}, {"Throughput", "step", "samples/s"});
  s += "</div>\n";
  const QuantTable q = quant_table(r);
  if (!q.rows.empty()) {
    s += "<h2>Quantization: " + esc(q.title) + "</h2>\n";
    s += "<p>SQNR = 10 log10(|x|&#178; / |x - q(x)|&#178;) in dB (higher is better) of each layer's weights and of its "
         "outputs on a held-out batch, before QAT fine-tuning (the float weights quantized as they are) and after it; "
         "converted: the inference module's outputs against the float layer's.</p>\n";
    s += table(q.head, q.rows);
    s += svg_bar_chart(q.labels, {"weight before", "weight after", "output before", "output after"}, q.sqnr,
                       {"SQNR per layer", "layer", "dB", 900, 320});
    s += svg_bar_chart(q.labels, {"float", "converted"}, q.bytes, {"Bytes per layer", "layer", "bytes", 900, 300});
  }
  s += "<h2>Checkpoints</h2>\n";
  rows.clear();
  for (const auto& c : r.checkpoints) rows.push_back({c.path, fmt::format("{}", c.step), fmt::format("{}", c.bytes)});
  s += rows.empty() ? std::string("<p>none</p>\n") : table({"file", "step", "bytes"}, rows);
  s += "<h2>Config</h2>\n<pre>" + esc(r.config_toml) + "</pre>\n</body>\n</html>\n";
  return s;
}

std::string render_report_text(const RunData& r) {
  std::string s = "run " + r.name + " (" + r.dir + ")\n\nfinal metrics\n";
  std::vector<std::vector<std::string>> rows;
  for (auto& [k, v] : final_metrics(r)) rows.push_back({k, v});
  s += text_table({"metric", "value"}, rows);
  const QuantTable q = quant_table(r);
  if (!q.rows.empty()) s += "\nquantization: " + q.title + " (SQNR in dB)\n" + text_table(q.head, q.rows);
  rows.clear();
  for (const auto& c : r.checkpoints) rows.push_back({c.path, fmt::format("{}", c.step), fmt::format("{}", c.bytes)});
  s += "\ncheckpoints\n" + (rows.empty() ? std::string("  none\n") : text_table({"file", "step", "bytes"}, rows));
  return s;
}

namespace {
// keys whose values differ between runs (every key of every config), and the table rows
std::vector<std::vector<std::string>> config_rows(const std::vector<RunData>& runs, std::vector<bool>& differs) {
  std::vector<std::map<std::string, std::string>> cfgs;
  std::set<std::string> keys;
  for (const auto& r : runs) {
    cfgs.push_back(config_map(r.config_toml));
    for (auto& [k, v] : cfgs.back()) keys.insert(k);
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& k : keys) {
    std::vector<std::string> row{k};
    bool diff = false;
    for (const auto& c : cfgs) {
      row.push_back(c.count(k) ? c.at(k) : "(absent)");
      diff = diff || row.back() != row[1];
    }
    rows.push_back(row);
    differs.push_back(diff);
  }
  return rows;
}
std::vector<std::vector<std::string>> metric_rows(const std::vector<RunData>& runs) {
  std::vector<std::string> names;
  std::vector<std::map<std::string, std::string>> per;
  for (const auto& r : runs) {
    per.emplace_back();
    for (auto& [k, v] : final_metrics(r)) {
      if (std::find(names.begin(), names.end(), k) == names.end()) names.push_back(k);
      per.back()[k] = v;
    }
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& n : names) {
    std::vector<std::string> row{n};
    for (const auto& p : per) row.push_back(p.count(n) ? p.at(n) : "-");
    rows.push_back(row);
  }
  return rows;
}
}  // namespace

std::string render_compare_html(const std::vector<RunData>& runs) {
  LOWBIT_CHECK(!runs.empty(), "lowbit compare: no runs");
  std::string title = "lowbit compare:";
  std::vector<std::string> head{"metric"};
  for (const auto& r : runs) {
    title += " " + r.name;
    head.push_back(r.name);
  }
  std::string s = page_open(title) + "<h1>" + esc(title) + "</h1>\n<h2>Curves</h2>\n<div class=\"charts\">\n";
  std::vector<Series> by_step, by_time, eval_loss, acc;
  for (const auto& r : runs) {
    const auto steps = parse_all(r.steps);
    const auto evals = eval_rows(r);
    by_step.push_back(series_of(r.name, steps, "step", "loss"));
    Series t{r.name, wall_times(steps), by_step.back().y};
    t.x.resize(std::min(t.x.size(), t.y.size()));
    by_time.push_back(t);
    Series e = series_of(r.name, evals, "step", "test_loss");
    if (e.x.empty()) e = series_of(r.name, evals, "step", "val_loss");
    eval_loss.push_back(e);
    acc.push_back(series_of(r.name, evals, "step", "test_accuracy"));
  }
  s += svg_line_chart(by_step, {"Train loss by step", "step", "loss"});
  s += svg_line_chart(by_time, {"Train loss by wall time", "seconds", "loss"});
  s += svg_line_chart(eval_loss, {"Evaluation loss", "step", "loss"});
  if (std::any_of(acc.begin(), acc.end(), [](const Series& a) { return !a.x.empty(); }))
    s += svg_line_chart(acc, {"Test accuracy", "step", "accuracy"});
  s += "</div>\n<h2>Final metrics</h2>\n" + table(head, metric_rows(runs));
  std::vector<bool> differs;
  const auto rows = config_rows(runs, differs);
  head[0] = "key";
  s += "<h2>Config</h2>\n<p>Highlighted rows differ between the runs.</p>\n" + table(head, rows, differs);
  return s + "</body>\n</html>\n";
}

std::string render_compare_text(const std::vector<RunData>& runs) {
  std::vector<std::string> head{"metric"};
  for (const auto& r : runs) head.push_back(r.name);
  std::string s = "final metrics\n" + text_table(head, metric_rows(runs));
  std::vector<bool> differs;
  const auto rows = config_rows(runs, differs);
  std::vector<std::vector<std::string>> diff_rows;
  for (size_t i = 0; i < rows.size(); ++i)
    if (differs[i]) diff_rows.push_back(rows[i]);
  head[0] = "key";
  s += "\nconfig keys that differ\n" + (diff_rows.empty() ? std::string("  none\n") : text_table(head, diff_rows));
  return s;
}

namespace {
// a record of the right JSON syntax but the wrong types (a hand-edited or foreign file) is an
// error naming the run directory, not an exception from the JSON library
template <typename F>
auto naming_the_run(const std::string& dirs, F&& f) {
  try {
    return f();
  } catch (const json::exception& e) {
    throw Error(
        fmt::format("{}: a record of metrics.jsonl, steps.jsonl or quant_stats.json has an unexpected "
                    "type or shape ({})",
                    dirs, e.what()));
  }
}
}  // namespace

std::string report_command(const std::string& run_dir, const std::string& out, bool text) {
  const RunData r = load_run(run_dir);
  if (text) {
    std::fputs(naming_the_run(run_dir, [&] { return render_report_text(r); }).c_str(), stdout);
    return "";
  }
  const std::string path = out.empty() ? (fs::path(run_dir) / "report.html").string() : out;
  io::write_file_atomic(path, naming_the_run(run_dir, [&] { return render_report_html(r); }));
  return path;
}

std::string compare_command(const std::vector<std::string>& run_dirs, const std::string& out, bool text) {
  LOWBIT_CHECK(run_dirs.size() >= 1, "lowbit compare: give one or more run directories");
  std::vector<RunData> runs;
  for (const auto& d : run_dirs) runs.push_back(load_run(d));
  std::string dirs;
  for (const auto& d : run_dirs) dirs += (dirs.empty() ? "" : ", ") + d;
  if (text) {
    std::fputs(naming_the_run(dirs, [&] { return render_compare_text(runs); }).c_str(), stdout);
    return "";
  }
  const std::string path = out.empty() ? std::string("compare.html") : out;
  io::write_file_atomic(path, naming_the_run(dirs, [&] { return render_compare_html(runs); }));
  return path;
}

}  // namespace lowbit::cli
