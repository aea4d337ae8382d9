// PyTorch-style printing: tensor([[1.0000, 2.5000],
//                                 [3.0000, 4.0000]], dtype=float32, requires_grad=True)
// One number format for the whole tensor (integral floats print as "1.", otherwise 4 decimals,
// scientific when the range is wide); tensors over 1000 elements show 3 items per edge.
#include <cmath>
#include <ostream>

#include "internal.h"

namespace lowbit {

namespace {
struct Fmt {
  bool floating = true, integral = true, sci = false;
  int width = 1;
};

std::string fmt_value(double v, const Fmt& f) {
  if (!f.floating) return fmt::format("{}", static_cast<int64_t>(v));
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (f.sci) return fmt::format("{:.4e}", v);
  if (f.integral) return fmt::format("{:.0f}.", v);
  return fmt::format("{:.4f}", v);
}

struct Printer {
  const std::vector<double>& vals;
  const Shape& shape;
  bool summarize;
  Fmt f;
  std::vector<int64_t> strides;

  std::vector<int64_t> shown(int64_t d) const {
    std::vector<int64_t> idx;
    const int64_t n = shape[d];
    if (summarize && n > 6) {
      for (int64_t i = 0; i < 3; ++i) idx.push_back(i);
      idx.push_back(-1);  // ellipsis
      for (int64_t i = n - 3; i < n; ++i) idx.push_back(i);
    } else {
      for (int64_t i = 0; i < n; ++i) idx.push_back(i);
    }
    return idx;
  }
  void rec(std::string& out, int64_t d, int64_t off, int indent) const {
    const int64_t nd = static_cast<int64_t>(shape.size());
    out += "[";
    const auto idx = shown(d);
    for (size_t k = 0; k < idx.size(); ++k) {
      if (k) {
        out += ",";
        if (d == nd - 1)
          out += " ";
        else
          out += std::string(static_cast<size_t>(nd - 1 - d), '\n') + std::string(static_cast<size_t>(indent + 1), ' ');
      }
      if (idx[k] < 0) {
        out += d == nd - 1 ? " ..." : "...";
        continue;
      }
      if (d == nd - 1) {
        std::string s = fmt_value(vals[off + idx[k] * strides[d]], f);
        out += std::string(static_cast<size_t>(std::max<int>(0, f.width - static_cast<int>(s.size()))), ' ') + s;
      } else {
        rec(out, d + 1, off + idx[k] * strides[d], indent + 1);
      }
    }
    out += "]";
  }
};
}  // namespace

std::string Tensor::to_string() const {
  if (!defined()) return "tensor(undefined)";
  // bfloat16 and the low-precision dtypes print their values (float4_e2m1fn_x2: both values of
  // each element, so the printed last dimension is twice the tensor's)
  const Tensor t = dtype() == kBFloat16 || is_low_precision(dtype()) ? to(kFloat32) : *this;
  const int64_t n_values = t.numel();
  std::vector<double> vals(static_cast<size_t>(n_values));
  LOWBIT_DISPATCH_ALL(t.dtype(), T, {
    const T* p = reinterpret_cast<const T*>(t.raw_data());
    for (int64_t i = 0; i < n_values; ++i) vals[i] = static_cast<double>(p[i]);
  });
  Fmt f;
  f.floating = is_floating(dtype()) || is_low_precision(dtype());
  const bool summarize = n_values > 1000;
  double amax = 0, amin_nz = INFINITY;
  for (double v : vals) {
    if (!std::isfinite(v)) continue;
    if (v != std::nearbyint(v)) f.integral = false;
    amax = std::max(amax, std::fabs(v));
    if (v != 0) amin_nz = std::min(amin_nz, std::fabs(v));
  }
  if (f.floating && (amax >= 1e8 || (!f.integral && (amin_nz < 1e-4 || amax / amin_nz > 1000.0)))) f.sci = true;
  for (double v : vals) f.width = std::max<int>(f.width, static_cast<int>(fmt_value(v, f).size()));
  std::string body;
  if (dim() == 0) {
    body = fmt_value(vals[0], f);
  } else if (numel() == 0) {
    body = "[]";
  } else {
    Printer pr{vals, t.shape(), summarize, f, detail::contiguous_strides(t.shape())};
    pr.rec(body, 0, 0, 7);  // "tensor(" is 7 wide
  }
  std::string out = "tensor(" + body;
  if (numel() == 0 && dim() > 1) out += fmt::format(", size={}", shape_str(shape()));
  out += fmt::format(", dtype={}", dtype_name(dtype()));
  if (grad_fn())
    out += fmt::format(", grad_fn=<{}>", grad_fn_name());
  else if (requires_grad())
    out += ", requires_grad=True";
  return out + ")";
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.to_string(); }

}  // namespace lowbit
