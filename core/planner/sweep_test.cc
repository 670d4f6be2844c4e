#include "core/planner/sweep.h"

#include <set>
#include <string>

#include <gtest/gtest.h>
#include <toml++/toml.h>

#include "absl/strings/str_cat.h"
#include "core/config/config.h"
#include "core/planner/advisor.h"

namespace lorad::planner {
namespace {

constexpr char kGridSweep[] = R"(
output_name = "lora"
optimizer_type = "AdamW"
learning_rate = 1e-4
network_dim = 8

[sweep]
dataset = ["/data/sets/cats", "/data/sets/dogs/"]
learning_rate = [1e-4, 5e-4]
)";

void ExpectError(const std::string& toml, const std::string& expected) {
  auto plan = ParseSweep(toml);
  ASSERT_FALSE(plan.ok()) << toml;
  EXPECT_NE(plan.status().message().find(expected), std::string::npos)
      << plan.status().message();
}

TEST(SweepTest, GridIsTheCartesianProductInTableOrder) {
  auto plan = ParseSweep(kGridSweep);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->mode, SweepMode::kGrid);
  EXPECT_EQ(plan->varied_keys, (std::vector<std::string>{"dataset", "learning_rate"}));
  ASSERT_EQ(plan->jobs.size(), 4u);
  const std::vector<std::string> names = {"ds-cats_lr-1e-4", "ds-cats_lr-5e-4",
                                          "ds-dogs_lr-1e-4", "ds-dogs_lr-5e-4"};
  const std::vector<double> rates = {1e-4, 5e-4, 1e-4, 5e-4};
  for (size_t i = 0; i < 4; ++i) {
    const SweepJobSpec& job = plan->jobs[i];
    EXPECT_EQ(job.name, names[i]);
    EXPECT_EQ(job.dataset, i < 2 ? "/data/sets/cats" : "/data/sets/dogs/");
    ASSERT_EQ(job.varied.size(), 2u);
    EXPECT_EQ(job.varied[0].first, "dataset");
    EXPECT_EQ(job.varied[1], (std::pair<std::string, std::string>("learning_rate",
                                                                   i % 2 ? "5e-4" : "1e-4")));
    // The job config is valid TOML with the swept value, no [sweep], no dataset.
    const toml::table config = toml::parse(job.config_toml);
    EXPECT_FALSE(config.contains("sweep"));
    EXPECT_FALSE(config.contains("dataset"));
    EXPECT_DOUBLE_EQ(config["learning_rate"].value_or(0.0), rates[i]);
    EXPECT_EQ(config["network_dim"].value_or(0), 8);
    EXPECT_EQ(config["output_name"].value_or(std::string()), "lora_" + names[i]);
    auto parsed = train::ParseTrainOptions(job.config_toml, {});  // as the trainer reads it
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_DOUBLE_EQ(parsed->learning_rate, rates[i]);
  }
}

TEST(SweepTest, ZipPairsValuesAndRejectsUnequalLengths) {
  auto plan = ParseSweep(R"(
    learning_rate = 1e-4
    [sweep]
    mode = "zip"
    optimizer_type = ["AdamW", "came_pytorch.CAME", "Lion"]
    learning_rate = [5e-4, 1e-4, 3e-5]
  )");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->mode, SweepMode::kZip);
  ASSERT_EQ(plan->jobs.size(), 3u);
  EXPECT_EQ(plan->jobs[0].name, "opt-AdamW_lr-5e-4");
  EXPECT_EQ(plan->jobs[1].name, "opt-came_pytorch.CAME_lr-1e-4");
  EXPECT_EQ(plan->jobs[2].name, "opt-Lion_lr-3e-5");
  EXPECT_TRUE(plan->jobs[0].dataset.empty());

  ExpectError(R"(
    [sweep]
    mode = "zip"
    learning_rate = [1e-4, 5e-4]
    network_dim = [4, 8, 16]
  )", "'network_dim' has 3 values but 'learning_rate' has 2");
}

TEST(SweepTest, ReplacesKeysInsideKohyaSectionsAndDottedKeys) {
  auto plan = ParseSweep(R"(
    [optimizer_arguments]
    learning_rate = 1e-4
    [network_arguments]
    network_dim = 8
    [sweep]
    learning_rate = [2e-4]
    network_arguments.network_alpha = [4]
    network_args = [["algo=lora", "dora_wd=True"], []]
    seed = [1]
  )");
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->jobs.size(), 2u);
  const toml::table config = toml::parse(plan->jobs[0].config_toml);
  EXPECT_FALSE(config.contains("learning_rate"));  // replaced in place, not duplicated
  EXPECT_DOUBLE_EQ(config["optimizer_arguments"]["learning_rate"].value_or(0.0), 2e-4);
  EXPECT_EQ(config["network_arguments"]["network_alpha"].value_or(0), 4);
  EXPECT_EQ(config["network_args"].as_array()->size(), 2u);
  EXPECT_EQ(config["seed"].value_or(0), 1);
  EXPECT_EQ(plan->jobs[0].name, "lr-2e-4_alpha-4_args-algo-lora+dora_wd-True_seed-1");
  EXPECT_EQ(plan->jobs[1].name, "lr-2e-4_alpha-4_args-none_seed-1");
  EXPECT_EQ(plan->jobs[0].varied[2].second, "[algo=lora, dora_wd=True]");
  auto parsed = train::ParseTrainOptions(plan->jobs[0].config_toml, {});  // as the trainer reads it
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_DOUBLE_EQ(parsed->learning_rate, 2e-4);
  EXPECT_EQ(parsed->network_alpha, 4);
}

TEST(SweepTest, NamesAreUniqueShortAndFilesystemSafe) {
  auto plan = ParseSweep(R"(
    [sweep]
    dataset = ["a/cats", "b/cats", "c/my cats: the best/"]
    lr_scheduler = ["cosine_with_restarts_and_a_very_long_scheduler_name_indeed"]
    output_dir = ["/very/long/output/directory/name/that/goes/on/and/on/and/on"]
  )");
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::set<std::string> names;
  for (const SweepJobSpec& job : plan->jobs) {
    EXPECT_LE(job.name.size(), 64u) << job.name;
    for (char c : job.name) {
      EXPECT_TRUE(isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '+' ||
                  c == '-') << job.name;
    }
    names.insert(job.name);
  }
  EXPECT_EQ(names.size(), 3u);
  EXPECT_EQ(plan->jobs[1].name.substr(0, 8), "ds-cats_");
  EXPECT_NE(plan->jobs[0].name, plan->jobs[1].name);
  EXPECT_EQ(ShortValueForName("dataset", "c/my cats: the best/"), "my-cats-the-best");
}

TEST(SweepTest, ErrorsNameTheKey) {
  ExpectError("learning_rate = 1e-4\n", "no [sweep] table");
  ExpectError("[sweep]\nmode = \"grid\"\n", "no keys to vary");
  ExpectError("[sweep]\nlearning_rate = 1e-4\n", "sweep key 'learning_rate': must be a list");
  ExpectError("[sweep]\nnetwork_dim = []\n", "sweep key 'network_dim': has an empty list");
  ExpectError("[sweep]\nmode = \"random\"\nseed = [1]\n", "sweep key 'mode'");
  ExpectError("[sweep]\nnetwork_args = [\"conv_dim=4\", \"algo=lora\"]\n",
              "sweep key 'network_args': takes a list of lists");
  ExpectError("[sweep]\ndataset = [1, 2]\n", "sweep key 'dataset': values must be strings");
  ExpectError("network_arguments = 3\n[sweep]\nnetwork_arguments.network_dim = [4]\n",
              "sweep key 'network_arguments.network_dim'");
  ExpectError("[sweep]\nlearning_rate = [1e-4,\n", "line ");
  std::string huge = "[sweep]\n";
  for (const char* key : {"a", "b", "c", "d"}) {
    absl::StrAppend(&huge, key, " = [1, 2, 3, 4, 5, 6]\n");  // 6^4 = 1296 jobs
  }
  ExpectError(huge, "more than 1000 jobs");
}

TEST(SweepTest, ReadsFiles) {
  EXPECT_EQ(ParseSweepFile("/nonexistent/sweep.toml").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace lorad::planner
