// Optimizer trajectories against optim_reference.safetensors. Cases, params and
// settings all come from the file's __metadata__.
#include <algorithm>
#include <cmath>
#include <map>
#include <cstdio>
#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "core/common/fixtures.h"
#include "core/io/safetensors.h"
#include "core/optim/optimizer.h"
#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::optim {
namespace {

using json = nlohmann::json;

struct Fixture {
  std::unique_ptr<io::SafetensorsFile> file;
  json info, cases;
  std::vector<std::string> param_names;
  int steps = 0;
};

const Fixture& GetFixture() {
  static Fixture* fixture = [] {
    auto* f = new Fixture;
    auto file = io::SafetensorsFile::Open(FixturePath("optim_reference.safetensors"));
    if (!file.ok()) {
      ADD_FAILURE() << file.status();
      return f;
    }
    f->file = std::move(*file);
    f->info = json::parse(f->file->metadata().at("info"));
    f->cases = json::parse(f->file->metadata().at("cases"));
    for (const auto& p : f->info["params"]) f->param_names.push_back(p["name"]);
    f->steps = f->info["steps"];
    return f;
  }();
  return *fixture;
}

torch::Tensor Get(const std::string& key, torch::ScalarType type) {
  auto t = GetFixture().file->Get(key, type);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? t->clone() : torch::Tensor();
}

std::vector<const json*> OptimizerCases() {
  std::vector<const json*> out;
  for (const json& c : GetFixture().cases) {
    if (c["kind"] == "optimizer") out.push_back(&c);
  }
  return out;
}

std::string PyValue(const json& v) {
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_string()) return v.get<std::string>();  // "inf"
  if (v.is_array()) {
    std::string out;
    for (const json& e : v) absl::StrAppend(&out, out.empty() ? "" : ",", PyValue(e));
    return out;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v.get<double>());
  return buf;
}

// kwargs minus lr, as kohya optimizer_args.
std::vector<std::string> ArgsOf(const json& c) {
  std::vector<std::string> args;
  for (const auto& [k, v] : c["kwargs"].items()) {
    if (k != "lr") args.push_back(absl::StrCat(k, "=", PyValue(v)));
  }
  return args;
}

double LrOf(const json& c) {
  const json& lr = c["kwargs"].value("lr", json());
  return lr.is_null() ? 0.0 : lr.get<double>();
}

std::vector<torch::Tensor> InitParams(torch::ScalarType type) {
  std::vector<torch::Tensor> params;
  for (const std::string& p : GetFixture().param_names) {
    params.push_back(Get("init/" + p, torch::kFloat).to(type).set_requires_grad(true));
  }
  return params;
}

std::unique_ptr<Optimizer> Make(const std::string& type, const std::vector<std::string>& args, double lr,
                                const std::vector<torch::Tensor>& params) {
  auto opt = CreateOptimizer(type, args, {ParamGroup{"unet", params, lr}});
  EXPECT_TRUE(opt.ok()) << opt.status();
  return opt.ok() ? std::move(*opt) : nullptr;
}

// The gradient fed at step t (1-based): stored for float32 runs, recomputed
// from the recipe op by op for float64 runs.
void SetGrads(const std::string& id, const std::vector<torch::Tensor>& params, int t) {
  const Fixture& f = GetFixture();
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string& name = f.param_names[i];
    torch::Tensor g;
    if (params[i].scalar_type() == torch::kFloat) {
      g = Get(absl::StrCat("optim/", id, "/f32/grad/", name), torch::kFloat)[t - 1];
    } else {
      const auto type = params[i].scalar_type();
      const double gs = f.info["grad_recipe"]["grad"]["grad_scale"], ns = f.info["grad_recipe"]["grad"]["noise_scale"];
      torch::Tensor a = params[i].detach() - Get("target/" + name, torch::kFloat).to(type);
      torch::Tensor b = a * gs;
      torch::Tensor c = Get("noise/" + name, torch::kFloat)[t - 1].to(type) * ns;
      g = b + c;
    }
    params[i].mutable_grad() = g.clone();
  }
}

struct Errors {
  double worst = 0;         // max over steps/params of max|ours - ref| / max|ref|
  double worst_update = 0;  // max over steps/params of max|dp_ours - dp_ref| / max|dp_ref|
};

// Runs all steps of case `c` in `type` and compares with the stored trajectory.
Errors RunCase(const json& c, torch::ScalarType type, const std::string& type_key, const std::string& trajectory_key) {
  const Fixture& f = GetFixture();
  const std::string id = c["id"];
  std::vector<torch::Tensor> params = InitParams(type);
  auto opt = Make(c["optimizer"], ArgsOf(c), LrOf(c), params);
  Errors e;
  if (!opt) return e;
  std::vector<torch::Tensor> prev_ref;
  for (size_t i = 0; i < params.size(); ++i) prev_ref.push_back(params[i].detach().to(torch::kDouble).clone());
  for (int t = 1; t <= f.steps; ++t) {
    std::vector<torch::Tensor> before;
    for (const auto& p : params) before.push_back(p.detach().to(torch::kDouble).clone());
    SetGrads(id, params, t);
    absl::Status st = opt->Step();
    EXPECT_TRUE(st.ok()) << st;
    for (size_t i = 0; i < params.size(); ++i) {
      torch::Tensor ref =
          Get(absl::StrCat("optim/", id, "/", trajectory_key, "/param/", f.param_names[i]), torch::kDouble)[t - 1];
      torch::Tensor ours = params[i].detach().to(torch::kDouble);
      e.worst = std::max(e.worst, ((ours - ref).abs().max() / ref.abs().max()).item<double>());
      torch::Tensor d_ref = ref - prev_ref[i], d_ours = ours - before[i];
      const double scale = d_ref.abs().max().item<double>();
      if (scale > 0) e.worst_update = std::max(e.worst_update, (d_ours - d_ref).abs().max().item<double>() / scale);
      prev_ref[i] = ref;
    }
    // Reported lrs and Prodigy's d estimates, step by step.
    if (c["optimizer"] == "Adafactor") {
      const double ref_lr = Get(absl::StrCat("optim/", id, "/", type_key, "/lr/", f.param_names[0]), torch::kDouble)[t - 1]
                                .item<double>();
      EXPECT_NEAR(opt->EffectiveLr(0), ref_lr, 1e-6 * ref_lr) << id << " step " << t;
    }
    if (c["optimizer"] == "Prodigy" && f.file->Has(absl::StrCat("optim/", id, "/", trajectory_key, "/d"))) {
      auto state = opt->SaveState();
      EXPECT_TRUE(state.ok());
      if (!state.ok()) return e;
      for (const char* key : {"d", "d_max", "d_hat", "d_numerator", "d_denom"}) {
        const double ref =
            Get(absl::StrCat("optim/", id, "/", trajectory_key, "/", key), torch::kDouble)[t - 1].item<double>();
        const double ours = std::stod(state->values.at(absl::StrCat("prodigy/", key)));
        // float32 runs of Prodigy drift (the reference's own f32-vs-f64 spread is ~1e-4).
        const double tol = type == torch::kDouble ? 1e-10 : 2e-2;
        EXPECT_NEAR(ours, ref, tol * std::max(std::fabs(ref), 1e-30)) << id << " " << key << " step " << t;
      }
      const double ref_d =
          Get(absl::StrCat("optim/", id, "/", trajectory_key, "/d"), torch::kDouble)[t - 1].item<double>();
      const double tol = type == torch::kDouble ? 1e-10 : 2e-2;
      EXPECT_NEAR(opt->EffectiveLr(0), ref_d * LrOf(c), tol * ref_d) << id;
    }
  }
  return e;
}

double MaxSpread(const json& c) {
  double spread = 0;
  for (const auto& [name, v] : c["f32_vs_f64"].items()) {
    if (!v.is_object() || !v.contains("max_abs_f32_minus_f64_per_step")) continue;
    for (double s : v["max_abs_f32_minus_f64_per_step"]) spread = std::max(spread, s);
  }
  return spread;
}

bool HasTrajectory(const json& c, const std::string& dtype) {
  for (const json& d : c["dtypes"]) {
    if (d == dtype) return true;
  }
  return false;
}

TEST(OptimFixture, HasOptimizerCases) {
  ASSERT_NE(GetFixture().file, nullptr);
  EXPECT_GE(OptimizerCases().size(), 6u);
  EXPECT_GT(GetFixture().steps, 0);
}

// float32 runs fed the stored gradients reproduce the float32 trajectory within
// 1e-6 relative (max |ours - ref| / max |ref|). Prodigy's float32 trajectory is
// itself order-sensitive (its dot products feed d): it is checked in float64 below.
TEST(OptimFixture, Float32Trajectories) {
  for (const json* c : OptimizerCases()) {
    const std::string id = (*c)["id"];
    Errors e = RunCase(*c, torch::kFloat, "f32", "f32");
    std::printf("[f32] %-26s worst rel err %.3e   worst update rel err %.3e   (reference f32-vs-f64 spread %.2e)\n",
                id.c_str(), e.worst, e.worst_update, MaxSpread(*c));
    if ((*c)["optimizer"] == "Prodigy") {
      EXPECT_LE(e.worst, 10 * MaxSpread(*c)) << id;
    } else {
      EXPECT_LE(e.worst, 1e-6) << id;
    }
  }
}

// float64 runs with the recipe's gradients reproduce the float64 trajectory
// within 1e-10 (Prodigy included, with its d estimates).
TEST(OptimFixture, Float64Trajectories) {
  int checked = 0;
  for (const json* c : OptimizerCases()) {
    if (!HasTrajectory(*c, "f64")) continue;
    const std::string id = (*c)["id"];
    Errors e = RunCase(*c, torch::kDouble, "f64", "f64");
    std::printf("[f64] %-26s worst rel err %.3e   worst update rel err %.3e\n", id.c_str(), e.worst,
                e.worst_update);
    EXPECT_LE(e.worst, 1e-10) << id;
    // Relative-step Adafactor moves parameters by ~1e-7: check the updates themselves too.
    EXPECT_LE(e.worst_update, 1e-6) << id;
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

// Save after half the steps through a real safetensors file, load into a fresh
// optimizer over copies of the parameters, continue: bit-identical.
TEST(OptimFixture, StateRoundTripIsBitExact) {
  const Fixture& f = GetFixture();
  const int half = f.steps / 2;
  const lorad::testing::ScopedTempDir tmp("lorad_optim_state");
  const std::filesystem::path& dir = tmp.path();
  std::vector<std::pair<std::string, std::vector<std::string>>> runs;
  for (const json* c : OptimizerCases()) runs.emplace_back((*c)["id"], std::vector<std::string>{});
  runs.emplace_back("adamw8bit", std::vector<std::string>{});
  for (const auto& [id, unused] : runs) {
    std::string type = "AdamW8bit", grad_case = "adamw_default";
    std::vector<std::string> args;
    double lr = 1e-3;
    if (id != "adamw8bit") {
      for (const json* c : OptimizerCases()) {
        if ((*c)["id"] == id) {
          type = (*c)["optimizer"];
          args = ArgsOf(*c);
          lr = LrOf(*c);
        }
      }
      grad_case = id;
    }
    std::vector<torch::Tensor> straight = InitParams(torch::kFloat);
    auto a = Make(type, args, lr, straight);
    ASSERT_NE(a, nullptr);
    for (int t = 1; t <= f.steps; ++t) {
      SetGrads(grad_case, straight, t);
      ASSERT_TRUE(a->Step().ok());
    }
    std::vector<torch::Tensor> first = InitParams(torch::kFloat);
    auto b = Make(type, args, lr, first);
    for (int t = 1; t <= half; ++t) {
      SetGrads(grad_case, first, t);
      ASSERT_TRUE(b->Step().ok());
    }
    auto saved = b->SaveState();
    ASSERT_TRUE(saved.ok()) << saved.status();
    const auto path = dir / (id + ".safetensors");
    ASSERT_TRUE(io::WriteSafetensors(path, saved->tensors, io::Metadata(saved->values.begin(), saved->values.end())).ok());
    auto file = io::SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    OptimizerState loaded;
    for (const std::string& name : (*file)->Names()) loaded.tensors.emplace_back(name, *(*file)->Get(name));
    loaded.values = std::map<std::string, std::string>((*file)->metadata().begin(), (*file)->metadata().end());

    std::vector<torch::Tensor> resumed;
    for (const auto& p : first) resumed.push_back(p.detach().clone().set_requires_grad(true));
    auto r = Make(type, args, lr, resumed);
    absl::Status st = r->LoadState(loaded);
    ASSERT_TRUE(st.ok()) << id << ": " << st;
    EXPECT_EQ(r->step_count(), half);
    for (int t = half + 1; t <= f.steps; ++t) {
      SetGrads(grad_case, resumed, t);
      ASSERT_TRUE(r->Step().ok());
    }
    for (size_t i = 0; i < straight.size(); ++i) {
      EXPECT_TRUE(torch::equal(straight[i].detach(), resumed[i].detach())) << id << " param " << f.param_names[i];
    }
    EXPECT_EQ(a->EffectiveLr(0), r->EffectiveLr(0)) << id;
  }
}

TEST(OptimFixture, LoadStateRejectsAnotherOptimizer) {
  std::vector<torch::Tensor> params = InitParams(torch::kFloat);
  auto adamw = Make("AdamW", {}, 1e-3, params);
  SetGrads("adamw_default", params, 1);
  ASSERT_TRUE(adamw->Step().ok());
  auto state = adamw->SaveState();
  ASSERT_TRUE(state.ok());
  auto lion = Make("Lion", {}, 1e-4, InitParams(torch::kFloat));
  absl::Status st = lion->LoadState(*state);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("AdamW"), std::string::npos) << st;
}

// AdamW8bit against the AdamW reference (bitsandbytes has no trajectory here).
// Tensors under min_8bit_size run bnb's 32-bit kernel: the same Adam up to
// float32 rounding plus the decay-after-step order (a difference of lr^2*wd*|u|
// ~ 1e-8 per step), so they must stay within 4x the reference's own
// float32-vs-float64 spread.
// The 4,113-element tensor keeps 8-bit block-wise moments. The dynamic map has
// 2^i codes in decade i (signed) and 2^(i+1) (unsigned) below a block's absmax,
// so a moment 1e-3 x its block's absmax sits among 8 signed codes spaced 0.11e-3
// apart: up to ~20% error for that element, ~3% for moments near absmax. Here
// g = 0.5(p - target) + noise with target ~ N(0,1): |g| spans 3+ decades inside
// each 256-block, so small-gradient elements get visibly different updates.
// Measured: per-step update relative L2 error 3.3e-2, worst element 0.26 lr,
// trajectory 1.8 lr apart after 12 steps. Bounds: relative L2 <= 5e-2 (a
// wrong map, missing sign fix or wrong absmax gives O(1) errors), every element's
// per-step update within 0.5 lr, trajectory within 3 lr ("a few lr-sized steps").
TEST(OptimFixture, AdamW8bitTracksAdamW) {
  const Fixture& f = GetFixture();
  const json* ref_case = nullptr;
  for (const json* c : OptimizerCases()) {
    if ((*c)["id"] == "adamw_default") ref_case = c;
  }
  ASSERT_NE(ref_case, nullptr);
  const double lr = LrOf(*ref_case);
  const double spread = MaxSpread(*ref_case);
  std::vector<torch::Tensor> params = InitParams(torch::kFloat);
  auto opt = Make("AdamW8bit", ArgsOf(*ref_case), lr, params);
  ASSERT_NE(opt, nullptr);
  std::vector<torch::Tensor> prev_ref;
  for (const auto& p : params) prev_ref.push_back(p.detach().clone());
  double worst_small = 0, worst_l2 = 0, worst_elem = 0, final_diff = 0;
  int64_t quantized_params = 0, quantized_state_bytes = 0;
  for (int t = 1; t <= f.steps; ++t) {
    std::vector<torch::Tensor> before;
    for (const auto& p : params) before.push_back(p.detach().clone());
    SetGrads("adamw_default", params, t);
    ASSERT_TRUE(opt->Step().ok());
    for (size_t i = 0; i < params.size(); ++i) {
      torch::Tensor ref = Get(absl::StrCat("optim/adamw_default/f32/param/", f.param_names[i]), torch::kFloat)[t - 1];
      torch::Tensor ours = params[i].detach();
      if (ours.numel() < 4096) {
        worst_small = std::max(worst_small, (ours - ref).abs().max().item<double>());
      } else {
        torch::Tensor du = (ours - before[i]) - (ref - prev_ref[i]);
        worst_l2 = std::max(worst_l2, (du.norm() / (ref - prev_ref[i]).norm()).item<double>());
        worst_elem = std::max(worst_elem, du.abs().max().item<double>());
        if (t == f.steps) final_diff = (ours - ref).abs().max().item<double>();
      }
      prev_ref[i] = ref;
    }
  }
  for (const auto& p : params) {
    if (p.numel() >= 4096) quantized_params += p.numel();
  }
  auto state = opt->SaveState();
  ASSERT_TRUE(state.ok());
  for (const auto& [name, t] : state->tensors) {
    const torch::Tensor& p = params[std::stoi(name.substr(2, name.find('/', 2) - 2))];
    if (p.numel() >= 4096) quantized_state_bytes += t.numel() * t.element_size();
  }
  std::printf("[8bit] small tensors max|diff| %.3e (4x spread %.3e); large: update rel L2 %.3e, max|du| %.3e (%.3f lr), "
              "final |diff| %.3e (%.3f lr), state %.3f bytes/param\n",
              worst_small, 4 * spread, worst_l2, worst_elem, worst_elem / lr, final_diff, final_diff / lr,
              static_cast<double>(quantized_state_bytes) / quantized_params);
  EXPECT_LE(worst_small, 4 * spread);
  EXPECT_LE(worst_l2, 5e-2);
  EXPECT_LE(worst_elem, 0.5 * lr);
  EXPECT_LE(final_diff, 3.0 * lr);
  EXPECT_LE(static_cast<double>(quantized_state_bytes) / quantized_params, 2.1);
}

// The 8-bit state after one step holds exactly-known moments, m = (1-b1) g and
// v = (1-b2) g^2: each code must be the nearest entry of the dynamic map
// (rebuilt here in double precision as bitsandbytes functional.py:create_dynamic_map
// builds it) to moment / block absmax,
// except where the sign fix moved it one code toward the moment's sign, and
// absmax must be the block's max |moment|.
TEST(OptimFixture, AdamW8bitStateIsNearestDynamicCode) {
  auto map = [](bool is_signed) {
    std::vector<double> v = {0.0, 1.0};
    for (int i = 0; i < 7; ++i) {
      const int n = is_signed ? (1 << i) + 1 : (1 << (i + 1)) + 1;
      for (int j = 0; j + 1 < n; ++j) {
        const double a = 0.1 + 0.9 * j / (n - 1), b = 0.1 + 0.9 * (j + 1) / (n - 1);
        const double mid = std::pow(10.0, i - 6) * (a + b) / 2;
        v.push_back(mid);
        if (is_signed) v.push_back(-mid);
      }
    }
    std::sort(v.begin(), v.end());
    return v;
  };
  const std::vector<double> qmap1 = map(true), qmap2 = map(false);
  ASSERT_EQ(qmap1.size(), 256u);
  ASSERT_EQ(qmap2.size(), 256u);
  const Fixture& f = GetFixture();
  std::vector<torch::Tensor> params = InitParams(torch::kFloat);
  auto opt = Make("AdamW8bit", {}, 1e-3, params);
  SetGrads("adamw_default", params, 1);
  ASSERT_TRUE(opt->Step().ok());
  auto state = opt->SaveState();
  ASSERT_TRUE(state.ok());
  std::map<std::string, torch::Tensor> st(state->tensors.begin(), state->tensors.end());
  int checked = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() < 4096) continue;
    const std::string prefix = absl::StrCat("0/", i, "/");
    torch::Tensor g = params[i].grad().flatten().to(torch::kDouble);
    for (int which = 1; which <= 2; ++which) {
      const std::vector<double>& qmap = which == 1 ? qmap1 : qmap2;
      torch::Tensor exact = which == 1 ? (g * (1 - 0.9)).to(torch::kFloat).to(torch::kDouble)
                                       : (g * g * (1 - 0.999)).to(torch::kFloat).to(torch::kDouble);
      torch::Tensor codes = st.at(prefix + absl::StrCat("state", which)).to(torch::kLong);
      torch::Tensor absmax = st.at(prefix + absl::StrCat("absmax", which)).to(torch::kDouble);
      const int64_t n = exact.numel();
      for (int64_t b = 0; b * 256 < n; ++b) {
        const int64_t end = std::min(n, (b + 1) * 256);
        const double block_max = exact.slice(0, b * 256, end).abs().max().item<double>();
        EXPECT_NEAR(absmax[b].item<double>(), block_max, 1e-6 * block_max) << f.param_names[i] << " block " << b;
        for (int64_t e = b * 256; e < end; ++e) {
          const double x = exact[e].item<double>() / block_max;
          const int64_t code = codes[e].item<int64_t>();
          double best = INFINITY;
          for (double q : qmap) best = std::min(best, std::fabs(q - x));
          const bool nearest = std::fabs(qmap[code] - x) <= best + 1e-6;
          const bool sign_fixed = which == 1 && code > 0 && code < 255 && ((x > 0 && qmap[code] > 0 && qmap[code - 1] <= 0) ||
                                                                          (x < 0 && qmap[code] < 0 && qmap[code + 1] >= 0));
          EXPECT_TRUE(nearest || sign_fixed) << f.param_names[i] << " state" << which << " element " << e << ": x=" << x
                                             << " code value " << qmap[code];
          if (which == 1 && x != 0) EXPECT_EQ(qmap[code] > 0, x > 0) << "element " << e;
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 0);
}

}  // namespace
}  // namespace lorad::optim
