#include "client/profile.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>

#include <toml++/toml.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/base/toml.h"

namespace lorad::client {
namespace fs = std::filesystem;

namespace {

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

// "~/x" from $HOME, a relative path from the config file's folder.
fs::path ResolvePath(const std::string& text, const fs::path& config_dir, const ClientEnvironment& env) {
  if (text.rfind("~/", 0) == 0 && !env.home.empty()) return fs::path(env.home) / text.substr(2);
  const fs::path path(text);
  return path.is_relative() ? config_dir / path : path;
}

// A warning when `path` can be read or written by anyone but its owner.
void CheckPrivate(const fs::path& path, const std::string& what, std::vector<std::string>* warnings) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || (st.st_mode & 077) == 0) return;
  warnings->push_back(absl::StrFormat("%s %s holds a token but has mode %04o (others can read it); run: chmod 600 %s",
                                      what, path.string(), st.st_mode & 07777, path.string()));
}

absl::StatusOr<std::string> ReadToken(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read token_file ", path.string()));
  std::string token(std::istreambuf_iterator<char>(in), {});
  token = std::string(absl::StripAsciiWhitespace(token));
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat("token_file ", path.string(), " is empty"));
  return token;
}

}  // namespace

ClientEnvironment ClientEnvironment::FromEnvironment() {
  return ClientEnvironment{Env("LORAD_SERVER"), Env("LORAD_TOKEN"), Env("LORAD_PROFILE"), Env("XDG_CONFIG_HOME"),
                           Env("HOME")};
}

fs::path ProfileConfigPath(const ClientEnvironment& env) {
  // XDG: an unset or relative XDG_CONFIG_HOME is ignored.
  if (!env.config_home.empty() && fs::path(env.config_home).is_absolute()) {
    return fs::path(env.config_home) / "lorad" / "config.toml";
  }
  return fs::path(env.home.empty() ? "." : env.home) / ".config" / "lorad" / "config.toml";
}

absl::StatusOr<ProfileFile> LoadProfileFile(const fs::path& path, const ClientEnvironment& env) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat("no loractl config file at ", path.string()));
  }
  auto parsed = ParseTomlFile(path);
  if (!parsed.ok()) return parsed.status();
  ProfileFile file;
  file.path = path;
  const fs::path dir = path.parent_path();
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": ", what));
  };
  for (const auto& [raw_key, node] : *parsed) {
    const std::string key(raw_key.str());
    if (key == "default") {
      auto name = node.value_exact<std::string>();
      if (!name) return bad("default must be a profile name (a string)");
      file.default_profile = *name;
    } else if (key == "profiles") {
      const toml::table* profiles = node.as_table();
      if (profiles == nullptr) return bad("profiles must be tables: [profiles.NAME]");
      for (const auto& [raw_name, profile_node] : *profiles) {
        const std::string name(raw_name.str());
        const toml::table* table = profile_node.as_table();
        if (table == nullptr) return bad(absl::StrCat("profiles.", name, " must be a table"));
        Profile profile;
        profile.name = name;
        for (const auto& [raw_field, value] : *table) {
          const std::string field(raw_field.str());
          const std::string where = absl::StrCat("profiles.", name, ".", field);
          if (field == "tls") {
            auto flag = value.value_exact<bool>();
            if (!flag) return bad(absl::StrCat(where, " must be true or false"));
            profile.tls = *flag;
            continue;
          }
          auto text = value.value_exact<std::string>();
          if (!text) return bad(absl::StrCat(where, " must be a string"));
          if (field == "address" || field == "server") {
            profile.address = *text;
          } else if (field == "token") {
            profile.token = *text;
            file.holds_token = true;
          } else if (field == "token_file") {
            profile.token_file = ResolvePath(*text, dir, env);
          } else if (field == "tls_ca") {
            profile.tls_ca = ResolvePath(*text, dir, env);
            profile.tls = true;
          } else {
            return bad(absl::StrCat("unknown key ", where, " (known: address, token, token_file, tls, tls_ca)"));
          }
        }
        if (!profile.token.empty() && !profile.token_file.empty()) {
          return bad(absl::StrCat("profiles.", name, " sets both token and token_file; keep one"));
        }
        file.profiles[name] = std::move(profile);
      }
    } else {
      return bad(absl::StrCat("unknown key '", key, "' (known: default, [profiles.NAME])"));
    }
  }
  if (!file.default_profile.empty() && !file.profiles.contains(file.default_profile)) {
    return bad(absl::StrCat("default = \"", file.default_profile, "\" names no [profiles.", file.default_profile,
                            "] table"));
  }
  return file;
}

absl::StatusOr<Connection> ResolveConnection(const ConnectionFlags& flags, const ClientEnvironment& env,
                                             std::vector<std::string>* warnings) {
  const std::string chosen = !flags.profile.empty() ? flags.profile : env.profile;
  const bool server_given = !flags.server.empty() || !env.server.empty();
  Connection connection;
  connection.server.clear();
  if (!chosen.empty() || !server_given) {
    const fs::path path = ProfileConfigPath(env);
    auto file = LoadProfileFile(path, env);
    if (!file.ok() && (file.status().code() != absl::StatusCode::kNotFound || !chosen.empty())) {
      return file.status();
    }
    const std::string name = chosen.empty() && file.ok() ? file->default_profile : chosen;
    if (file.ok() && !name.empty()) {
      auto found = file->profiles.find(name);
      if (found == file->profiles.end()) {
        std::vector<std::string> names;
        for (const auto& entry : file->profiles) names.push_back(entry.first);
        return absl::NotFoundError(absl::StrCat("no profile '", name, "' in ", path.string(), " (it has: ",
                                                names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
      }
      const Profile& profile = found->second;
      connection.server = profile.address;
      connection.tls = profile.tls;
      connection.ca_file = profile.tls_ca.string();
      if (file->holds_token) CheckPrivate(path, "config file", warnings);
      if (!profile.token_file.empty()) {
        auto token = ReadToken(profile.token_file);
        if (!token.ok()) return token.status();
        connection.token = *token;
        CheckPrivate(profile.token_file, "token file", warnings);
      } else {
        connection.token = profile.token;
      }
    }
  }
  // Environment over the profile, flags over both.
  if (!env.server.empty()) connection.server = env.server;
  if (!env.token.empty()) connection.token = env.token;
  if (!flags.server.empty()) connection.server = flags.server;
  if (!flags.token.empty()) connection.token = flags.token;
  if (flags.tls) connection.tls = *flags.tls;
  if (!flags.ca_file.empty()) connection.ca_file = flags.ca_file;
  if (flags.timeout) connection.timeout = *flags.timeout;
  if (connection.server.empty()) connection.server = "127.0.0.1:50051";
  return connection;
}

}  // namespace lorad::client
