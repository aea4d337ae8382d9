// Run reports: `lowbit report RUN_DIR` (one self-contained HTML page with inline SVG charts, or
// --text tables) and `lowbit compare RUN_DIR...` (curves overlaid, final metrics side by side,
// config differences highlighted). The charts are drawn here: no scripts, fonts or network.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lowbit::cli {

// ---------------- charts ----------------
struct Series {
  std::string name;
  std::vector<double> x, y;  // same length; non-finite points are skipped
};
struct ChartOptions {
  std::string title, x_label, y_label;
  int width = 560, height = 300;
};
/// The plot area and the axis ranges a chart maps data into: pixel x = left + (x - x0) / (x1 - x0)
/// * (right - left), pixel y = bottom - (y - y0) / (y1 - y0) * (bottom - top). The ranges are
/// the data's, widened to "nice" tick steps (1, 2 or 5 x 10^k).
struct ChartFrame {
  double left, right, top, bottom;
  double x0, x1, y0, y1;
  double x_step, y_step;
  double px(double x) const { return left + (x - x0) / (x1 - x0) * (right - left); }
  double py(double y) const { return bottom - (y - y0) / (y1 - y0) * (bottom - top); }
};
ChartFrame chart_frame(const std::vector<Series>& series, const ChartOptions& options);
/// An SVG line chart: axes with ticks and labels, one <polyline> per series (class "series"),
/// a legend entry per series (class "legend"). No data: a chart saying so.
std::string svg_line_chart(const std::vector<Series>& series, const ChartOptions& options);
/// Grouped vertical bars: one group per label, one bar per value name (class "bar"), a legend.
std::string svg_bar_chart(const std::vector<std::string>& labels, const std::vector<std::string>& value_names,
                          const std::vector<std::vector<double>>& values, const ChartOptions& options);

// ---------------- runs ----------------
/// What a run directory holds (written by `lowbit train`): config.toml, metrics.jsonl,
/// steps.jsonl, quant_stats.json (quantized runs), checkpoints. Missing files leave parts empty;
/// malformed ones throw naming the file and line.
struct RunData {
  std::string dir, name, config_toml, quant_stats_json;
  std::vector<std::string> metrics, steps;  // JSON lines
  struct Checkpoint {
    std::string path;
    int64_t step = 0, bytes = 0;
  };
  std::vector<Checkpoint> checkpoints;
};
RunData load_run(const std::string& dir);

std::string render_report_html(const RunData& run);
std::string render_report_text(const RunData& run);
std::string render_compare_html(const std::vector<RunData>& runs);
std::string render_compare_text(const std::vector<RunData>& runs);

/// `lowbit report` / `lowbit compare`: writes `out` (default RUN_DIR/report.html, or
/// compare.html in the current directory) or prints the text; returns the path written ("").
std::string report_command(const std::string& run_dir, const std::string& out, bool text);
std::string compare_command(const std::vector<std::string>& run_dirs, const std::string& out, bool text);

}  // namespace lowbit::cli
