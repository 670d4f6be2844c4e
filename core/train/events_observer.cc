#include "core/train/events_observer.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/networks/metadata.h"
#include "proto/event_stream.h"

namespace lorad::train {
namespace {

// Size and SHA-256 of a file (LoRA files and previews are small).
void FileFacts(const std::string& path, std::string* sha256, int64_t* bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return;
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string data = buffer.str();
  *bytes = static_cast<int64_t>(data.size());
  *sha256 = networks::Sha256Hex(data);
}

int64_t DirectoryBytes(const std::string& path) {
  int64_t total = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(path, ec)) {
    if (entry.is_regular_file(ec)) total += static_cast<int64_t>(entry.file_size(ec));
  }
  return total;
}

}  // namespace

EventsObserver::EventsObserver(int fd) : writer_(std::make_unique<events::EventWriter>(fd)) {}
EventsObserver::~EventsObserver() = default;

template <typename Fill>
void EventsObserver::Emit(Fill fill) {
  if (!status_.ok()) return;  // the reader is gone; keep training, report at exit
  lorad::v1::Event event;
  fill(event);
  status_ = writer_->Write(std::move(event));
}

void EventsObserver::OnStart(const RunStarted& info) {
  Emit([&](lorad::v1::Event& e) {
    auto* s = e.mutable_job_started();
    s->set_total_steps(info.total_steps);
    s->set_total_epochs(static_cast<int32_t>(info.total_epochs));
    s->set_resumed_from_step(info.resumed_from_step);
    s->set_config_toml(info.config_toml);
    for (const auto& [k, v] : info.hyperparameters) (*s->mutable_hyperparameters())[k] = v;
    s->set_device(info.device);
    s->set_num_train_images(info.num_train_images);
    s->set_steps_per_epoch(info.steps_per_epoch);
    s->set_model_arch(info.model_arch);
  });
}

void EventsObserver::OnStep(const StepReport& r) {
  Emit([&](lorad::v1::Event& e) {
    auto* p = e.mutable_progress();
    p->set_step(r.step);
    p->set_total_steps(r.total_steps);
    p->set_epoch(static_cast<int32_t>(r.epoch));
    p->set_loss(r.loss);
    p->set_loss_avg(r.loss_avg);
    for (const GroupLr& g : r.lrs) {
      auto* lr = p->add_lr();
      lr->set_group(g.group);
      lr->set_lr(g.lr);
    }
    p->set_it_per_s(r.it_per_s);
    p->set_images_per_s(r.images_per_s);
    p->set_eta_s(r.eta_s);
    p->set_grad_norm(r.grad_norm);
    p->set_gpu_memory_allocated_bytes(r.gpu_memory_allocated_bytes);
  });
}

void EventsObserver::OnCheckpoint(const CheckpointReport& r) {
  Emit([&](lorad::v1::Event& e) {
    auto* c = e.mutable_checkpoint();
    const std::string absolute = std::filesystem::absolute(r.path).string();
    c->set_path(absolute);
    c->set_step(r.step);
    c->set_epoch(static_cast<int32_t>(r.epoch));
    c->set_is_final(r.is_final);
    if (r.kind == CheckpointKind::kLora) {
      c->set_kind(lorad::v1::ARTIFACT_KIND_LORA);
      std::string sha;
      int64_t bytes = 0;
      FileFacts(absolute, &sha, &bytes);
      c->set_sha256(sha);
      c->set_bytes(bytes);
    } else {
      c->set_kind(lorad::v1::ARTIFACT_KIND_STATE);
      c->set_bytes(DirectoryBytes(absolute));
    }
  });
}

void EventsObserver::OnSample(const SampleReport& r) {
  Emit([&](lorad::v1::Event& e) {
    auto* s = e.mutable_sample();
    const std::string absolute = std::filesystem::absolute(r.path).string();
    s->set_path(absolute);
    s->set_step(r.step);
    s->set_prompt_index(static_cast<int32_t>(r.prompt_index));
    s->set_prompt(r.prompt);
    s->set_sampler(r.sampler);
    s->set_lora_strength(r.lora_strength);
    std::string sha;
    int64_t bytes = 0;
    FileFacts(absolute, &sha, &bytes);
    s->set_sha256(sha);
    s->set_bytes(bytes);
  });
}

void EventsObserver::OnWarning(const std::string& code, const std::string& message) {
  Emit([&](lorad::v1::Event& e) {
    e.mutable_warning()->set_code(code);
    e.mutable_warning()->set_message(message);
  });
}

void EventsObserver::Log(bool error, const std::string& message) {
  Emit([&](lorad::v1::Event& e) {
    e.mutable_log()->set_level(error ? lorad::v1::Log::ERROR : lorad::v1::Log::INFO);
    e.mutable_log()->set_message(message);
  });
}

void EventsObserver::OnFinish(const RunFinished& r) {
  Emit([&](lorad::v1::Event& e) {
    auto* f = e.mutable_finished();
    switch (r.outcome) {
      case RunOutcome::kSucceeded: f->set_status(lorad::v1::Finished::SUCCEEDED); break;
      case RunOutcome::kFailed: f->set_status(lorad::v1::Finished::FAILED); break;
      case RunOutcome::kCancelled: f->set_status(lorad::v1::Finished::CANCELLED); break;
    }
    f->set_reason(r.reason);
    f->set_final_lora_path(r.final_lora_path.empty() ? std::string()
                                                     : std::filesystem::absolute(r.final_lora_path).string());
    f->set_final_step(r.final_step);
  });
}

}  // namespace lorad::train
