// torch.optim.SGD (torch/optim/sgd.py _single_tensor_sgd), op for op, and
// bitsandbytes SGD8bit (bitsandbytes/optim/sgd.py, the "momentum" branch of
// csrc/kernels.cu kOptimizer32bit1State / kOptimizerStatic8bit1StateBlockwise).
//
// kohya's SGDNesterov is torch SGD with nesterov=True (momentum 0.9 unless
// given); its SGDNesterov8bit is bnb SGD8bit(nesterov=True), but SGD8bit never
// passes nesterov or dampening to its kernels: it is heavy-ball momentum,
//   buf = g (first step), buf = momentum * buf + g;  p -= lr * buf,
// with g = grad + weight_decay * p, in 32-bit state for tensors under
// min_8bit_size elements and block-wise (256) dynamic 8-bit state otherwise.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/optim/adamw8bit_kernel.h"
#include "core/optim/optim_internal.h"

namespace lorad::optim {
namespace {

struct SgdConfig {
  double momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false, maximize = false;
};

class Sgd final : public PerParameterOptimizer {
 public:
  Sgd(std::vector<ParamGroup> groups, std::vector<std::string> args, SgdConfig config, std::string name,
      std::string class_path)
      : PerParameterOptimizer(std::move(groups), std::move(args)),
        c_(config),
        name_(std::move(name)),
        class_path_(std::move(class_path)) {}

  std::string_view name() const override { return name_; }
  std::string_view class_path() const override { return class_path_; }

 private:
  void StepParam(double lr, WorkTensor& w, ParamState& s) override {
    s.step += 1;
    torch::Tensor grad = c_.maximize ? w.grad.neg() : w.grad;
    if (c_.weight_decay != 0) grad = grad.add(w.param, c_.weight_decay);
    if (c_.momentum != 0) {
      auto it = s.tensors.find("momentum_buffer");
      if (it == s.tensors.end()) {
        s.tensors["momentum_buffer"] = grad.clone();
      } else {
        it->second.mul_(c_.momentum).add_(grad, 1 - c_.dampening);
      }
      const torch::Tensor& buf = s.tensors["momentum_buffer"];
      grad = c_.nesterov ? grad.add(buf, c_.momentum) : buf;
    }
    w.param.add_(grad, -lr);
  }

  SgdConfig c_;
  std::string name_, class_path_;
};

struct Sgd8Config {
  double momentum = 0.9, weight_decay = 0.0;
  int64_t min_8bit_size = 4096;
};

class Sgd8bit final : public PerParameterOptimizer {
 public:
  Sgd8bit(std::vector<ParamGroup> groups, std::vector<std::string> args, Sgd8Config config, std::string name,
          std::string class_path)
      : PerParameterOptimizer(std::move(groups), std::move(args)),
        c_(config),
        name_(std::move(name)),
        class_path_(std::move(class_path)) {}

  std::string_view name() const override { return name_; }
  std::string_view class_path() const override { return class_path_; }

 private:
  void StepParam(double lr, WorkTensor& w, ParamState& s) override {
    s.step += 1;
    if (w.param.numel() >= c_.min_8bit_size) {
      Step8bit(lr, w, s);
      return;
    }
    if (s.tensors.empty()) s.tensors["state1"] = torch::zeros_like(w.param, w.param.options().dtype(torch::kFloat));
    torch::Tensor& buf = s.tensors["state1"];
    torch::Tensor g = w.grad.to(torch::kFloat);
    torch::Tensor p = w.param.to(torch::kFloat);
    if (c_.weight_decay > 0) g = g.add(p, c_.weight_decay);
    if (s.step == 1) {
      buf.copy_(g);
    } else {
      buf.mul_(c_.momentum).add_(g);
    }
    w.param.copy_(p.add_(buf, -lr));
  }

  // Dequantise, update in float32, new per-block absmax, re-quantise to the
  // nearest code of the signed dynamic map keeping the moment's sign (the
  // CUDA kernel's sign fix), as AdamW8bit's state1.
  void Step8bit(double lr, WorkTensor& w, ParamState& s) {
    constexpr int64_t kBlock = kAdam8bitBlock;
    const int64_t n = w.param.numel();
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    const auto f32 = w.param.options().dtype(torch::kFloat);
    if (s.tensors.empty()) {
      s.tensors["state1"] = torch::zeros({n}, w.param.options().dtype(torch::kUInt8));
      s.tensors["absmax1"] = torch::zeros({blocks}, f32);
    }
    const DynamicMaps::OnDevice& q = maps_.On(w.param.device());
    const int64_t pad = blocks * kBlock - n;
    auto blocked = [&](const torch::Tensor& flat) {
      return (pad == 0 ? flat : torch::constant_pad_nd(flat, {0, pad}, 0)).view({blocks, kBlock});
    };
    torch::Tensor& codes = s.tensors["state1"];
    torch::Tensor& absmax = s.tensors["absmax1"];
    torch::Tensor m = blocked(q.qmap1.index_select(0, codes.to(torch::kInt))).mul_(absmax.unsqueeze(1));
    torch::Tensor g = blocked(w.grad.flatten().to(torch::kFloat));
    torch::Tensor p = blocked(w.param.flatten().to(torch::kFloat));
    if (c_.weight_decay > 0) g = g.add(p, c_.weight_decay);
    if (s.step == 1) {
      m.copy_(g);
    } else {
      m.mul_(c_.momentum).add_(g);
    }
    p.add_(m, -lr);
    w.param.copy_(p.view({-1}).slice(0, 0, n).view_as(w.param));
    torch::Tensor new_absmax = m.abs().amax(1);
    torch::Tensor x = m.div_(new_absmax.unsqueeze(1));
    torch::Tensor empty_block = new_absmax.gt(0).logical_not();
    if (empty_block.any().item<bool>()) x.masked_fill_(empty_block.unsqueeze(1), 0.0);
    torch::Tensor code = torch::searchsorted(q.mid1, x, /*out_int32=*/true);
    torch::Tensor wrong_sign = code.lt(maps_.zero_code1()).ne(torch::signbit(x));
    code.add_(wrong_sign.to(torch::kInt) * (x.gt(0).to(torch::kInt) * 2 - 1)).clamp_(0, 255);
    codes.copy_(code.view({-1}).slice(0, 0, n));
    absmax.copy_(new_absmax);
  }

  Sgd8Config c_;
  std::string name_, class_path_;
  DynamicMaps maps_;
};

absl::Status RequirePositiveLr(const std::string& n, const std::vector<ParamGroup>& groups) {
  for (const ParamGroup& g : groups) {
    if (g.lr > 0) return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(n, " needs a positive learning rate"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Optimizer>> MakeSgd(const OptimizerArgs& args, std::vector<ParamGroup> groups,
                                                   std::string class_path, bool kohya_nesterov) {
  const std::string n = kohya_nesterov ? "SGDNesterov" : "SGD";
  std::vector<std::string> accepted = {"momentum", "dampening", "weight_decay", "maximize",
                                       "foreach",  "differentiable", "fused"};
  if (!kohya_nesterov) accepted.push_back("nesterov");
  RETURN_IF_ERROR(args.CheckKnown(n, accepted));
  SgdConfig c;
  // kohya's SGDNesterov: nesterov=True, momentum 0.9 when optimizer_args lack it.
  ASSIGN_OR_RETURN(c.momentum, args.Float("momentum", kohya_nesterov ? 0.9 : 0.0));
  ASSIGN_OR_RETURN(c.dampening, args.Float("dampening", 0.0));
  ASSIGN_OR_RETURN(c.weight_decay, args.Float("weight_decay", 0.0));
  ASSIGN_OR_RETURN(c.nesterov, args.Bool("nesterov", kohya_nesterov));
  ASSIGN_OR_RETURN(c.maximize, args.Bool("maximize", false));
  // foreach / differentiable / fused choose kernels, not math: accepted and ignored.
  RETURN_IF_ERROR(RequireRange(n, "momentum", c.momentum, 0, true, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "weight_decay", c.weight_decay, 0, true, INFINITY, false));
  if (c.nesterov && (c.momentum <= 0 || c.dampening != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(n, ": Nesterov momentum needs momentum > 0 and dampening=0 (got momentum=",
                                                   c.momentum, ", dampening=", c.dampening, ")"));
  }
  std::vector<std::string> describe = args.DescribeArgs();
  if (kohya_nesterov && !args.Has("momentum")) describe.push_back("momentum=0.9");  // kohya adds it to its kwargs
  return std::unique_ptr<Optimizer>(new Sgd(std::move(groups), std::move(describe), c, n, std::move(class_path)));
}

absl::StatusOr<std::unique_ptr<Optimizer>> MakeSgd8bit(const OptimizerArgs& args, std::vector<ParamGroup> groups,
                                                       std::string class_path, bool kohya_nesterov) {
  const std::string n = kohya_nesterov ? "SGDNesterov8bit" : "SGD8bit";
  std::vector<std::string> accepted = {"momentum", "dampening", "weight_decay", "min_8bit_size", "args"};
  if (!kohya_nesterov) accepted.push_back("nesterov");
  RETURN_IF_ERROR(args.CheckKnown(n, accepted));
  Sgd8Config c;
  ASSIGN_OR_RETURN(c.momentum, args.Float("momentum", kohya_nesterov ? 0.9 : 0.0));
  ASSIGN_OR_RETURN(double dampening, args.Float("dampening", 0.0));
  ASSIGN_OR_RETURN(bool nesterov, args.Bool("nesterov", kohya_nesterov));
  (void)dampening;  // bitsandbytes accepts and ignores both
  (void)nesterov;
  ASSIGN_OR_RETURN(c.weight_decay, args.Float("weight_decay", 0.0));
  ASSIGN_OR_RETURN(c.min_8bit_size, args.Int("min_8bit_size", c.min_8bit_size));
  if (args.Has("args")) return absl::InvalidArgumentError(absl::StrCat(n, " arg 'args' (a bitsandbytes config object) is not supported"));
  if (c.momentum == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(n, " needs momentum > 0 (bitsandbytes SGD8bit does not support SGD without momentum)"));
  }
  RETURN_IF_ERROR(RequireRange(n, "momentum", c.momentum, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "weight_decay", c.weight_decay, 0, true, INFINITY, false));
  if (c.min_8bit_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat("invalid ", n, " arg min_8bit_size=", c.min_8bit_size));
  }
  RETURN_IF_ERROR(RequirePositiveLr(n, groups));
  std::vector<std::string> describe = args.DescribeArgs();
  if (kohya_nesterov && !args.Has("momentum")) describe.push_back("momentum=0.9");
  return std::unique_ptr<Optimizer>(new Sgd8bit(std::move(groups), std::move(describe), c, n, std::move(class_path)));
}

}  // namespace lorad::optim
