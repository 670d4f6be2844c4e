// loractl profiles (issue 13): selection, precedence, the 0600 warning.
#include "client/profile.h"

#include <sys/stat.h>

#include <fstream>

#include <gtest/gtest.h>

#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::client {
namespace {

namespace fs = std::filesystem;

class ProfileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_.home = (dir_.path() / "home").string();
    env_.config_home = (dir_.path() / "xdg").string();
    fs::create_directories(dir_.path() / "xdg" / "lorad");
    token_file_ = dir_.path() / "xdg" / "lorad" / "runpod1.token";
    Write(token_file_, "tok-from-file\n", 0600);
    Write(config_path(),
          "default = \"runpod1\"\n"
          "[profiles.runpod1]\n"
          "address = \"10.0.0.1:50051\"\n"
          "token_file = \"runpod1.token\"\n"  // relative to the config file
          "tls_ca = \"ca.pem\"\n"
          "[profiles.vast]\n"
          "address = \"10.0.0.2:443\"\n"
          "tls = true\n",
          0644);
  }
  static void Write(const fs::path& path, const std::string& text, mode_t mode) {
    std::ofstream(path) << text;
    ::chmod(path.c_str(), mode);
  }
  fs::path config_path() const { return dir_.path() / "xdg" / "lorad" / "config.toml"; }
  absl::StatusOr<Connection> Resolve(const ConnectionFlags& flags) {
    warnings_.clear();
    return ResolveConnection(flags, env_, &warnings_);
  }

  lorad::testing::ScopedTempDir dir_{"lorad_profile_test"};
  ClientEnvironment env_;
  fs::path token_file_;
  std::vector<std::string> warnings_;
};

TEST_F(ProfileTest, ConfigPathFollowsXdgConfigHome) {
  EXPECT_EQ(ProfileConfigPath(env_), config_path());
  ClientEnvironment no_xdg = env_;
  no_xdg.config_home.clear();
  EXPECT_EQ(ProfileConfigPath(no_xdg), fs::path(env_.home) / ".config" / "lorad" / "config.toml");
  no_xdg.config_home = "relative/dir";  // not absolute: ignored, as the XDG spec says
  EXPECT_EQ(ProfileConfigPath(no_xdg), fs::path(env_.home) / ".config" / "lorad" / "config.toml");
}

TEST_F(ProfileTest, SelectsTheDefaultANamedOneOrLoradProfile) {
  auto connection = Resolve({});
  ASSERT_TRUE(connection.ok()) << connection.status();
  EXPECT_EQ(connection->server, "10.0.0.1:50051");
  EXPECT_EQ(connection->token, "tok-from-file");
  EXPECT_TRUE(connection->tls);
  EXPECT_EQ(connection->ca_file, (config_path().parent_path() / "ca.pem").string());
  EXPECT_TRUE(warnings_.empty());

  ConnectionFlags named;
  named.profile = "vast";
  connection = Resolve(named);
  ASSERT_TRUE(connection.ok());
  EXPECT_EQ(connection->server, "10.0.0.2:443");
  EXPECT_TRUE(connection->tls);
  EXPECT_TRUE(connection->ca_file.empty());
  EXPECT_TRUE(connection->token.empty());

  env_.profile = "vast";  // LORAD_PROFILE
  connection = Resolve({});
  ASSERT_TRUE(connection.ok());
  EXPECT_EQ(connection->server, "10.0.0.2:443");
  named.profile = "runpod1";  // --profile beats LORAD_PROFILE
  connection = Resolve(named);
  ASSERT_TRUE(connection.ok());
  EXPECT_EQ(connection->server, "10.0.0.1:50051");

  named.profile = "lambda";
  connection = Resolve(named);
  ASSERT_FALSE(connection.ok());
  EXPECT_EQ(connection.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(connection.status().message().find("it has: runpod1, vast"), std::string::npos)
      << connection.status().message();
}

TEST_F(ProfileTest, FlagsBeatTheEnvironmentWhichBeatsTheProfile) {
  ConnectionFlags flags;
  flags.profile = "runpod1";
  env_.token = "tok-from-env";
  auto connection = Resolve(flags);
  ASSERT_TRUE(connection.ok());
  EXPECT_EQ(connection->server, "10.0.0.1:50051");  // from the profile
  EXPECT_EQ(connection->token, "tok-from-env");     // env over the profile
  env_.server = "10.9.9.9:1";
  flags.token = "tok-from-flag";
  flags.tls = false;
  connection = Resolve(flags);
  ASSERT_TRUE(connection.ok());
  EXPECT_EQ(connection->server, "10.9.9.9:1");  // env over the profile
  EXPECT_EQ(connection->token, "tok-from-flag");  // flag over env
  EXPECT_FALSE(connection->tls);
  flags.server = "127.0.0.1:7";
  connection = Resolve(flags);
  ASSERT_TRUE(connection.ok());
  EXPECT_EQ(connection->server, "127.0.0.1:7");  // flag over env
}

TEST_F(ProfileTest, AnExplicitServerSkipsTheDefaultProfile) {
  // The default profile's token must not go to a server it does not name.
  ConnectionFlags flags;
  flags.server = "127.0.0.1:9";
  auto connection = Resolve(flags);
  ASSERT_TRUE(connection.ok());
  EXPECT_EQ(connection->server, "127.0.0.1:9");
  EXPECT_TRUE(connection->token.empty());
  EXPECT_FALSE(connection->tls);
  env_.server = "127.0.0.1:8";
  connection = Resolve({});
  ASSERT_TRUE(connection.ok());
  EXPECT_EQ(connection->server, "127.0.0.1:8");
  EXPECT_TRUE(connection->token.empty());
}

TEST_F(ProfileTest, NoConfigFileMeansDefaultsUnlessAProfileIsNamed) {
  fs::remove(config_path());
  auto connection = Resolve({});
  ASSERT_TRUE(connection.ok());
  EXPECT_EQ(connection->server, "127.0.0.1:50051");
  ConnectionFlags flags;
  flags.profile = "runpod1";
  connection = Resolve(flags);
  ASSERT_FALSE(connection.ok());
  EXPECT_NE(connection.status().message().find(config_path().string()), std::string::npos);
}

TEST_F(ProfileTest, WarnsWhenATokenIsReadableByOthers) {
  ::chmod(token_file_.c_str(), 0644);
  auto connection = Resolve({});
  ASSERT_TRUE(connection.ok());
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_NE(warnings_[0].find(token_file_.string()), std::string::npos) << warnings_[0];
  EXPECT_NE(warnings_[0].find("chmod 600 " + token_file_.string()), std::string::npos) << warnings_[0];
  EXPECT_NE(warnings_[0].find("0644"), std::string::npos) << warnings_[0];

  // A token written in the config file itself: the config file must be private.
  ::chmod(token_file_.c_str(), 0600);
  Write(config_path(), "default = \"a\"\n[profiles.a]\naddress = \"h:1\"\ntoken = \"inline\"\n", 0640);
  connection = Resolve({});
  ASSERT_TRUE(connection.ok());
  EXPECT_EQ(connection->token, "inline");
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_NE(warnings_[0].find("chmod 600 " + config_path().string()), std::string::npos) << warnings_[0];
  ::chmod(config_path().c_str(), 0600);
  ASSERT_TRUE(Resolve({}).ok());
  EXPECT_TRUE(warnings_.empty());
}

TEST_F(ProfileTest, BadFilesAreRefusedNamingTheKey) {
  Write(config_path(), "[profiles.a]\naddress = \"h:1\"\nadress = \"typo\"\n", 0600);
  ConnectionFlags flags;
  flags.profile = "a";
  auto connection = Resolve(flags);
  ASSERT_FALSE(connection.ok());
  EXPECT_NE(connection.status().message().find("profiles.a.adress"), std::string::npos);
  Write(config_path(), "default = \"b\"\n[profiles.a]\naddress = \"h:1\"\n", 0600);
  EXPECT_FALSE(Resolve({}).ok());
  Write(config_path(), "[profiles.a]\naddress = \"h:1\"\ntoken = \"x\"\ntoken_file = \"f\"\n", 0600);
  EXPECT_FALSE(Resolve(flags).ok());
  Write(config_path(), "[profiles.a]\naddress = \"h:1\"\ntoken_file = \"missing.token\"\n", 0600);
  connection = Resolve(flags);
  ASSERT_FALSE(connection.ok());
  EXPECT_NE(connection.status().message().find("missing.token"), std::string::npos);
}

}  // namespace
}  // namespace lorad::client
