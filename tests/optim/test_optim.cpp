// Optimizer updates against torch.optim's formulas evaluated in double precision, schedulers
// against their closed forms and values printed by PyTorch, state round trips and errors.
#include <gtest/gtest.h>

#include <cmath>

#include <lowbit/lowbit.h>

using namespace lowbit;
using namespace lowbit::optim;

namespace {
const std::vector<double> kP0 = {0.5, -1.0, 2.0, 0.0, -0.25};
// gradient at step t (1-based) for element i: deterministic and sign-changing
double grad_at(int t, size_t i) { return std::sin(1.3 * t + 0.7 * static_cast<double>(i)) * (1.0 + 0.1 * i); }

Tensor make_param() {
  std::vector<float> v(kP0.begin(), kP0.end());
  return from_vector(v).requires_grad_();
}
void set_grad(Tensor& p, int t) {
  std::vector<float> g;
  for (size_t i = 0; i < kP0.size(); ++i) g.push_back(static_cast<float>(grad_at(t, i)));
  p.set_grad(from_vector(g));
}
void expect_close(const Tensor& p, const std::vector<double>& ref, double tol = 2e-5) {
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_NEAR(p.data_ptr<float>()[i], ref[i], tol * std::max(1.0, std::fabs(ref[i]))) << "element " << i;
}

std::vector<double> sgd_ref(int steps, double lr, double mom, double damp, double wd, bool nesterov, bool maximize) {
  std::vector<double> p = kP0, buf(p.size());
  for (int t = 1; t <= steps; ++t)
    for (size_t i = 0; i < p.size(); ++i) {
      double g = grad_at(t, i);
      if (maximize) g = -g;
      if (wd) g += wd * p[i];
      if (mom) {
        buf[i] = t == 1 ? g : mom * buf[i] + (1 - damp) * g;
        g = nesterov ? g + mom * buf[i] : buf[i];
      }
      p[i] -= lr * g;
    }
  return p;
}
std::vector<double> adam_ref(int steps, double lr, double b1, double b2, double eps, double wd, bool decoupled,
                             bool amsgrad, bool maximize) {
  std::vector<double> p = kP0, m(p.size()), v(p.size()), vmax(p.size());
  for (int t = 1; t <= steps; ++t)
    for (size_t i = 0; i < p.size(); ++i) {
      double g = grad_at(t, i);
      if (maximize) g = -g;
      if (decoupled)
        p[i] *= 1 - lr * wd;
      else
        g += wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
      vmax[i] = std::max(vmax[i], v[i]);
      const double denom = std::sqrt(amsgrad ? vmax[i] : v[i]) / std::sqrt(bc2) + eps;
      p[i] -= lr / bc1 * m[i] / denom;
    }
  return p;
}
}  // namespace

TEST(Optim, SGDVariantsMatchTorchFormulas) {
  struct C {
    double mom, damp, wd;
    bool nesterov, maximize;
  };
  for (C c : {C{0, 0, 0, false, false}, C{0.9, 0, 0, false, false}, C{0.9, 0, 0.01, true, false},
              C{0.8, 0.3, 0.05, false, true}}) {
    Tensor p = make_param();
    SGD opt({p}, {.lr = 0.1,
                  .momentum = c.mom,
                  .dampening = c.damp,
                  .weight_decay = c.wd,
                  .nesterov = c.nesterov,
                  .maximize = c.maximize});
    for (int t = 1; t <= 6; ++t) {
      set_grad(p, t);
      opt.step();
    }
    expect_close(p, sgd_ref(6, 0.1, c.mom, c.damp, c.wd, c.nesterov, c.maximize));
  }
}

TEST(Optim, AdamAndAdamWMatchTorchFormulas) {
  for (bool decoupled : {false, true})
    for (bool amsgrad : {false, true})
      for (bool maximize : {false, true}) {
        Tensor p = make_param();
        AdamOptions o{.lr = 0.05,
                      .beta1 = 0.9,
                      .beta2 = 0.99,
                      .eps = 1e-8,
                      .weight_decay = 0.1,
                      .amsgrad = amsgrad,
                      .maximize = maximize};
        std::unique_ptr<Optimizer> opt =
            decoupled ? std::unique_ptr<Optimizer>(new AdamW({p}, o)) : std::unique_ptr<Optimizer>(new Adam({p}, o));
        for (int t = 1; t <= 8; ++t) {
          set_grad(p, t);
          opt->step();
        }
        SCOPED_TRACE(fmt::format("decoupled={} amsgrad={} maximize={}", decoupled, amsgrad, maximize));
        expect_close(p, adam_ref(8, 0.05, 0.9, 0.99, 1e-8, 0.1, decoupled, amsgrad, maximize));
      }
}

TEST(Optim, LargeTensorFusedPathMatchesSmall) {
  // the multi-threaded fused pass gives the same bits as the serial one
  Generator g(3);
  Tensor big = randn({300000}, &g).requires_grad_();
  Tensor small = big.detach().narrow(0, 0, 1000).clone().requires_grad_();
  Tensor grad = randn({300000}, &g);
  AdamW a({big}), b({small});
  for (int t = 0; t < 3; ++t) {
    big.set_grad(grad);
    small.set_grad(grad.narrow(0, 0, 1000).clone());
    a.step();
    b.step();
  }
  EXPECT_EQ(std::memcmp(big.data_ptr<float>(), small.data_ptr<float>(), 4000), 0);
}

TEST(Optim, ParamGroupsAndStateDict) {
  Tensor a = make_param(), b = make_param();
  AdamW opt(std::vector<ParamGroup>{{{a}, {{"lr", 0.1}}}, {{b}, {{"weight_decay", 0.0}}}});
  EXPECT_EQ(opt.lr(0), 0.1);
  EXPECT_EQ(opt.lr(1), 1e-3);
  set_grad(a, 1);
  set_grad(b, 1);
  opt.step();
  OptimizerState s = opt.state_dict();
  EXPECT_EQ(s.state.size(), 2u);
  EXPECT_EQ(s.state.at(1).step, 1);
  // a fresh optimizer loaded with the state continues identically
  Tensor a2 = a.detach().clone().requires_grad_(), b2 = b.detach().clone().requires_grad_();
  AdamW opt2(std::vector<ParamGroup>{{{a2}, {}}, {{b2}, {}}});
  opt2.load_state_dict(s);
  EXPECT_EQ(opt2.lr(0), 0.1);
  set_grad(a, 2), set_grad(b, 2), set_grad(a2, 2), set_grad(b2, 2);
  opt.step();
  opt2.step();
  EXPECT_EQ(std::memcmp(a.raw_data(), a2.raw_data(), a.nbytes()), 0);
  EXPECT_EQ(std::memcmp(b.raw_data(), b2.raw_data(), b.nbytes()), 0);
  AdamW wrong({make_param()});
  try {
    wrong.load_state_dict(s);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2 parameter groups, the optimizer has 1"), std::string::npos);
  }
  EXPECT_THROW(AdamW(std::vector<ParamGroup>{{{a}, {{"lrr", 0.1}}}}), Error);
  EXPECT_THROW(SGD({a}, {.lr = -1.0}), Error);
  EXPECT_THROW(AdamW({a, a}), Error);
}

TEST(Optim, ClipGradNorm) {
  Tensor a = from_vector<float>({3, 0}).requires_grad_(), b = from_vector<float>({0, 4}).requires_grad_();
  a.set_grad(from_vector<float>({3, 0}));
  b.set_grad(from_vector<float>({0, 4}));
  EXPECT_NEAR(clip_grad_norm_({a, b}, 1.0), 5.0, 1e-6);
  EXPECT_NEAR(a.grad().data_ptr<float>()[0], 3.0 / (5.0 + 1e-6), 1e-6);
  EXPECT_NEAR(clip_grad_norm_({a, b}, 10.0), 1.0, 1e-5);  // below the limit: unchanged
  a.set_grad(from_vector<float>({std::nanf(""), 0}));
  EXPECT_THROW(clip_grad_norm_({a}, 1.0, 2.0, true), Error);
}

TEST(Schedulers, CurvesMatchPyTorch) {
  Tensor p = make_param();
  {
    SGD opt({p}, {.lr = 0.1});
    StepLR s(opt, 3, 0.5);
    std::vector<double> lrs;
    for (int i = 0; i < 7; ++i) {
      lrs.push_back(s.get_last_lr()[0]);
      s.step();
    }
    EXPECT_EQ(lrs, (std::vector<double>{0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025}));
  }
  {
    SGD opt({p}, {.lr = 0.1});
    CosineAnnealingLR s(opt, 10, 0.001);
    for (int i = 0; i < 5; ++i) s.step();
    EXPECT_NEAR(opt.lr(), 0.0505, 1e-12);  // PyTorch: 0.0505 at epoch 5 of 10
    for (int i = 0; i < 5; ++i) s.step();
    EXPECT_NEAR(opt.lr(), 0.001, 1e-12);
  }
  {
    SGD opt({p}, {.lr = 1.0});
    WarmupCosineLR s(opt, 4, 12, 0.1);
    EXPECT_NEAR(opt.lr(), 0.25, 1e-12);
    for (int i = 0; i < 3; ++i) s.step();
    EXPECT_NEAR(opt.lr(), 1.0, 1e-12);
    for (int i = 0; i < 5; ++i) s.step();
    EXPECT_NEAR(opt.lr(), 0.55, 1e-12);  // halfway through the cosine (step 8 of 4..12)
  }
  {
    // printed by PyTorch 2.11: OneCycleLR(SGD(lr=0.1, momentum=0.9), max_lr=0.1, total_steps=10)
    SGD opt({p}, {.lr = 0.1, .momentum = 0.9});
    OneCycleLR s(opt, 0.1, 10);
    const std::vector<double> torch_lrs = {0.004,        0.052,        0.1,          0.0950484632, 0.0811745654,
                                           0.0611262022, 0.0388741978, 0.0188258346, 0.0049519368, 4e-07};
    for (size_t i = 0; i < torch_lrs.size(); ++i) {
      EXPECT_NEAR(opt.lr(), torch_lrs[i], 1e-10) << "step " << i;
      if (i + 1 < torch_lrs.size()) s.step();
    }
    EXPECT_NEAR(opt.param_groups()[0].options["momentum"], 0.95, 1e-9);
    s.step();
    EXPECT_THROW(s.step(), Error);
  }
}
