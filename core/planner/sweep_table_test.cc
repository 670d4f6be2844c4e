#include "core/planner/sweep_table.h"

#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_split.h"
#include "core/planner/loss_stats.h"
#include "core/planner/number_format.h"

namespace lorad::planner {
namespace {

std::vector<SweepTableRow> Rows() {
  SweepTableRow ok;
  ok.job_id = "j1";
  ok.name = "ds-cats_lr-1e-4";
  ok.varied = {{"dataset", "cats"}, {"learning_rate", "1e-4"}};
  ok.state = "SUCCEEDED";
  ok.final_smoothed_loss = 0.12345;
  ok.min_smoothed_loss = 0.1;
  ok.steps = 400;
  ok.total_steps = 400;
  ok.duration_s = 3725;
  ok.images_per_s = 3.5;
  ok.lora_path = "/out/lora, v1.safetensors";
  SweepTableRow failed;
  failed.job_id = "j2";
  failed.name = "ds-dogs_lr-1e-4";
  failed.varied = {{"dataset", "dogs"}, {"learning_rate", "1e-4"}};
  failed.state = "FAILED";
  failed.steps = 10;
  return {ok, failed};
}

TEST(SweepTableTest, TextHasOneColumnPerVariedKeyAndDashesForMissing) {
  const std::string text = FormatSweepTable(Rows(), TableFormat::kText);
  const std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  for (const char* column : {"job", "dataset", "learning_rate", "state", "final_loss",
                             "min_loss", "steps", "duration", "images_per_s", "lora"}) {
    EXPECT_NE(lines[0].find(column), std::string::npos) << column;
  }
  EXPECT_NE(lines[1].find("0.1235"), std::string::npos) << lines[1];
  EXPECT_NE(lines[1].find("400/400"), std::string::npos);
  EXPECT_NE(lines[1].find("1h02m"), std::string::npos);
  EXPECT_NE(lines[2].find("FAILED"), std::string::npos);
  EXPECT_NE(lines[2].find(" - "), std::string::npos);
  // Aligned: the state column starts at the same offset on every line.
  EXPECT_EQ(lines[1].find("SUCCEEDED"), lines[2].find("FAILED"));
}

TEST(SweepTableTest, CsvQuotesAndKeepsRawNumbers) {
  const std::string csv = FormatSweepTable(Rows(), TableFormat::kCsv);
  const std::vector<std::string> lines = absl::StrSplit(csv, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0],
            "job_id,name,dataset,learning_rate,state,final_smoothed_loss,min_smoothed_loss,"
            "steps,total_steps,duration_s,images_per_s,lora_path");
  EXPECT_EQ(lines[1],
            "j1,ds-cats_lr-1e-4,cats,1e-4,SUCCEEDED,0.12345,0.1,400,400,3725,3.5,"
            "\"/out/lora, v1.safetensors\"");
  EXPECT_EQ(lines[2], "j2,ds-dogs_lr-1e-4,dogs,1e-4,FAILED,,,10,,,,");
}

TEST(SweepTableTest, JsonHasNullsForMissingValues) {
  const nlohmann::json json =
      nlohmann::json::parse(FormatSweepTable(Rows(), TableFormat::kJson));
  ASSERT_EQ(json.size(), 2u);
  EXPECT_EQ(json[0]["varied"]["dataset"], "cats");
  EXPECT_DOUBLE_EQ(json[0]["final_smoothed_loss"].get<double>(), 0.12345);
  EXPECT_TRUE(json[1]["final_smoothed_loss"].is_null());
  EXPECT_TRUE(json[1]["total_steps"].is_null());
  EXPECT_EQ(json[1]["state"], "FAILED");
}

TEST(SweepTableTest, ParsesFormatsAndDurations) {
  EXPECT_EQ(*ParseTableFormat("CSV"), TableFormat::kCsv);
  EXPECT_EQ(*ParseTableFormat("json"), TableFormat::kJson);
  EXPECT_FALSE(ParseTableFormat("xml").ok());
  EXPECT_EQ(FormatDuration(12.4), "12s");
  EXPECT_EQ(FormatDuration(245), "4m05s");
  EXPECT_EQ(FormatDuration(3725), "1h02m");
  EXPECT_EQ(FormatSweepTable({}, TableFormat::kJson), "[]\n");
}

TEST(LossStatsTest, DebiasedEmaMatchesHandComputation) {
  const LossCurve curve = {{1, 1.0}, {2, 0.0}, {3, std::nan("")}, {4, 0.5}};
  const LossCurve smoothed = SmoothLoss(curve, 0.5);
  ASSERT_EQ(smoothed.size(), 3u);  // the NaN step is skipped
  EXPECT_DOUBLE_EQ(smoothed[0].second, 1.0);             // debiased first point = raw
  EXPECT_DOUBLE_EQ(smoothed[1].second, 0.25 / 0.75);     // (0.5*0.5 + 0.5*0) / (1 - 0.25)
  EXPECT_DOUBLE_EQ(smoothed[2].second, 0.375 / 0.875);   // (0.5*0.25 + 0.5*0.5) / (1 - 0.125)
  EXPECT_EQ(smoothed[2].first, 4);
  EXPECT_EQ(SmoothLoss(curve, 0.0)[1].second, 0.0);

  const LossSummary summary = SummarizeLoss(curve, 0.5);
  EXPECT_DOUBLE_EQ(*summary.final_smoothed, 0.375 / 0.875);
  EXPECT_DOUBLE_EQ(*summary.min_smoothed, 0.25 / 0.75);
  EXPECT_EQ(*summary.last_step, 4);
  EXPECT_FALSE(SummarizeLoss({}, 0.9).final_smoothed.has_value());
}

TEST(NumberFormatTest, CompactForms) {
  EXPECT_EQ(FormatNumber(1e-4), "1e-4");
  EXPECT_EQ(FormatNumber(6e-5), "6e-5");
  EXPECT_EQ(FormatNumber(1.2e-4), "1.2e-4");
  EXPECT_EQ(FormatNumber(0.25), "0.25");
  EXPECT_EQ(FormatNumber(3600), "3600");
  EXPECT_EQ(FormatNumber(-2), "-2");
}

}  // namespace
}  // namespace lorad::planner
