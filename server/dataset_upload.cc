#include "server/dataset_upload.h"

#include <fstream>
#include <map>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "server/paths.h"
#include "core/base/sha256.h"
#include "spdlog/spdlog.h"

namespace lorad::server {
namespace fs = std::filesystem;
namespace {

bool IsImage(const fs::path& path) {
  const std::string ext = absl::AsciiStrToLower(path.extension().string());
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".webp" || ext == ".bmp";
}

class DatasetUpload final : public grpc::ServerReadReactor<lorad::v1::UploadDatasetRequest> {
 public:
  DatasetUpload(const ServerConfig* config, UploadBudget* budget, absl::Mutex* datasets_mu,
                storage::JobStore* store, lorad::v1::Dataset* response)
      : config_(config), budget_(budget), datasets_mu_(datasets_mu), store_(store), response_(response) {
    std::random_device rd;
    incoming_ = config_->datasets_root / absl::StrCat(".incoming-", rd(), rd());
    std::error_code ec;
    fs::create_directories(incoming_, ec);
    if (ec) {
      Fail(grpc::StatusCode::INTERNAL, absl::StrCat("cannot create ", incoming_.string(), ": ", ec.message()));
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Complete();  // the client closed its side: all files are in
      return;
    }
    grpc::Status status = Consume();
    if (!status.ok()) {
      Fail(status.error_code(), status.error_message());
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override {
    ReleaseDisk();
    delete this;
  }

 private:
  grpc::Status Consume() {
    if (request_.has_header()) {
      if (saw_header_ || !files_.empty()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the upload header must come first, once");
      }
      saw_header_ = true;
      name_ = request_.header().name();
      if (request_.header().total_bytes() > config_->max_upload_bytes) {
        return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            absl::StrCat("dataset of ", request_.header().total_bytes(),
                                         " bytes exceeds the daemon's limit of ", config_->max_upload_bytes,
                                         " bytes (max_upload_bytes in lorad.toml)"));
      }
      return grpc::Status::OK;
    }
    if (!request_.has_chunk()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty upload message");
    }
    const auto& chunk = request_.chunk();
    if (absl::Status valid = ValidateRelativePath(chunk.path()); !valid.ok()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(valid.message()));
    }
    total_bytes_ += static_cast<int64_t>(chunk.data().size());
    if (total_bytes_ > config_->max_upload_bytes) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat("upload exceeds the daemon's limit of ", config_->max_upload_bytes,
                                       " bytes (max_upload_bytes in lorad.toml)"));
    }
    if (absl::Status room = budget_->Reserve(static_cast<int64_t>(chunk.data().size())); !room.ok()) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, std::string(room.message()));
    }
    reserved_ += static_cast<int64_t>(chunk.data().size());
    if (chunk.path() != current_path_) {
      FinishCurrentFile();
      if (files_.count(chunk.path())) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            absl::StrCat("file ", chunk.path(), " was sent twice or in non-consecutive parts"));
      }
      if (static_cast<int>(files_.size()) >= config_->max_upload_files) {
        return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            absl::StrCat("more than ", config_->max_upload_files, " files in one dataset"));
      }
      const fs::path target = incoming_ / chunk.path();
      std::error_code ec;
      fs::create_directories(target.parent_path(), ec);
      if (ec || !IsWithin(incoming_, target)) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            absl::StrCat("cannot place ", chunk.path(), " inside the dataset"));
      }
      out_.open(target, std::ios::binary | std::ios::trunc);
      if (!out_) {
        return grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat("cannot write ", target.string()));
      }
      current_path_ = chunk.path();
      hash_ = std::make_unique<Sha256>();
      files_[current_path_] = "";
    }
    out_.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    hash_->Update(chunk.data());
    if (!out_) return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "disk write failed (disk full?)");
    return grpc::Status::OK;
  }

  void FinishCurrentFile() {
    if (current_path_.empty()) return;
    out_.close();
    files_[current_path_] = hash_->HexDigest();
    current_path_.clear();
  }

  void Complete() {
    FinishCurrentFile();
    if (files_.empty()) {
      Fail(grpc::StatusCode::INVALID_ARGUMENT, "the upload contained no files");
      return;
    }
    Sha256 id_hash;
    int images = 0;
    for (const auto& [path, sha] : files_) {  // std::map: sorted by path
      id_hash.Update(absl::StrCat(path, "\t", sha, "\n"));
      images += IsImage(path) ? 1 : 0;
    }
    const std::string id = id_hash.HexDigest().substr(0, 32);
    const fs::path final_dir = config_->datasets_root / id;
    absl::StatusOr<storage::DatasetRecord> stored = absl::UnknownError("not stored");
    {
      // A delete of the same dataset must not hide final_dir between the check and the record.
      absl::ReaderMutexLock datasets_lock(datasets_mu_);
      std::error_code ec;
      if (!fs::exists(final_dir)) fs::rename(incoming_, final_dir, ec);
      if (ec) {
        stored = absl::InternalError(absl::StrCat("cannot store dataset: ", ec.message()));
      } else {
        storage::DatasetRecord record{id, name_.empty() ? id.substr(0, 12) : name_, final_dir.string(),
                                      total_bytes_, static_cast<int>(files_.size()), images, 0};
        stored = store_->PutDataset(record);
      }
    }
    if (!stored.ok()) {
      Fail(static_cast<grpc::StatusCode>(stored.status().code()), std::string(stored.status().message()));
      return;
    }
    ToProto(*stored, response_);
    spdlog::info("dataset {} stored ({} files, {} bytes)", id, files_.size(), total_bytes_);
    ReleaseDisk();
    Finish(grpc::Status::OK);
  }

  void Fail(grpc::StatusCode code, const std::string& message) {
    ReleaseDisk();
    Finish(grpc::Status(code, message));
  }

  // Before Finish, not in OnDone: a client that saw this call end must find
  // its folder gone and its share of the budget free for its next upload.
  void ReleaseDisk() {
    if (out_.is_open()) out_.close();
    std::error_code ec;
    if (!incoming_.empty()) fs::remove_all(incoming_, ec);  // gone already when it became the dataset
    incoming_.clear();
    budget_->Release(reserved_);
    reserved_ = 0;
  }

  const ServerConfig* config_;
  UploadBudget* budget_;
  absl::Mutex* datasets_mu_;  // the service's; see LoradService::datasets_mu_
  int64_t reserved_ = 0;  // this upload's share of budget_
  storage::JobStore* store_;
  lorad::v1::Dataset* response_;
  lorad::v1::UploadDatasetRequest request_;
  fs::path incoming_;
  bool saw_header_ = false;
  std::string name_;
  int64_t total_bytes_ = 0;
  std::map<std::string, std::string> files_;  // path -> sha256
  std::string current_path_;
  std::ofstream out_;
  std::unique_ptr<Sha256> hash_;
};

}  // namespace

void ToProto(const storage::DatasetRecord& d, lorad::v1::Dataset* out) {
  out->set_id(d.id);
  out->set_name(d.name);
  out->set_bytes(d.bytes);
  out->set_files(d.files);
  out->set_images(d.images);
  out->set_created_unix_ms(d.created_ms);
  out->set_path(d.path);
}

grpc::ServerReadReactor<lorad::v1::UploadDatasetRequest>* NewDatasetUpload(
    const ServerConfig* config, UploadBudget* budget, absl::Mutex* datasets_mu, storage::JobStore* store,
    lorad::v1::Dataset* response) {
  return new DatasetUpload(config, budget, datasets_mu, store, response);
}

}  // namespace lorad::server
