#include "core/data/cache.h"

#include "absl/strings/str_cat.h"
#include "core/base/logging.h"
#include "core/base/status_macros.h"
#include "core/base/sha256.h"
#include "core/io/safetensors.h"

namespace lorad::data {

namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<TensorCache>> TensorCache::Create(std::string kind, std::optional<fs::path> dir) {
  std::unique_ptr<TensorCache> c(new TensorCache());
  c->kind_ = std::move(kind);
  if (dir.has_value()) {
    std::error_code ec;
    fs::create_directories(*dir, ec);
    if (!fs::is_directory(*dir)) {
      return absl::InvalidArgumentError(absl::StrCat("cache dir '", dir->string(), "' cannot be created (",
                                                     ec.message(), "); choose a writable folder"));
    }
    c->dir_ = std::move(dir);
  }
  return c;
}

fs::path TensorCache::PathFor(const std::string& key_text) const {
  return dir_.has_value() ? *dir_ / (kind_ + "_" + Sha256Hex(key_text) + ".safetensors") : fs::path();
}

std::optional<TensorCache::Entry> TensorCache::Lookup(const std::string& key_text) {
  {
    absl::MutexLock lock(&mu_);
    auto it = memory_.find(key_text);
    if (it != memory_.end()) {
      ++counters_.reused_memory;
      return it->second;
    }
  }
  if (!dir_.has_value()) return std::nullopt;
  const fs::path path = PathFor(key_text);
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  std::string problem;
  Entry entry;
  auto file = io::SafetensorsFile::Open(path);
  if (!file.ok()) {
    problem = std::string(file.status().message());
  } else {
    auto key_it = (*file)->metadata().find("lorad_cache_key");
    if (key_it == (*file)->metadata().end() || key_it->second != key_text) {
      problem = "its stored key does not match (hash collision or foreign file)";
    } else {
      for (const auto& name : (*file)->Names()) {
        auto t = (*file)->Get(name, torch::kFloat32);
        if (!t.ok()) {
          problem = std::string(t.status().message());
          break;
        }
        if (!torch::isfinite(*t).all().item<bool>()) {
          problem = absl::StrCat("tensor '", name, "' holds NaN/Inf");
          break;
        }
        entry[name] = t->clone();  // detach from the mapping: the file may be replaced later
      }
      if (problem.empty() && entry.empty()) problem = "it holds no tensors";
    }
  }
  absl::MutexLock lock(&mu_);
  if (!problem.empty()) {
    Logger("data")->warn("{} cache file '{}' is corrupt ({}); recomputing it", kind_, path.string(), problem);
    ++counters_.corrupt_recomputed;
    return std::nullopt;
  }
  ++counters_.reused_disk;
  return entry;
}

absl::Status TensorCache::Store(const std::string& key_text, const Entry& entry) {
  if (!dir_.has_value()) {
    absl::MutexLock lock(&mu_);
    memory_[key_text] = entry;
    return absl::OkStatus();
  }
  io::NamedTensors tensors;
  for (const auto& [name, t] : entry) tensors.emplace_back(name, t.detach().to(torch::kCPU).contiguous());
  return io::WriteSafetensors(PathFor(key_text), tensors, {{"lorad_cache_key", key_text}});
}

void TensorCache::CountComputed(int64_t n) {
  absl::MutexLock lock(&mu_);
  counters_.computed += n;
}

CacheCounters TensorCache::counters() const {
  absl::MutexLock lock(&mu_);
  return counters_;
}

absl::StatusOr<std::unique_ptr<LatentCache>> LatentCache::Create(const LatentCacheOptions& options) {
  if (options.vae_identity.empty()) {
    return absl::InvalidArgumentError(
        "latent cache needs a vae_identity (e.g. the VAE file's hash) so another VAE never reuses these latents");
  }
  auto c = std::make_unique<LatentCache>();
  c->options_ = options;
  ASSIGN_OR_RETURN(c->store_, TensorCache::Create("latent", options.cache_dir));
  return c;
}

std::string LatentCache::KeyText(const std::string& content_sha256, int bucket_w, int bucket_h, int crop_left,
                                 int crop_top, bool flip) const {
  return absl::StrCat("latent-v1|image=", content_sha256, "|bucket=", bucket_w, "x", bucket_h, "|crop=", crop_left,
                      ",", crop_top, "|flip=", flip ? 1 : 0, "|vae=", options_.vae_identity);
}

std::optional<torch::Tensor> LatentCache::Lookup(const std::string& key_text) {
  auto e = store_->Lookup(key_text);
  if (!e.has_value()) return std::nullopt;
  return e->at("latent");
}

absl::Status LatentCache::Store(const std::string& key_text, const torch::Tensor& latent) {
  return store_->Store(key_text, {{"latent", latent}});
}

absl::StatusOr<std::unique_ptr<TextEncoderCache>> TextEncoderCache::Create(std::string encoder_identity,
                                                                           std::optional<fs::path> dir) {
  if (encoder_identity.empty()) {
    return absl::InvalidArgumentError("text-encoder cache needs an encoder identity (weights hash, clip_skip, ...)");
  }
  auto c = std::unique_ptr<TextEncoderCache>(new TextEncoderCache());
  c->identity_ = std::move(encoder_identity);
  ASSIGN_OR_RETURN(c->store_, TensorCache::Create("text", std::move(dir)));
  return c;
}

absl::StatusOr<std::map<std::string, torch::Tensor>> TextEncoderCache::Get(const std::vector<std::string>& captions,
                                                                           const TextEncoderFn& encode) {
  if (captions.empty()) return std::map<std::string, torch::Tensor>();
  std::vector<std::optional<TensorCache::Entry>> found(captions.size());
  std::vector<std::string> missing;
  std::map<std::string, size_t> missing_index;
  auto key_of = [&](const std::string& c) { return absl::StrCat("text-v1|enc=", identity_, "|caption=", c); };
  for (size_t i = 0; i < captions.size(); ++i) {
    found[i] = store_->Lookup(key_of(captions[i]));
    if (!found[i].has_value() && !missing_index.contains(captions[i])) {
      missing_index[captions[i]] = missing.size();
      missing.push_back(captions[i]);
    }
  }
  if (!missing.empty()) {
    ASSIGN_OR_RETURN(auto outputs, encode(missing));
    store_->CountComputed(static_cast<int64_t>(missing.size()));
    for (size_t m = 0; m < missing.size(); ++m) {
      TensorCache::Entry e;
      for (const auto& [name, t] : outputs) {
        if (t.dim() == 0 || t.size(0) != static_cast<int64_t>(missing.size())) {
          return absl::InvalidArgumentError(absl::StrCat("text encoder output '", name, "' has batch size ",
                                                         t.dim() ? t.size(0) : 0, ", expected ", missing.size()));
        }
        e[name] = t[static_cast<int64_t>(m)].detach().clone();
      }
      RETURN_IF_ERROR(store_->Store(key_of(missing[m]), e));
      for (size_t i = 0; i < captions.size(); ++i) {
        if (!found[i].has_value() && captions[i] == missing[m]) found[i] = e;
      }
    }
  }
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, unused] : *found[0]) {
    std::vector<torch::Tensor> parts;
    for (const auto& f : found) parts.push_back(f->at(name));
    out[name] = torch::stack(parts);
  }
  return out;
}

}  // namespace lorad::data
