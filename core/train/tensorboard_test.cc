// TensorBoard event files: CRC-32C against RFC 3720's vectors, records against
// the bytes TensorBoard's own protobuf classes and RecordWriter produce
// (tests/fixtures/make_tensorboard_reference.py), files read back record by
// record, kohya's step tags, and the log_with / logging_dir config keys.
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <regex>
#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "core/base/testing/scoped_temp_dir.h"
#include "core/config/config.h"
#include "core/train/tensorboard_event.pb.h"
#include "core/train/tensorboard_writer.h"
#include "core/train/tfrecord.h"

namespace lorad::train {
namespace {

namespace fs = std::filesystem;
using Scalars = std::vector<std::pair<std::string, double>>;

nlohmann::json Reference() {
  std::ifstream in(fs::path(LORAD_REPO_FIXTURES) / "tensorboard_reference.json");
  EXPECT_TRUE(in) << "tests/fixtures/tensorboard_reference.json is missing";
  return nlohmann::json::parse(in);
}

std::string Unhex(const std::string& hex) { return absl::HexStringToBytes(hex); }

void WriteBytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::string ReadBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<tensorboard::Event> ReadEvents(const fs::path& path) {
  auto records = ReadRecords(path);
  EXPECT_TRUE(records.ok()) << records.status();
  std::vector<tensorboard::Event> events;
  if (!records.ok()) return events;
  for (const std::string& record : *records) {
    tensorboard::Event event;
    EXPECT_TRUE(event.ParseFromString(record));
    events.push_back(event);
  }
  return events;
}

TEST(Crc32cTest, Rfc3720Vectors) {
  // RFC 3720 appendix B.4.
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string up, down;
  for (int i = 0; i < 32; ++i) {
    up.push_back(static_cast<char>(i));
    down.push_back(static_cast<char>(31 - i));
  }
  EXPECT_EQ(Crc32c(up), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(down), 0x113FDB5Cu);
  const std::string read_pdu = Unhex(
      "01c000000000000000000000000000001400000000000400000000140000001828000000000000000200000000000000");
  ASSERT_EQ(read_pdu.size(), 48u);
  EXPECT_EQ(Crc32c(read_pdu), 0xD9963A56u);
  // The CRC catalogue's check value, and continuing a checksum over pieces.
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c("6789", Crc32c("12345")), 0xE3069283u);
}

TEST(Crc32cTest, MaskedAsTensorBoardComputesIt) {
  const nlohmann::json reference = Reference();
  ASSERT_EQ(reference["crc32c"].size(), 4u);
  for (const auto& c : reference["crc32c"]) {
    const std::string text = c["text"];
    EXPECT_EQ(Crc32c(text), c["crc32c"].get<uint32_t>()) << text;
    EXPECT_EQ(MaskCrc32c(Crc32c(text)), c["masked"].get<uint32_t>()) << text;
  }
}

TEST(TfRecordTest, FramingIsLengthCrcDataCrc) {
  const std::string data = "hello";
  const std::string framed = FrameRecord(data);
  ASSERT_EQ(framed.size(), 5u + 16u);
  EXPECT_EQ(framed.substr(0, 8), std::string("\x05\0\0\0\0\0\0\0", 8));
  auto le32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(framed[at + static_cast<size_t>(i)]);
    return v;
  };
  EXPECT_EQ(le32(8), MaskCrc32c(Crc32c(framed.substr(0, 8))));
  EXPECT_EQ(framed.substr(12, 5), data);
  EXPECT_EQ(le32(17), MaskCrc32c(Crc32c(data)));
}

// lorad's proto subset serializes to the bytes of TensorBoard's own classes,
// and the framing is its RecordWriter's.
TEST(TfRecordTest, RecordsMatchTensorBoardsOwnWriter) {
  const nlohmann::json records = Reference()["records"];
  tensorboard::Event version;
  version.set_wall_time(records["version"]["wall_time"].get<double>());
  version.set_file_version("brain.Event:2");
  version.mutable_source_metadata()->set_writer("lorad-train");
  EXPECT_EQ(absl::BytesToHexString(FrameRecord(version.SerializeAsString())),
            records["version"]["framed_hex"].get<std::string>());

  tensorboard::Event scalar;
  scalar.set_wall_time(records["scalar"]["wall_time"].get<double>());
  scalar.set_step(7);
  auto* v = scalar.mutable_summary()->add_value();
  v->set_tag("loss/current");
  v->set_simple_value(0.125f);
  EXPECT_EQ(absl::BytesToHexString(FrameRecord(scalar.SerializeAsString())),
            records["scalar"]["framed_hex"].get<std::string>());

  tensorboard::Event image;
  image.set_wall_time(records["image"]["wall_time"].get<double>());
  image.set_step(3);
  auto* iv = image.mutable_summary()->add_value();
  iv->set_tag("sample_0");
  iv->mutable_image()->set_height(2);
  iv->mutable_image()->set_width(3);
  iv->mutable_image()->set_colorspace(3);
  iv->mutable_image()->set_encoded_image_string(Unhex(records["image"]["png_hex"]));
  EXPECT_EQ(absl::BytesToHexString(FrameRecord(image.SerializeAsString())),
            records["image"]["framed_hex"].get<std::string>());
}

TEST(EventFileWriterTest, FileIsReadableRecordByRecordWhileOpen) {
  testing::ScopedTempDir tmp("lorad_tb");
  const nlohmann::json records = Reference()["records"];
  auto writer = EventFileWriter::Open(tmp.path() / "run" / "network_train");
  ASSERT_TRUE(writer.ok()) << writer.status();
  const std::string name = (*writer)->path().filename().string();
  // events.out.tfevents.<10-digit seconds>.<host>.<pid>.<n>, as tensorboard's EventFileWriter names it.
  EXPECT_TRUE(std::regex_match(name, std::regex(absl::StrCat(R"(events\.out\.tfevents\.\d{10}\..+\.)", ::getpid(),
                                                             R"(\.\d+)"))))
      << name;
  (*writer)->AddScalar("loss/current", 7, 0.125, records["scalar"]["wall_time"].get<double>());
  const std::string png = Unhex(records["image"]["png_hex"]);
  ASSERT_TRUE((*writer)->AddImage("sample_0", 3, png, records["image"]["wall_time"].get<double>()).ok());
  // Not flushed: only the version record is on disk.
  EXPECT_EQ(ReadEvents((*writer)->path()).size(), 1u);
  ASSERT_TRUE((*writer)->Flush().ok());

  // Read while the writer is still open, as after a kill: every flushed record is whole.
  auto raw = ReadRecords((*writer)->path());
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_EQ(raw->size(), 3u);
  tensorboard::Event first;
  ASSERT_TRUE(first.ParseFromString((*raw)[0]));
  EXPECT_EQ(first.file_version(), "brain.Event:2");
  EXPECT_EQ(first.source_metadata().writer(), "lorad-train");
  EXPECT_GT(first.wall_time(), 1.6e9);
  EXPECT_EQ(FrameRecord((*raw)[1]), Unhex(records["scalar"]["framed_hex"]));
  EXPECT_EQ(FrameRecord((*raw)[2]), Unhex(records["image"]["framed_hex"]));

  const fs::path path = (*writer)->path();
  writer->reset();
  EXPECT_EQ(ReadEvents(path).size(), 3u);

  // A second file in the same process gets the next number.
  auto second = EventFileWriter::Open(tmp.path() / "other");
  ASSERT_TRUE(second.ok());
  EXPECT_NE((*second)->path().filename(), path.filename());
}

TEST(EventFileWriterTest, ReaderReportsCorruptionAndTruncation) {
  testing::ScopedTempDir tmp("lorad_tb");
  fs::path path;
  {
    auto writer = EventFileWriter::Open(tmp.path());
    ASSERT_TRUE(writer.ok());
    (*writer)->AddScalar("loss/current", 1, 0.5, 1.0);
    path = (*writer)->path();
  }
  const std::string good = ReadBytes(path);
  ASSERT_EQ(ReadEvents(path).size(), 2u);

  std::string bad_data = good;
  bad_data[bad_data.size() - 6] ^= 0x01;  // inside the last record's data
  WriteBytes(path, bad_data);
  auto records = ReadRecords(path);
  EXPECT_EQ(records.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(records.status().message().find("record 1"), std::string::npos) << records.status();
  EXPECT_NE(records.status().message().find("data checksum"), std::string::npos) << records.status();

  std::string bad_length = good;
  bad_length[0] ^= 0x01;
  WriteBytes(path, bad_length);
  EXPECT_NE(ReadRecords(path).status().message().find("length checksum"), std::string::npos);

  WriteBytes(path, good.substr(0, good.size() - 3));
  records = ReadRecords(path);
  EXPECT_EQ(records.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(records.status().message().find("ends inside"), std::string::npos) << records.status();
}

TEST(EventFileWriterTest, RefusesBytesThatAreNotAPng) {
  testing::ScopedTempDir tmp("lorad_tb");
  auto writer = EventFileWriter::Open(tmp.path());
  ASSERT_TRUE(writer.ok());
  const absl::Status s = (*writer)->AddImage("sample_0", 1, "GIF89a not a png at all, long enough", 1.0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*writer)->Flush().ok());
  EXPECT_EQ(ReadEvents((*writer)->path()).size(), 1u);
}

TEST(EventFileWriterTest, UnwritableLoggingDirNamesTheKey) {
  testing::ScopedTempDir tmp("lorad_tb");
  WriteBytes(tmp.path() / "file", "x");
  auto writer = EventFileWriter::Open(tmp.path() / "file" / "run");
  ASSERT_FALSE(writer.ok());
  EXPECT_NE(writer.status().message().find("logging_dir"), std::string::npos) << writer.status();
}

TEST(PngHeaderTest, SizeAndColorspace) {
  auto header = ReadPngHeader(Unhex(Reference()["records"]["image"]["png_hex"]));
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->width, 3);
  EXPECT_EQ(header->height, 2);
  EXPECT_EQ(header->colorspace, 3);
  EXPECT_FALSE(ReadPngHeader("\x89PNG").ok());
}

// --- kohya's tags (train_network.py generate_step_logs) ---

StepReport Report(std::vector<GroupLr> lrs) {
  StepReport r;
  r.step = 5;
  r.loss = 0.25;
  r.loss_avg = 0.2;
  r.lrs = std::move(lrs);
  return r;
}

TensorBoardSettings Settings(bool unet_only, bool d_lr = false) {
  TensorBoardSettings s;
  s.network_train_unet_only = unet_only;
  s.log_d_lr = d_lr;
  return s;
}

TEST(KohyaTagsTest, TextEncoderAndUnet) {
  const Scalars logs =
      KohyaStepScalars(Report({{"text_encoder", 5e-5, 5e-5}, {"unet", 1e-4, 1e-4}}), Settings(false));
  // The for-else of generate_step_logs adds lr/group1 (and sets lr/textencoder again).
  const Scalars expected = {{"loss/current", 0.25}, {"loss/average", 0.2}, {"lr/textencoder", 5e-5},
                            {"lr/unet", 1e-4},      {"lr/group1", 1e-4}};
  EXPECT_EQ(logs, expected);
}

TEST(KohyaTagsTest, UnetOnly) {
  const Scalars logs = KohyaStepScalars(Report({{"unet", 1e-4, 1e-4}}), Settings(true));
  const Scalars expected = {{"loss/current", 0.25}, {"loss/average", 0.2}, {"lr/unet", 1e-4}, {"lr/group0", 1e-4}};
  EXPECT_EQ(logs, expected);
}

TEST(KohyaTagsTest, ProdigyLogsTheScheduledLrAndDTimesLr) {
  // lr is d*lr (what lorad shows), scheduler_lr what kohya logs as lr/...
  const Scalars logs =
      KohyaStepScalars(Report({{"text_encoder", 3e-6, 1.0}, {"unet", 4e-6, 1.0}}), Settings(false, true));
  const Scalars expected = {{"loss/current", 0.25}, {"loss/average", 0.2},    {"lr/textencoder", 1.0},
                            {"lr/d*lr/textencoder", 3e-6}, {"lr/unet", 1.0},  {"lr/d*lr/unet", 4e-6},
                            {"lr/group1", 1.0},     {"lr/d*lr/group1", 4e-6}};
  EXPECT_EQ(logs, expected);
}

TEST(KohyaTagsTest, LoraPlusGroupsAndMaxNorm) {
  StepReport r = Report({{"unet", 1e-4, 1e-4}, {"unet_plus", 1.6e-3, 1.6e-3}});
  r.max_norm = MaxNormReport{3, 0.5, 0.9};
  const Scalars logs = KohyaStepScalars(r, Settings(true));
  const Scalars expected = {{"loss/current", 0.25},        {"loss/average", 0.2},      {"max_norm/keys_scaled", 3},
                            {"max_norm/max_key_norm", 0.9}, {"norm/avg_key_norm", 0.5}, {"lr/unet", 1e-4},
                            {"lr/unet plus", 1.6e-3},       {"lr/group0", 1e-4},        {"lr/group1", 1.6e-3}};
  EXPECT_EQ(logs, expected);
}

TEST(KohyaTagsTest, DroppedTextEncoderGroupLogsNoTextEncoderLr) {
  const Scalars logs = KohyaStepScalars(Report({{"unet", 1e-4, 1e-4}}), Settings(false));
  const Scalars expected = {{"loss/current", 0.25}, {"loss/average", 0.2}, {"lr/unet", 1e-4}};
  EXPECT_EQ(logs, expected);
}

// --- the config keys ---

constexpr char kRequired[] = "pretrained_model_name_or_path = \"m.safetensors\"\ntrain_data_dir = \"data\"\n";

TEST(TensorBoardConfigTest, WandbIsRefusedNamingTensorBoard) {
  for (const char* value : {"wandb", "all"}) {
    auto config = ParseTrainConfig(absl::StrCat(kRequired, "logging_dir = \"logs\"\nlog_with = \"", value, "\"\n"), {});
    ASSERT_FALSE(config.ok()) << value;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string message(config.status().message());
    EXPECT_NE(message.find("log_with"), std::string::npos) << message;
    EXPECT_NE(message.find("wandb"), std::string::npos) << message;
    EXPECT_NE(message.find("log_with = \"tensorboard\""), std::string::npos) << message;
  }
  auto cli = ParseTrainConfig(kRequired, {{"logging_dir", "logs"}, {"log_with", "wandb"}});
  EXPECT_FALSE(cli.ok());
}

TEST(TensorBoardConfigTest, TensorBoardKeysAreOptionsAndWandbKeysStayQuiet) {
  auto config = ParseTrainConfig(absl::StrCat(kRequired,
                                              "[logging]\nlogging_dir = \"logs\"\nlog_with = \"tensorboard\"\n"
                                              "log_prefix = \"style_\"\nlog_tracker_name = \"mine\"\n"
                                              "wandb_api_key = \"k\"\nwandb_run_name = \"r\"\nlog_config = true\n"),
                                 {});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->warnings.empty()) << config->warnings[0];
  EXPECT_EQ(config->logging_dir, "logs");
  EXPECT_EQ(config->log_prefix, "style_");
  auto settings = TensorBoardSettingsFor(*config);
  ASSERT_TRUE(settings.has_value());
  EXPECT_EQ(settings->tracker_name, "mine");
  EXPECT_EQ(EffectiveOptions(*config).at("log_with"), "tensorboard");
}

TEST(TensorBoardConfigTest, LoggingDirAloneMeansTensorBoard) {
  // train_util.py prepare_accelerator: log_with defaults to tensorboard when logging_dir is set.
  auto config = ParseTrainConfig(absl::StrCat(kRequired, "logging_dir = \"logs\"\noptimizer_type = \"Prodigy\"\n"), {});
  ASSERT_TRUE(config.ok()) << config.status();
  auto settings = TensorBoardSettingsFor(*config);
  ASSERT_TRUE(settings.has_value());
  EXPECT_EQ(settings->tracker_name, "network_train");
  EXPECT_TRUE(settings->log_d_lr);
  EXPECT_FALSE(settings->network_train_unet_only);

  auto none = ParseTrainConfig(kRequired, {});
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(TensorBoardSettingsFor(*none).has_value());

  auto adamw = ParseTrainConfig(absl::StrCat(kRequired, "logging_dir = \"l\"\nnetwork_train_unet_only = true\n"), {});
  ASSERT_TRUE(adamw.ok());
  EXPECT_FALSE(TensorBoardSettingsFor(*adamw)->log_d_lr);
  EXPECT_TRUE(TensorBoardSettingsFor(*adamw)->network_train_unet_only);
  auto dadapt = ParseTrainConfig(absl::StrCat(kRequired, "logging_dir = \"l\"\noptimizer_type = \"DAdaptAdam\"\n"), {});
  ASSERT_TRUE(dadapt.ok());
  EXPECT_TRUE(TensorBoardSettingsFor(*dadapt)->log_d_lr);
}

TEST(TensorBoardConfigTest, BadLoggingValuesNameTheKey) {
  auto no_dir = ParseTrainConfig(absl::StrCat(kRequired, "log_with = \"tensorboard\"\n"), {});
  ASSERT_FALSE(no_dir.ok());
  EXPECT_NE(no_dir.status().message().find("logging_dir"), std::string::npos) << no_dir.status();
  auto other = ParseTrainConfig(absl::StrCat(kRequired, "log_with = \"comet\"\n"), {});
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find("tensorboard, wandb, all"), std::string::npos) << other.status();
  for (const char* prefix : {"../up", "a/b", ".."}) {
    auto bad = ParseTrainConfig(absl::StrCat(kRequired, "logging_dir = \"l\"\nlog_prefix = \"", prefix, "\"\n"), {});
    ASSERT_FALSE(bad.ok()) << prefix;
    EXPECT_NE(bad.status().message().find("log_prefix"), std::string::npos) << bad.status();
  }
  auto bad_tracker = ParseTrainConfig(absl::StrCat(kRequired, "logging_dir = \"l\"\nlog_tracker_name = \"..\"\n"), {});
  EXPECT_FALSE(bad_tracker.ok());
}

// --- the observer ---

TEST(TensorBoardObserverTest, RunFolderIsPrefixPlusLocalTimestamp) {
  const char* old_tz = std::getenv("TZ");
  const std::string saved = old_tz ? old_tz : "";
  ::setenv("TZ", "UTC", 1);
  ::tzset();
  TensorBoardSettings settings;
  settings.logging_dir = "/data/jobs/7/logs";
  settings.log_prefix = "style_";
  EXPECT_EQ(TensorBoardRunDir(settings, 1700000000), fs::path("/data/jobs/7/logs/style_20231114221320/network_train"));
  if (old_tz) {
    ::setenv("TZ", saved.c_str(), 1);
  } else {
    ::unsetenv("TZ");
  }
  ::tzset();
}

TEST(TensorBoardObserverTest, WritesStepsEpochsAndPreviews) {
  testing::ScopedTempDir tmp("lorad_tb");
  const std::string png = Unhex(Reference()["records"]["image"]["png_hex"]);
  WriteBytes(tmp.path() / "sample.png", png);
  TensorBoardSettings settings;
  settings.logging_dir = tmp.path() / "logs";
  settings.log_prefix = "p_";
  settings.network_train_unet_only = true;
  const std::time_t now = std::time(nullptr);
  auto observer = TensorBoardObserver::Create(settings, now);
  ASSERT_TRUE(observer.ok()) << observer.status();
  const fs::path file = (*observer)->file();
  EXPECT_EQ(file.parent_path(), TensorBoardRunDir(settings, now));

  for (int64_t step = 1; step <= 2; ++step) {
    StepReport r = Report({{"unet", 1e-4 * static_cast<double>(step), 1e-4 * static_cast<double>(step)}});
    r.step = step;
    r.loss = 0.1 * static_cast<double>(step);
    (*observer)->OnStep(r);
  }
  (*observer)->OnEpochEnd(1, 0.15);
  (*observer)->OnSample({(tmp.path() / "sample.png").string(), 2, 1, "a cat", "ddim", 1.0});
  // A preview that cannot be read is reported, and logging goes on.
  (*observer)->OnSample({(tmp.path() / "missing.png").string(), 2, 0, "a dog", "ddim", 1.0});
  EXPECT_FALSE((*observer)->status().ok());
  EXPECT_NE((*observer)->status().message().find("missing.png"), std::string::npos);

  // Everything is on disk before the observer goes away.
  const std::vector<tensorboard::Event> events = ReadEvents(file);
  ASSERT_EQ(events.size(), 1u + 2 * 4 + 1 + 1);
  std::vector<std::string> tags;
  for (size_t i = 1; i < events.size(); ++i) {
    ASSERT_EQ(events[i].summary().value_size(), 1);
    const auto& value = events[i].summary().value(0);
    tags.push_back(absl::StrCat(value.tag(), "@", events[i].step()));
  }
  const std::vector<std::string> expected = {
      "loss/current@1", "loss/average@1", "lr/unet@1", "lr/group0@1", "loss/current@2", "loss/average@2",
      "lr/unet@2",      "lr/group0@2",    "loss/epoch_average@1",     "sample_1@2"};
  EXPECT_EQ(tags, expected);
  EXPECT_FLOAT_EQ(events[5].summary().value(0).simple_value(), 0.2f);
  EXPECT_FLOAT_EQ(events[7].summary().value(0).simple_value(), 2e-4f);
  EXPECT_FLOAT_EQ(events[9].summary().value(0).simple_value(), 0.15f);
  const auto& image = events[10].summary().value(0).image();
  EXPECT_EQ(image.width(), 3);
  EXPECT_EQ(image.height(), 2);
  EXPECT_EQ(image.colorspace(), 3);
  EXPECT_EQ(image.encoded_image_string(), png);
}

}  // namespace
}  // namespace lorad::train
