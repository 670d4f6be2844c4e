// loractl's named servers (issue 13), as kubectl contexts or gh hosts:
// $XDG_CONFIG_HOME/lorad/config.toml (default ~/.config/lorad/config.toml)
//
//   default = "runpod1"
//   [profiles.runpod1]
//   address = "203.0.113.7:50051"
//   token_file = "~/.config/lorad/runpod1.token"   # or token = "..."
//   tls_ca = "~/.config/lorad/runpod1-ca.pem"      # implies TLS; tls = true: system roots
//
// Precedence, field by field: flags, then LORAD_SERVER / LORAD_TOKEN, then
// the profile, then the defaults. The profile is --profile, else
// LORAD_PROFILE, else `default` unless --server / LORAD_SERVER name a server
// (a profile's token never goes to a server it does not name). A token file,
// or the config file when it holds a token itself, readable by anyone but its
// owner gets a warning naming the file and the chmod to run.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"

namespace lorad::client {

struct Profile {
  std::string name;
  std::string address;
  std::string token;
  std::filesystem::path token_file;  // resolved ("~" and relative to the config file)
  bool tls = false;
  std::filesystem::path tls_ca;  // resolved likewise
};

struct ProfileFile {
  std::filesystem::path path;
  std::string default_profile;
  std::map<std::string, Profile> profiles;
  bool holds_token = false;  // some profile has an inline token
};

// What the environment says; FromEnvironment reads the real one.
struct ClientEnvironment {
  std::string server;       // LORAD_SERVER
  std::string token;        // LORAD_TOKEN
  std::string profile;      // LORAD_PROFILE
  std::string config_home;  // XDG_CONFIG_HOME
  std::string home;         // HOME
  static ClientEnvironment FromEnvironment();
};

// What the command line set (empty / nullopt: not given).
struct ConnectionFlags {
  std::string server;
  std::string token;
  std::string profile;
  std::optional<bool> tls;
  std::string ca_file;
  std::optional<std::chrono::milliseconds> timeout;
};

// $XDG_CONFIG_HOME/lorad/config.toml, else $HOME/.config/lorad/config.toml.
std::filesystem::path ProfileConfigPath(const ClientEnvironment& env);

// Reads a profile file. NotFound when it does not exist; InvalidArgument
// naming the file and key for bad content (unknown keys included).
absl::StatusOr<ProfileFile> LoadProfileFile(const std::filesystem::path& path, const ClientEnvironment& env);

// The connection loractl uses (precedence above); `warnings` gets the
// permission warnings. Errors: a named profile that does not exist (listing
// those that do), an unreadable token file, a broken config file.
absl::StatusOr<Connection> ResolveConnection(const ConnectionFlags& flags, const ClientEnvironment& env,
                                             std::vector<std::string>* warnings);

}  // namespace lorad::client
