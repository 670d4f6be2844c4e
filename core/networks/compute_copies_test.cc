// ComputeCopies: a network whose forward reads its weights from one
// multi-tensor copy computes the same bits, forward and backward, as one that
// casts each weight itself, under CPU autocast (bf16) as lorad-train runs it.
#include "core/networks/compute_copies.h"

#include <gtest/gtest.h>

#include "core/models/grad_checkpoint.h"
#include "core/networks/lora_network.h"
#include "core/networks/tiny_block_model_test_util.h"
#include "core/train/autocast.h"

namespace lorad::networks {
namespace {

using test_models::TinyModel;

struct Trained {
  TinyModel model{/*unused_layer=*/true};
  std::unique_ptr<LoraNetwork> net;
};

// A LoRA with random (not zero) up weights, so every weight gets a gradient.
std::unique_ptr<Trained> MakeTrained(const std::vector<std::string>& args, const std::string& module = "networks.lora") {
  auto t = std::make_unique<Trained>();
  auto config = ParseNetworkConfig({module, 4, 2.0, std::nullopt, args});
  EXPECT_TRUE(config.ok()) << config.status();
  auto net = LoraNetwork::Create(*config, test_models::Targets(t->model, config->TargetsConvBlocks()),
                                 at::detail::createCPUGenerator(7));
  EXPECT_TRUE(net.ok()) << net.status();
  t->net = std::move(*net);
  t->net->Apply();
  t->net->Train(true);
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(11);
  for (auto& p : t->net->UnetParameters()) p.normal_(0.0, 0.1, gen);
  return t;
}

torch::Tensor Input(int64_t batch = 2) {
  return torch::randn({batch, 4, 6, 6}, at::detail::createCPUGenerator(3), torch::TensorOptions());
}

torch::Tensor Loss(Trained& t, const torch::Tensor& x) {
  train::AutocastScope autocast(true, torch::kCPU, torch::kBFloat16);
  return t.model.block->forward(x).to(torch::kFloat32).square().mean();
}

enum class Casts { kPerWeight, kCopies };

// One forward + backward; returns the loss and leaves the gradients in the weights.
torch::Tensor Step(Trained& t, const torch::Tensor& x, Casts casts, size_t* copies = nullptr) {
  torch::Tensor loss;
  {
    ComputeCopies::Scope scope;
    if (casts == Casts::kCopies) scope = t.net->MakeComputeCopies(torch::kBFloat16);
    if (copies != nullptr) *copies = scope.size();
    loss = Loss(t, x);
  }
  loss.backward();
  return loss;
}

void ExpectSameGradients(const Trained& a, const Trained& b) {
  const auto pa = a.net->UnetParameters(), pb = b.net->UnetParameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    ASSERT_EQ(pa[i].grad().defined(), pb[i].grad().defined()) << "weight " << i;
    if (!pa[i].grad().defined()) continue;
    EXPECT_EQ(pb[i].grad().scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(pa[i].grad(), pb[i].grad())) << "weight " << i << " of " << pa.size();
  }
}

struct CopyCase {
  std::string name;
  std::vector<std::string> args;
  size_t expected_copies;  // of the trainable weights: 2 per LoRA module, 3 with Tucker
  std::string module = "networks.lora";
};

class SameBitsTest : public ::testing::TestWithParam<CopyCase> {};

TEST_P(SameBitsTest, ForwardAndGradientsEqualThePerWeightCasts) {
  const CopyCase& c = GetParam();
  auto per_weight = MakeTrained(c.args, c.module);
  auto copied = MakeTrained(c.args, c.module);
  const torch::Tensor x = Input();
  torch::Tensor loss_a = Step(*per_weight, x, Casts::kPerWeight);
  size_t copies = 0;
  torch::Tensor loss_b = Step(*copied, x, Casts::kCopies, &copies);
  EXPECT_EQ(copies, c.expected_copies);
  EXPECT_TRUE(torch::equal(loss_a, loss_b)) << loss_a.item<float>() << " vs " << loss_b.item<float>();
  ExpectSameGradients(*per_weight, *copied);
  // The layer the forward never calls keeps no gradient: its unused copies give none, not zeros.
  const auto* side = copied->net->Find("lora_unet_block_side");
  ASSERT_NE(side, nullptr);
  for (const auto& w : side->adapter->SingleUseWeights()) EXPECT_FALSE(w.grad().defined());
}

INSTANTIATE_TEST_SUITE_P(
    LoraKinds, SameBitsTest,
    ::testing::Values(CopyCase{"Lora", {}, 2 * 3},  // conv1, proj, side
                      CopyCase{"LoCon", {"conv_dim=4", "conv_alpha=2"}, 2 * 4},
                      CopyCase{"LoConTucker", {"algo=locon", "use_tucker=True"}, 2 * 4 + 1, "lycoris.kohya"}),
    [](const ::testing::TestParamInfo<CopyCase>& info) { return info.param.name; });

TEST(ComputeCopiesTest, AccumulatedMicroBatchesMatchThePerWeightCasts) {
  auto per_weight = MakeTrained({});
  auto copied = MakeTrained({});
  for (int64_t micro = 0; micro < 3; ++micro) {
    const torch::Tensor x = Input(1 + micro);
    Step(*per_weight, x, Casts::kPerWeight);
    Step(*copied, x, Casts::kCopies);
  }
  ExpectSameGradients(*per_weight, *copied);
}

// A checkpointed block runs its forward inside the scope and its
// recomputation in the backward, after it: the recomputation casts its own
// weights, and the gradients are still the same bits.
TEST(ComputeCopiesTest, CheckpointedForwardMatchesThePerWeightCasts) {
  auto per_weight = MakeTrained({});
  auto copied = MakeTrained({});
  const torch::Tensor x = Input();
  for (auto* t : {per_weight.get(), copied.get()}) {
    torch::Tensor loss;
    {
      ComputeCopies::Scope scope;
      if (t == copied.get()) {
        scope = t->net->MakeComputeCopies(torch::kBFloat16);
        ASSERT_EQ(scope.size(), 6u);
      }
      train::AutocastScope autocast(true, torch::kCPU, torch::kBFloat16);
      auto* block = t->model.block.get();
      torch::Tensor out = models::CheckpointedCall(
          [block](const std::vector<torch::Tensor>& in) { return block->forward(in[0]); }, {x});
      loss = out.to(torch::kFloat32).square().mean();
    }
    loss.backward();
  }
  ExpectSameGradients(*per_weight, *copied);
  for (const auto& p : copied->net->UnetParameters()) {
    if (p.grad().defined()) EXPECT_GT(p.grad().abs().sum().item<double>(), 0.0);
  }
}

// After the scope the adapters read their weights again: a forward after an
// in-place update sees the update, not the copies of the step before.
TEST(ComputeCopiesTest, NoStaleCopiesAfterTheScope) {
  auto t = MakeTrained({});
  const torch::Tensor x = Input();
  torch::Tensor before = Step(*t, x, Casts::kCopies).detach();
  {
    torch::NoGradGuard no_grad;
    for (auto& w : t->net->UnetParameters()) w.mul_(2.0);
  }
  torch::Tensor after;
  {
    torch::NoGradGuard no_grad;
    after = Loss(*t, x);
  }
  torch::Tensor fresh;
  {
    torch::NoGradGuard no_grad;
    ComputeCopies::Scope scope = t->net->MakeComputeCopies(torch::kBFloat16);
    fresh = Loss(*t, x);
  }
  EXPECT_FALSE(torch::equal(before, after)) << "the update must show";
  EXPECT_TRUE(torch::equal(after, fresh));
}

// Inside the scope the forward reads the copies made when it opened, not the weights.
TEST(ComputeCopiesTest, TheForwardReadsTheCopies) {
  auto t = MakeTrained({});
  const torch::Tensor x = Input();
  torch::NoGradGuard no_grad;
  const torch::Tensor original = Loss(*t, x);
  ComputeCopies::Scope scope = t->net->MakeComputeCopies(torch::kBFloat16);
  for (auto& w : t->net->UnetParameters()) w.mul_(2.0);
  EXPECT_TRUE(torch::equal(Loss(*t, x), original));
}

TEST(ComputeCopiesTest, NothingToCopy) {
  // The weights are the compute dtype already (full fp32 compute).
  auto t = MakeTrained({});
  EXPECT_EQ(t->net->MakeComputeCopies(torch::kFloat32).size(), 0u);
  // Frozen weights take no gradient, so they need no copy.
  for (auto& p : t->net->UnetParameters()) p.set_requires_grad(false);
  EXPECT_EQ(t->net->MakeComputeCopies(torch::kBFloat16).size(), 0u);
  // DoRA reads its weights twice (delta and norm): never copied.
  auto dora = MakeTrained({"dora_wd=True"}, "lycoris.kohya");
  EXPECT_EQ(dora->net->MakeComputeCopies(torch::kBFloat16).size(), 0u);
  // LoHa rebuilds its delta from products of its weights: never copied.
  auto loha = MakeTrained({"algo=loha"}, "lycoris.kohya");
  EXPECT_EQ(loha->net->MakeComputeCopies(torch::kBFloat16).size(), 0u);
}

TEST(ComputeCopiesTest, ComputeDtypeFollowsAutocast) {
  const torch::Tensor f32 = torch::zeros({2});
  EXPECT_EQ(ComputeCopies::ComputeDtype(f32), torch::kFloat32);
  EXPECT_EQ(ComputeCopies::ComputeDtype(f32.to(torch::kBFloat16)), torch::kBFloat16);
  train::AutocastScope autocast(true, torch::kCPU, torch::kBFloat16);
  EXPECT_EQ(ComputeCopies::ComputeDtype(f32), torch::kBFloat16);
}

}  // namespace
}  // namespace lorad::networks
