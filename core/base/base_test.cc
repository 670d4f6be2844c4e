// Tests of the torch-free base: exit codes, TOML parsing limits, the clock.
#include <string>

#include <gtest/gtest.h>

#include "core/base/clock.h"
#include "core/base/exit_codes.h"
#include "core/base/json_scan.h"
#include "core/base/sha256.h"
#include "core/base/toml.h"

namespace lorad {
namespace {

TEST(ExitCodesTest, TrainerOutcomesAreDistinct) {
  EXPECT_EQ(TrainerExitCode(absl::OkStatus()), kExitOk);
  EXPECT_EQ(TrainerExitCode(absl::InvalidArgumentError("x")), kExitUsage);
  EXPECT_EQ(TrainerExitCode(absl::NotFoundError("x")), kExitNotFound);
  EXPECT_EQ(TrainerExitCode(absl::DataLossError("x")), kExitDiverged);
  EXPECT_EQ(TrainerExitCode(absl::ResourceExhaustedError("x")), kExitOutOfMemory);
  EXPECT_EQ(TrainerExitCode(absl::CancelledError("x")), kExitCancelled);
  EXPECT_EQ(TrainerExitCode(absl::UnavailableError("x: write failed: No space left on device")), kExitWriteFailed);
  EXPECT_EQ(TrainerExitCode(absl::InternalError("x")), kExitError);
}

TEST(ExitCodesTest, ClientOutcomesAreDistinct) {
  EXPECT_EQ(ClientExitCode(absl::UnavailableError("x")), kExitUnreachable);
  EXPECT_EQ(ClientExitCode(absl::UnauthenticatedError("x")), kExitUnauthenticated);
  EXPECT_EQ(ClientExitCode(absl::NotFoundError("x")), kExitNotFound);
  EXPECT_EQ(ClientExitCode(absl::PermissionDeniedError("x")), kExitRefused);
  EXPECT_EQ(ClientExitCode(absl::DataLossError("x")), kExitChecksum);
  EXPECT_EQ(ClientExitCode(absl::InternalError("x")), kExitError);
}

TEST(JsonScanTest, MeasuresDepthAndEndWithoutCountingStrings) {
  const JsonScan flat = ScanJson(R"({"a": {"shape": [1, 2]}, "b": "]]}}[[{"}   )");
  EXPECT_EQ(flat.depth, 3);
  EXPECT_EQ(flat.end, std::string_view(R"({"a": {"shape": [1, 2]}, "b": "]]}}[[{"})").size());
  const JsonScan escaped = ScanJson(R"({"k": "a\"}"} x)");
  EXPECT_EQ(escaped.depth, 1);
  EXPECT_EQ(escaped.end, std::string_view(R"({"k": "a\"}"})").size());
  EXPECT_EQ(ScanJson("{\"open\": [1").end, std::string_view::npos);
  EXPECT_EQ(ScanJson("12 ").end, 2u);
  EXPECT_EQ(ScanJson("").end, std::string_view::npos);
}

TEST(JsonScanTest, DeepNestingIsMeasuredNotRecursed) {
  // 1,000,000 levels: the scan is linear and uses no stack per level.
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  const JsonScan scan = ScanJson(deep);
  EXPECT_EQ(scan.depth, 1000000);
  EXPECT_EQ(scan.end, deep.size());
  EXPECT_GT(scan.depth, kMaxJsonDepth);
}

TEST(TomlTest, ParsesAndNamesTheDocumentInErrors) {
  auto ok = ParseToml("a = 1\n[t]\nb = \"x.y.z\"\n", "config");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)["t"]["b"].value_or(std::string()), "x.y.z");
  auto bad = ParseToml("a = \n", "dataset_config 'd.toml'");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("dataset_config 'd.toml'"), std::string::npos);
  EXPECT_NE(bad.status().message().find("line 1"), std::string::npos) << bad.status();
}

TEST(TomlTest, DeepDottedKeysAreRefusedBeforeParsing) {
  std::string key = "a";
  for (int i = 0; i < 30000; ++i) key += ".a";
  auto parsed = ParseToml(key + " = 1\n", "config");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("nested"), std::string::npos) << parsed.status();
}

TEST(TomlTest, DeepArraysAndInlineTablesAreRefused) {
  EXPECT_FALSE(ParseToml("x = " + std::string(5000, '[') + std::string(5000, ']'), "c").ok());
  std::string inline_tables = "x = ";
  for (int i = 0; i < 2000; ++i) inline_tables += "{a=";
  inline_tables += "1" + std::string(2000, '}');
  EXPECT_FALSE(ParseToml(inline_tables, "c").ok());
}

TEST(TomlTest, DotsInStringsAndCommentsDoNotCount) {
  const std::string dots(200, '.');
  auto parsed = ParseToml("# " + dots + "\nprompt = \"" + dots + "\"\nlit = '" + dots + "'\nml = \"\"\"\n" + dots +
                              "\n\"\"\"\n",
                          "config");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_LE(TomlNestingDepth("[a.b.c]\nx = [[1.5, 2.5]]\n"), 4);
}

TEST(TomlTest, OversizedDocumentIsRefusedWithTheLimit) {
  auto parsed = ParseToml("caption_prefix = \"" + std::string(kMaxTomlBytes, 'x') + "\"", "config");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("limit"), std::string::npos);
}

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // FIPS 180-2 vectors across block boundaries (the SHA-NI rounds where the CPU has them).
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  Sha256 incremental;
  const std::string million(1000000, 'a');
  incremental.Update(million.substr(0, 12345));
  incremental.Update(million.substr(12345));
  EXPECT_EQ(incremental.HexDigest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(ClockTest, UnixMillisecondsAreNow) {
  const int64_t now = NowUnixMs();
  EXPECT_GT(now, 1'700'000'000'000);  // after 2023
  EXPECT_LE(now, NowUnixMs());
}

}  // namespace
}  // namespace lorad
