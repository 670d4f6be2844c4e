// loractl: the lorad command line. `loractl --help` lists the commands.
// Exit codes: 0 ok, 1 other error, 2 usage, 3 server unreachable, 4 bad or
// missing token, 5 unknown job/artifact/dataset, 6 request refused (invalid,
// outside the roots, too large), 7 checksum mismatch, 10 job FAILED, 11 job CANCELLED.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "client/charts/charts.h"
#include "client/client.h"
#include "client/profile.h"
#include "client/sweep_datasets.h"
#include "client/sweep_view.h"
#include "core/base/exit_codes.h"
#include "core/base/subprocess.h"
#include "core/config/config.h"
#include "core/planner/advisor.h"
#include "core/planner/curation_json.h"
#include "core/planner/sweep_table.h"

namespace fs = std::filesystem;
using lorad::client::Client;
using lorad::client::FromGrpc;

namespace {

// Exit codes are lorad's one vocabulary (core/base/exit_codes.h).
constexpr int kOk = lorad::kExitOk;
constexpr int kUsage = lorad::kExitUsage;
constexpr int kNotFound = lorad::kExitNotFound;
constexpr int kRefused = lorad::kExitRefused;
constexpr int kJobFailed = lorad::kExitJobFailed;
constexpr int kJobCancelled = lorad::kExitCancelled;

constexpr char kUsageText[] =
    "usage: loractl [--profile NAME] [--server HOST:PORT] [--token T] [--tls [--ca PEM]] [--timeout S] COMMAND ...\n"
    "  submit CONFIG.toml [--dataset-config D.toml] [--dataset DIR|ID] [--name N] [--priority P]\n"
    "         [--set key=value]... [--sweep NAME] [--request-id ID] [--force]   prints the job id\n"
    "         [--gpus N]   data-parallel on N GPUs (the job's `gpus` key; Slurm: --ntasks/--gres)\n"
    "         [--kind character|style|concept]   what the LoRA learns: the advisor holds the job to\n"
    "                                            the guide's thresholds for that kind\n"
    "  ls [--state queued|running|succeeded|failed|cancelled] [--name TEXT] [--sweep NAME] [--limit N] [--json]\n"
    "  show JOB [--json]\n"
    "  tail JOB [--after SEQ] [--json]        follows to the end; reconnects and resumes\n"
    "  cancel JOB [--reason TEXT]\n"
    "  fetch JOB [--out DIR] [--all|--lora|--samples]   resumes partial downloads, verifies sha256\n"
    "  datasets upload DIR [--name N] | datasets ls | datasets inspect ID\n"
    "  datasets rm ID|NAME                   refused while a queued or running job uses it\n"
    "  datasets tag ID|NAME --model M.onnx [--tags selected_tags.csv] [--threshold 0.35]\n"
    "      [--character-threshold 0.85] [--trigger WORD] [--mode merge|overwrite|skip-existing]\n"
    "      [--keep-tokens N] [--caption-extension EXT] [--name NEW] [--undesired-tags a,b]\n"
    "      [--character-tags-first] [--use-rating-tags] [--keep-underscores] [--json]\n"
    "                                        WD14 auto-tagging (lorad-tag on the daemon); paths are\n"
    "                                        relative to its models root; prints the new dataset id\n"
    "  models pull URL [--sha256 H] [--name N] [--wait]   the daemon downloads it (hf://ORG/REPO/FILE,\n"
    "                                        Hugging Face resolve URLs, civitai download URLs, https)\n"
    "  models upload FILE [--name N]         resumes a dropped upload; the daemon verifies the sha256\n"
    "  models ls [--json] | models wait NAME|HASH | models rm NAME|HASH\n"
    "                                        a job names a model by name or sha256:<hex> in\n"
    "                                        pretrained_model_name_or_path (it waits for a pull)\n"
    "  info\n"
    "  sweep SWEEP.toml [--name N] [--force] [--priority P]   prints the sweep id; dataset entries naming\n"
    "                                        local folders are uploaded (unless the daemon has them) and\n"
    "                                        replaced by their ids\n"
    "  sweep show ID|NAME [--csv|--json]   varied values, state, losses, steps, time, images/s, LoRA\n"
    "  sweep ls [--json] | sweep cancel ID [--reason TEXT]\n"
    "  plot JOB|SWEEP_NAME|--sweep ID -o loss.png [--smoothing S]   one smoothed curve per job\n"
    "  grid SWEEP -o samples.png [--cache DIR] [--cell N]   latest preview per job x prompt\n"
    "  fetch --sweep ID [--out DIR]          every final LoRA of the sweep\n"
    "  advise DATASET --kind character|style|concept [--config C.toml] [--family sdxl|sd15] [--json]\n"
    "         DATASET: a local folder (runs lorad-curate here) or an uploaded dataset id\n"
    "Server and token also come from LORAD_SERVER and LORAD_TOKEN, or a profile (--profile, LORAD_PROFILE,\n"
    "else `default`) in $XDG_CONFIG_HOME/lorad/config.toml (~/.config/lorad/config.toml):\n"
    "  default = \"box\"  [profiles.box] address = \"HOST:PORT\"  token_file = \"box.token\"  tls_ca = \"ca.pem\"\n"
    "Flags override the environment, which overrides the profile.\n"
    "Exit codes: 0 ok, 1 error, 2 usage, 3 unreachable, 4 auth, 5 not found, 6 refused,\n"
    "7 checksum mismatch, 10 job failed, 11 job cancelled.\n";

int ExitFor(const absl::Status& status, const std::string& what) {
  if (status.ok()) return kOk;
  std::string message(status.message());
  const int code = lorad::ClientExitCode(status);
  if (code == lorad::kExitUnreachable) {
    message = absl::StrCat("cannot reach lorad (", message,
                           "); is it running, and is --server / LORAD_SERVER right?");
  } else if (code == lorad::kExitUnauthenticated) {
    message = absl::StrCat(message, " (check --token / LORAD_TOKEN)");
  }
  std::fprintf(stderr, "loractl: %s: %s\n", what.c_str(), message.c_str());
  return code;
}

int ExitFor(const grpc::Status& status, const std::string& what) { return ExitFor(FromGrpc(status), what); }

// argv after the command: positional args and --flag [value] pairs.
struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> flags;
  bool Has(const std::string& f) const { return flags.count(f) > 0; }
  std::string Get(const std::string& f, const std::string& def = "") const {
    auto it = flags.find(f);
    return it == flags.end() || it->second.empty() ? def : it->second.back();
  }
};

const std::set<std::string> kBoolFlags = {"json", "all", "lora", "samples", "tls", "help", "csv", "force", "wait",
                                          "character-tags-first", "use-rating-tags", "keep-underscores"};

absl::StatusOr<Args> ParseArgs(int argc, char** argv, int start) {
  Args args;
  for (int i = start; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-o") {  // plot / grid output file
      if (i + 1 >= argc) return absl::InvalidArgumentError("-o needs a file name");
      args.flags["o"].push_back(argv[++i]);
      continue;
    }
    if (a.rfind("--", 0) == 0) {
      std::string name = a.substr(2), value;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else if (kBoolFlags.count(name) == 0) {
        if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
        value = argv[++i];
      }
      args.flags[name].push_back(value);
    } else {
      args.positional.push_back(a);
    }
  }
  return args;
}

std::string StateName(lorad::v1::JobState s) {
  std::string name = lorad::v1::JobState_Name(s);
  return name.rfind("JOB_STATE_", 0) == 0 ? name.substr(10) : name;
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, options);
  return out;
}

// "gpu time 1.50 GPU-h, cost 2.25" (no cost without a price on the daemon).
std::string UsageText(double gpu_seconds, double cost) {
  std::string text = absl::StrFormat("gpu time %.2f GPU-h", gpu_seconds / 3600);
  if (cost > 0) absl::StrAppend(&text, absl::StrFormat(", cost %.2f", cost));
  return text;
}

std::string Duration(double seconds) {
  if (seconds < 0 || seconds > 1e7) return "?";
  const int64_t s = static_cast<int64_t>(seconds);
  return s >= 3600 ? absl::StrFormat("%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
                   : absl::StrFormat("%d:%02d", s / 60, s % 60);
}

bool ParseJobId(const Args& args, int64_t* id) {
  return !args.positional.empty() && absl::SimpleAtoi(args.positional[0], id) && *id > 0;
}

std::string NewRequestId() {
  std::random_device rd;
  return absl::StrFormat("%08x%08x%08x%08x", rd(), rd(), rd(), rd());
}

std::string ReadText(const std::string& path, absl::Status* status) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *status = absl::NotFoundError(absl::StrCat("cannot read ", path));
    return "";
  }
  return std::string(std::istreambuf_iterator<char>(in), {});
}

int Submit(Client& client, const Args& args) {
  if (args.positional.size() != 1) {
    std::fprintf(stderr, "loractl submit: expected one CONFIG.toml\n%s", kUsageText);
    return kUsage;
  }
  absl::Status read_status;
  lorad::v1::SubmitJobRequest request;
  request.set_config_toml(ReadText(args.positional[0], &read_status));
  if (!read_status.ok()) return ExitFor(read_status, "submit");
  if (args.Has("dataset-config")) {
    request.set_dataset_config_toml(ReadText(args.Get("dataset-config"), &read_status));
    if (!read_status.ok()) return ExitFor(read_status, "submit");
  }
  std::string dataset = args.Get("dataset");
  if (!dataset.empty() && fs::is_directory(dataset)) {
    auto ensured = client.EnsureDataset(dataset, fs::path(dataset).filename().string());
    if (!ensured.ok()) return ExitFor(ensured.status(), "uploading the dataset");
    const auto& d = ensured->dataset;
    std::fprintf(stderr, "dataset %s (%s, %d files, %d images)\n", d.id().c_str(),
                 ensured->uploaded ? "uploaded" : "already on the daemon", d.files(), d.images());
    dataset = d.id();
  }
  request.set_dataset(dataset);
  request.set_name(args.Get("name", fs::path(args.positional[0]).stem().string()));
  int64_t priority = 0;
  if (args.Has("priority") && !absl::SimpleAtoi(args.Get("priority"), &priority)) {
    std::fprintf(stderr, "loractl submit: --priority expects an integer\n");
    return kUsage;
  }
  request.set_priority(static_cast<int32_t>(priority));
  request.set_sweep(args.Get("sweep"));
  request.set_force(args.Has("force"));  // run despite "never" advisor findings
  if (args.Has("kind")) {
    // Checked here too: a typo is a usage error naming the accepted kinds.
    auto kind = lorad::planner::ParseTrainingKind(args.Get("kind"));
    if (!kind.ok()) {
      std::fprintf(stderr, "loractl submit: --%s\n", std::string(kind.status().message()).c_str());
      return kUsage;
    }
    request.set_kind(std::string(lorad::planner::TrainingKindName(*kind)));
  }
  if (args.Has("set")) {
    for (const auto& kv : args.flags.at("set")) {
      auto eq = kv.find('=');
      if (eq == std::string::npos) {
        std::fprintf(stderr, "loractl submit: --set expects key=value, got '%s'\n", kv.c_str());
        return kUsage;
      }
      (*request.mutable_overrides())[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
  }
  if (args.Has("gpus")) {
    // The same `gpus` key a TOML file sets: one lorad-train rank per GPU.
    int64_t gpus = 0;
    if (!absl::SimpleAtoi(args.Get("gpus"), &gpus) || gpus < 1) {
      std::fprintf(stderr, "loractl submit: --gpus expects a whole number >= 1, got '%s'\n", args.Get("gpus").c_str());
      return kUsage;
    }
    (*request.mutable_overrides())["gpus"] = std::to_string(gpus);
  }
  request.set_request_id(args.Get("request-id", NewRequestId()));
  // Retrying with the same request id can never create a second job.
  grpc::Status status;
  lorad::v1::Job job;
  for (int attempt = 0; attempt < 4; ++attempt) {
    auto ctx = client.Context();
    status = client.stub()->SubmitJob(ctx.get(), request, &job);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500 << attempt));
  }
  if (!status.ok()) return ExitFor(status, "submit");
  std::printf("%lld\n", static_cast<long long>(job.id()));
  return kOk;
}

int List(Client& client, const Args& args) {
  lorad::v1::ListJobsRequest request;
  if (args.Has("state")) {
    lorad::v1::JobState state;
    std::string name = "JOB_STATE_" + args.Get("state");
    for (auto& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (!lorad::v1::JobState_Parse(name, &state)) {
      std::fprintf(stderr, "loractl ls: unknown state '%s'\n", args.Get("state").c_str());
      return kUsage;
    }
    request.add_states(state);
  }
  request.set_name_contains(args.Get("name"));
  request.set_sweep(args.Get("sweep"));
  int64_t limit = 50;
  if (args.Has("limit")) (void)absl::SimpleAtoi(args.Get("limit"), &limit);
  request.set_page_size(static_cast<int32_t>(std::min<int64_t>(limit, 1000)));
  lorad::v1::ListJobsResponse response;
  auto ctx = client.Context();
  grpc::Status status = client.stub()->ListJobs(ctx.get(), request, &response);
  if (!status.ok()) return ExitFor(status, "ls");
  if (args.Has("json")) {
    std::printf("%s\n", Json(response).c_str());
    return kOk;
  }
  std::printf("%-6s %-10s %-24s %-13s %-9s %s\n", "ID", "STATE", "NAME", "STEP", "LOSS", "REASON");
  for (const auto& job : response.jobs()) {
    std::printf("%-6lld %-10s %-24s %-13s %-9.4f %s\n", static_cast<long long>(job.id()),
                StateName(job.state()).c_str(), job.name().substr(0, 24).c_str(),
                absl::StrCat(job.step(), "/", job.total_steps()).c_str(), job.loss(),
                job.reason().substr(0, job.reason().find('\n')).c_str());
  }
  return kOk;
}

int Show(Client& client, const Args& args) {
  int64_t id = 0;
  if (!ParseJobId(args, &id)) {
    std::fprintf(stderr, "loractl show: expected a job id\n");
    return kUsage;
  }
  lorad::v1::GetJobRequest request;
  request.set_job_id(id);
  lorad::v1::Job job;
  auto ctx = client.Context();
  grpc::Status status = client.stub()->GetJob(ctx.get(), request, &job);
  if (!status.ok()) return ExitFor(status, absl::StrCat("show ", id));
  lorad::v1::ListArtifactsRequest list;
  list.set_job_id(id);
  lorad::v1::ListArtifactsResponse artifacts;
  auto ctx2 = client.Context();
  status = client.stub()->ListArtifacts(ctx2.get(), list, &artifacts);
  if (!status.ok()) return ExitFor(status, absl::StrCat("show ", id));
  if (args.Has("json")) {
    std::printf("{\"job\": %s, \"artifacts\": %s}\n", Json(job).c_str(), Json(artifacts).c_str());
    return kOk;
  }
  std::printf("job %lld  %s  %s\n", static_cast<long long>(job.id()), job.name().c_str(),
              StateName(job.state()).c_str());
  std::printf("step %lld/%lld  loss %.4f  attempts %d  priority %d  events %lld\n",
              static_cast<long long>(job.step()), static_cast<long long>(job.total_steps()), job.loss(),
              job.attempts(), job.priority(), static_cast<long long>(job.last_seq()));
  if (!job.dataset().empty()) std::printf("dataset %s\n", job.dataset().c_str());
  if (job.gpu_seconds() > 0) std::printf("%s\n", UsageText(job.gpu_seconds(), job.cost()).c_str());
  if (!job.reason().empty()) std::printf("reason: %s\n", job.reason().c_str());
  if (!job.final_lora_path().empty()) std::printf("lora: %s\n", job.final_lora_path().c_str());
  std::printf("hyperparameters:\n");
  for (const auto& [k, v] : std::map<std::string, std::string>(job.hyperparameters().begin(),
                                                               job.hyperparameters().end())) {
    std::printf("  %s = %s\n", k.c_str(), v.c_str());
  }
  auto events = lorad::client::ReadJobEvents(client, id);
  if (events.ok()) {
    bool header = false;
    for (const auto& e : *events) {
      if (!e.event().has_warning()) continue;
      if (!header) std::printf("warnings:\n");
      header = true;
      std::printf("  [%s] %s\n", e.event().warning().code().c_str(), e.event().warning().message().c_str());
    }
  }
  std::printf("artifacts:\n");
  for (const auto& a : artifacts.artifacts()) {
    std::printf("  %-4lld %-7s step %-6lld %10lld B  %s\n", static_cast<long long>(a.id()),
                lorad::v1::ArtifactKind_Name(a.kind()).substr(14).c_str(), static_cast<long long>(a.step()),
                static_cast<long long>(a.bytes()), a.name().c_str());
  }
  return kOk;
}

void RenderEvent(const lorad::v1::JobEvent& e, bool tty) {
  const auto& ev = e.event();
  if (ev.has_progress()) {
    const auto& p = ev.progress();
    const double fraction = p.total_steps() > 0 ? double(p.step()) / double(p.total_steps()) : 0;
    const int filled = static_cast<int>(fraction * 30);
    const std::string bar = std::string(filled, '#') + std::string(30 - filled, '.');
    std::fprintf(stderr, "%s[%s] %lld/%lld  loss %.4f  %.2f it/s  ETA %s%s", tty ? "\r" : "", bar.c_str(),
                 static_cast<long long>(p.step()), static_cast<long long>(p.total_steps()), p.loss_avg(),
                 p.it_per_s(), Duration(p.eta_s()).c_str(), tty ? "   " : "\n");
    return;
  }
  if (tty) std::fprintf(stderr, "\n");
  if (ev.has_job_started()) {
    std::fprintf(stderr, "started: %lld steps, %d epochs on %s%s\n",
                 static_cast<long long>(ev.job_started().total_steps()), ev.job_started().total_epochs(),
                 ev.job_started().device().c_str(),
                 ev.job_started().resumed_from_step() > 0
                     ? absl::StrCat(", resumed from step ", ev.job_started().resumed_from_step()).c_str()
                     : "");
  } else if (ev.has_checkpoint()) {
    std::fprintf(stderr, "saved %s at step %lld: %s\n",
                 ev.checkpoint().kind() == lorad::v1::ARTIFACT_KIND_STATE ? "state" : "LoRA",
                 static_cast<long long>(ev.checkpoint().step()), ev.checkpoint().path().c_str());
  } else if (ev.has_sample()) {
    std::fprintf(stderr, "sample %d at step %lld: %s\n", ev.sample().prompt_index(),
                 static_cast<long long>(ev.sample().step()), ev.sample().path().c_str());
  } else if (ev.has_warning()) {
    std::fprintf(stderr, "warning [%s]: %s\n", ev.warning().code().c_str(), ev.warning().message().c_str());
  } else if (ev.has_log()) {
    std::fprintf(stderr, "%s\n", ev.log().message().c_str());
  } else if (ev.has_finished()) {
    std::fprintf(stderr, "%s at step %lld%s%s\n",
                 lorad::v1::Finished::Status_Name(ev.finished().status()).c_str(),
                 static_cast<long long>(ev.finished().final_step()),
                 ev.finished().reason().empty() ? "" : ": ", ev.finished().reason().c_str());
  }
}

int Tail(Client& client, const Args& args) {
  int64_t id = 0;
  if (!ParseJobId(args, &id)) {
    std::fprintf(stderr, "loractl tail: expected a job id\n");
    return kUsage;
  }
  int64_t after = 0;
  if (args.Has("after")) (void)absl::SimpleAtoi(args.Get("after"), &after);
  const bool json = args.Has("json");
  const bool tty = !json && isatty(STDERR_FILENO);
  auto backoff = std::chrono::milliseconds(250);
  auto gave_up_at = std::chrono::steady_clock::now() + std::chrono::minutes(30);
  lorad::v1::Finished::Status outcome = lorad::v1::Finished::STATUS_UNSPECIFIED;
  while (true) {
    auto ctx = client.Context(true);
    lorad::v1::StreamEventsRequest request;
    request.set_job_id(id);
    request.set_after_seq(after);
    auto reader = client.stub()->StreamEvents(ctx.get(), request);
    lorad::v1::JobEvent event;
    while (reader->Read(&event)) {
      if (event.seq() <= after) continue;  // never show an event twice
      after = event.seq();
      backoff = std::chrono::milliseconds(250);
      gave_up_at = std::chrono::steady_clock::now() + std::chrono::minutes(30);
      if (event.event().has_finished()) outcome = event.event().finished().status();
      if (json) {
        std::printf("%s\n", Json(event).c_str());
        std::fflush(stdout);
      } else {
        RenderEvent(event, tty);
      }
    }
    grpc::Status status = reader->Finish();
    if (status.ok()) break;
    const auto code = status.error_code();
    const bool transient = code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
                           code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::INTERNAL;
    if (!transient || std::chrono::steady_clock::now() > gave_up_at) return ExitFor(status, absl::StrCat("tail ", id));
    std::fprintf(stderr, "%sconnection lost (%s); reconnecting in %.1fs from event %lld\n", tty ? "\n" : "",
                 status.error_message().c_str(), backoff.count() / 1000.0, static_cast<long long>(after));
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(10000));
  }
  if (tty) std::fprintf(stderr, "\n");
  if (outcome == lorad::v1::Finished::FAILED) return kJobFailed;
  if (outcome == lorad::v1::Finished::CANCELLED) return kJobCancelled;
  return kOk;
}

int Cancel(Client& client, const Args& args) {
  int64_t id = 0;
  if (!ParseJobId(args, &id)) {
    std::fprintf(stderr, "loractl cancel: expected a job id\n");
    return kUsage;
  }
  lorad::v1::CancelJobRequest request;
  request.set_job_id(id);
  request.set_reason(args.Get("reason", "cancelled with loractl"));
  lorad::v1::Job job;
  auto ctx = client.Context();
  grpc::Status status = client.stub()->CancelJob(ctx.get(), request, &job);
  if (!status.ok()) return ExitFor(status, absl::StrCat("cancel ", id));
  std::printf("job %lld: %s%s\n", static_cast<long long>(id), StateName(job.state()).c_str(),
              job.state() == lorad::v1::JOB_STATE_RUNNING ? " (stopping)" : "");
  return kOk;
}

int FetchSweep(Client& client, const Args& args);

int Fetch(Client& client, const Args& args) {
  if (args.Has("sweep")) return FetchSweep(client, args);
  int64_t id = 0;
  if (!ParseJobId(args, &id)) {
    std::fprintf(stderr, "loractl fetch: expected a job id\n");
    return kUsage;
  }
  const fs::path out = args.Get("out", ".");
  lorad::v1::ListArtifactsRequest request;
  request.set_job_id(id);
  lorad::v1::ListArtifactsResponse response;
  auto ctx = client.Context();
  grpc::Status status = client.stub()->ListArtifacts(ctx.get(), request, &response);
  if (!status.ok()) return ExitFor(status, absl::StrCat("fetch ", id));
  std::vector<lorad::v1::Artifact> chosen;
  const lorad::v1::Artifact* final_lora = nullptr;
  for (const auto& a : response.artifacts()) {
    if (a.is_directory()) continue;
    if (args.Has("all") || (args.Has("samples") && a.kind() == lorad::v1::ARTIFACT_KIND_SAMPLE) ||
        (args.Has("lora") && a.kind() == lorad::v1::ARTIFACT_KIND_LORA)) {
      chosen.push_back(a);
    }
    if (a.kind() == lorad::v1::ARTIFACT_KIND_LORA && (final_lora == nullptr || a.is_final() || a.step() > final_lora->step()) &&
        !(final_lora && final_lora->is_final())) {
      final_lora = &a;
    }
  }
  if (!args.Has("all") && !args.Has("samples") && !args.Has("lora")) {
    if (final_lora == nullptr) {
      std::fprintf(stderr, "loractl fetch: job %lld has no LoRA file yet (see `loractl show %lld`)\n",
                   static_cast<long long>(id), static_cast<long long>(id));
      return kNotFound;
    }
    chosen.push_back(*final_lora);
  }
  for (const auto& a : chosen) {
    const fs::path target = out / a.name();
    absl::Status fetched = absl::UnavailableError("not tried");
    for (int attempt = 0; attempt < 5 && !fetched.ok(); ++attempt) {
      fetched = client.FetchArtifact(a, target);
      if (fetched.code() != absl::StatusCode::kUnavailable) break;
      std::fprintf(stderr, "download interrupted (%s); resuming\n", std::string(fetched.message()).c_str());
      std::this_thread::sleep_for(std::chrono::milliseconds(500 << attempt));
    }
    if (!fetched.ok()) return ExitFor(fetched, absl::StrCat("fetch ", a.name()));
    std::printf("%s\n", target.string().c_str());
  }
  return kOk;
}

// `datasets tag`: the daemon's TagDataset; the tagged copy's id on stdout.
int TagDataset(Client& client, const Args& args) {
  lorad::v1::TagDatasetRequest request;
  request.set_dataset(args.positional[1]);
  request.set_model(args.Get("model"));
  if (request.model().empty()) {
    std::fprintf(stderr, "loractl datasets tag: --model is required (the tagger's model.onnx under the daemon's "
                 "models root)\n");
    return kUsage;
  }
  request.set_tags_csv(args.Get("tags"));
  for (const char* flag : {"threshold", "character-threshold"}) {
    if (!args.Has(flag)) continue;
    float value = 0;
    if (!absl::SimpleAtof(args.Get(flag), &value)) {
      std::fprintf(stderr, "loractl datasets tag: --%s expects a probability, got '%s'\n", flag,
                   args.Get(flag).c_str());
      return kUsage;
    }
    if (std::string(flag) == "threshold") request.set_threshold(value);
    else request.set_character_threshold(value);
  }
  if (args.Has("keep-tokens")) {
    int keep = 0;
    if (!absl::SimpleAtoi(args.Get("keep-tokens"), &keep) || keep < 0) {
      std::fprintf(stderr, "loractl datasets tag: --keep-tokens expects an integer >= 0\n");
      return kUsage;
    }
    request.set_keep_tokens(keep);
  }
  request.set_trigger(args.Get("trigger"));
  request.set_mode(args.Get("mode"));
  request.set_caption_extension(args.Get("caption-extension"));
  request.set_name(args.Get("name"));
  for (absl::string_view tag : absl::StrSplit(args.Get("undesired-tags"), ',', absl::SkipWhitespace())) {
    request.add_undesired_tags(std::string(absl::StripAsciiWhitespace(tag)));
  }
  request.set_character_tags_first(args.Has("character-tags-first"));
  request.set_use_rating_tags(args.Has("use-rating-tags"));
  request.set_keep_underscores(args.Has("keep-underscores"));
  lorad::v1::TagDatasetResponse response;
  auto ctx = client.Context();
  // The tagger runs on the daemon's CPU: minutes for a large dataset.
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::hours(2));
  grpc::Status status = client.stub()->TagDataset(ctx.get(), request, &response);
  if (!status.ok()) return ExitFor(status, absl::StrCat("datasets tag ", args.positional[1]));
  if (args.Has("json")) {
    std::printf("%s\n", Json(response).c_str());
    return kOk;
  }
  for (const auto& c : response.captions()) std::fprintf(stderr, "%s: %s\n", c.path().c_str(), c.caption().c_str());
  std::fprintf(stderr, "%d caption(s) written (%s), %d skipped, of %d image(s); tagged dataset %s '%s'\n",
               response.written(), response.caption_extension().c_str(), response.skipped(), response.images(),
               response.dataset().id().c_str(), response.dataset().name().c_str());
  if (response.trigger_after_kept() > 0) {
    std::fprintf(stderr, "warning: in %d caption(s) the kept tokens lack the trigger, which follows them\n",
                 response.trigger_after_kept());
  }
  std::printf("%s\n", response.dataset().id().c_str());
  return kOk;
}

int Datasets(Client& client, const Args& args) {
  const std::string sub = args.positional.empty() ? "ls" : args.positional[0];
  if (sub == "upload") {
    if (args.positional.size() != 2) {
      std::fprintf(stderr, "loractl datasets upload: expected a folder\n");
      return kUsage;
    }
    auto dataset = client.UploadDataset(args.positional[1], args.Get("name"));
    if (!dataset.ok()) return ExitFor(dataset.status(), "datasets upload");
    std::printf("%s\n", dataset->id().c_str());
    return kOk;
  }
  if (sub == "ls") {
    lorad::v1::ListDatasetsResponse response;
    auto ctx = client.Context();
    grpc::Status status = client.stub()->ListDatasets(ctx.get(), {}, &response);
    if (!status.ok()) return ExitFor(status, "datasets ls");
    if (args.Has("json")) {
      std::printf("%s\n", Json(response).c_str());
      return kOk;
    }
    for (const auto& d : response.datasets()) {
      std::printf("%s  %-20s %5d files %5d images %12lld B\n", d.id().c_str(), d.name().c_str(), d.files(),
                  d.images(), static_cast<long long>(d.bytes()));
    }
    return kOk;
  }
  if (sub == "inspect" && args.positional.size() == 2) {
    lorad::v1::InspectDatasetRequest request;
    request.set_dataset_id(args.positional[1]);
    lorad::v1::InspectDatasetResponse response;
    auto ctx = client.Context();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
    grpc::Status status = client.stub()->InspectDataset(ctx.get(), request, &response);
    if (!status.ok()) return ExitFor(status, "datasets inspect");
    std::printf("%s\n", response.report_json().c_str());
    return kOk;
  }
  if (sub == "rm" && args.positional.size() == 2) {
    lorad::v1::DeleteDatasetRequest request;
    request.set_dataset(args.positional[1]);
    lorad::v1::DeleteDatasetResponse response;
    auto ctx = client.Context();
    grpc::Status status = client.stub()->DeleteDataset(ctx.get(), request, &response);
    if (!status.ok()) return ExitFor(status, absl::StrCat("datasets rm ", args.positional[1]));
    const auto& d = response.dataset();
    std::printf("deleted dataset %s%s%s (%s)\n", d.id().c_str(), d.id().empty() ? "" : " ", d.name().c_str(),
                d.path().c_str());
    if (!response.folder_deleted()) {
      std::fprintf(stderr, "only its record: the folder %s was missing or outside the daemon's datasets root, "
                   "and was left as it was\n", d.path().c_str());
    }
    return kOk;
  }
  if (sub == "tag" && args.positional.size() == 2) return TagDataset(client, args);
  std::fprintf(stderr, "loractl datasets: upload DIR | ls | inspect ID | rm ID|NAME | tag ID|NAME --model M\n");
  return kUsage;
}

std::string ModelStateText(lorad::v1::ModelState state) {
  switch (state) {
    case lorad::v1::MODEL_DOWNLOADING: return "downloading";
    case lorad::v1::MODEL_UPLOADING: return "uploading";
    case lorad::v1::MODEL_READY: return "ready";
    case lorad::v1::MODEL_FAILED: return "failed";
    default: return "unknown";
  }
}

std::string ModelLine(const lorad::v1::Model& m) {
  std::string progress;
  if (m.state() == lorad::v1::MODEL_DOWNLOADING || m.state() == lorad::v1::MODEL_UPLOADING) {
    progress = m.bytes() > 0 ? absl::StrFormat(" %.1f%%", 100.0 * m.bytes_done() / m.bytes())
                             : absl::StrCat(" ", m.bytes_done(), " B");
  }
  return absl::StrFormat("%-24s %-11s%s %-12.12s %6s %-9s %-12s %12lld B%s%s", m.name(), ModelStateText(m.state()),
                         progress, m.sha256().empty() ? "-" : m.sha256(), m.family().empty() ? "-" : m.family(),
                         m.prediction().empty() ? "-" : m.prediction(), m.lineage().empty() ? "-" : m.lineage(),
                         static_cast<long long>(m.bytes()), m.reason().empty() ? "" : "  ", m.reason());
}

// Follows a model until READY (0) or FAILED (the job-failed code), progress on stderr.
int WaitModel(Client& client, const std::string& model) {
  lorad::v1::GetModelRequest request;
  request.set_model(model);
  for (int attempt = 0; attempt < 30; ++attempt) {
    auto ctx = client.Context(true);
    auto reader = client.stub()->WatchModel(ctx.get(), request);
    lorad::v1::Model m;
    int64_t last_percent = -1;
    while (reader->Read(&m)) {
      if (m.bytes() > 0) {
        const int64_t percent = 100 * m.bytes_done() / m.bytes();
        if (percent != last_percent) std::fprintf(stderr, "\r%s: %lld%%", m.name().c_str(), static_cast<long long>(percent));
        last_percent = percent;
      }
      if (m.state() == lorad::v1::MODEL_READY) {
        std::fprintf(stderr, "\n");
        std::printf("%s\n", ModelLine(m).c_str());
        return kOk;
      }
      if (m.state() == lorad::v1::MODEL_FAILED) {
        std::fprintf(stderr, "\nloractl: model %s failed: %s\n", m.name().c_str(), m.reason().c_str());
        return kJobFailed;
      }
    }
    grpc::Status status = reader->Finish();
    if (!status.ok() && status.error_code() != grpc::StatusCode::UNAVAILABLE) return ExitFor(status, "models wait");
    std::this_thread::sleep_for(std::chrono::seconds(1));  // the daemon restarted: follow it again
  }
  std::fprintf(stderr, "loractl: models wait: gave up reconnecting\n");
  return lorad::kExitUnreachable;
}

int Models(Client& client, const Args& args) {
  const std::string sub = args.positional.empty() ? "ls" : args.positional[0];
  if (sub == "pull" && args.positional.size() == 2) {
    lorad::v1::PullModelRequest request;
    request.set_url(args.positional[1]);
    request.set_sha256(args.Get("sha256"));
    request.set_name(args.Get("name"));
    lorad::v1::Model model;
    auto ctx = client.Context();
    grpc::Status status = client.stub()->PullModel(ctx.get(), request, &model);
    if (!status.ok()) return ExitFor(status, "models pull");
    if (args.Has("wait")) return WaitModel(client, absl::StrCat("#", model.id()));
    std::printf("%s\n", ModelLine(model).c_str());
    return kOk;
  }
  if (sub == "upload" && args.positional.size() == 2) {
    int64_t last_percent = -1;
    auto model = client.UploadModel(args.positional[1], args.Get("name"), 0, [&](int64_t sent, int64_t total) {
      const int64_t percent = 100 * sent / std::max<int64_t>(total, 1);
      if (percent != last_percent) std::fprintf(stderr, "\rupload: %lld%%", static_cast<long long>(percent));
      last_percent = percent;
    });
    if (last_percent >= 0) std::fprintf(stderr, "\n");
    if (!model.ok()) return ExitFor(model.status(), "models upload");
    std::printf("%s\n", ModelLine(*model).c_str());
    return kOk;
  }
  if (sub == "ls") {
    lorad::v1::ListModelsResponse response;
    auto ctx = client.Context();
    grpc::Status status = client.stub()->ListModels(ctx.get(), {}, &response);
    if (!status.ok()) return ExitFor(status, "models ls");
    if (args.Has("json")) {
      std::printf("%s\n", Json(response).c_str());
      return kOk;
    }
    for (const auto& m : response.models()) std::printf("%s\n", ModelLine(m).c_str());
    return kOk;
  }
  if (sub == "wait" && args.positional.size() == 2) return WaitModel(client, args.positional[1]);
  if (sub == "rm" && args.positional.size() == 2) {
    lorad::v1::DeleteModelRequest request;
    request.set_model(args.positional[1]);
    lorad::v1::DeleteModelResponse response;
    auto ctx = client.Context();
    grpc::Status status = client.stub()->DeleteModel(ctx.get(), request, &response);
    if (!status.ok()) return ExitFor(status, absl::StrCat("models rm ", args.positional[1]));
    std::printf("deleted model %s (%s)\n", response.model().name().c_str(),
                response.model().sha256().empty() ? "no hash yet" : response.model().sha256().c_str());
    return kOk;
  }
  std::fprintf(stderr, "loractl models: pull URL [--sha256 H] [--name N] [--wait] | upload FILE [--name N] | ls | "
               "wait NAME|HASH | rm NAME|HASH\n");
  return kUsage;
}

int Info(Client& client, const Args& args) {
  lorad::v1::ServerInfo info;
  auto ctx = client.Context();
  grpc::Status status = client.stub()->GetServerInfo(ctx.get(), {}, &info);
  if (!status.ok()) return ExitFor(status, "info");
  if (args.Has("json")) {
    std::printf("%s\n", Json(info).c_str());
    return kOk;
  }
  std::printf("lorad %s (LibTorch %s, CUDA %s), up %llds\n", info.version().c_str(),
              info.libtorch_version().c_str(), info.cuda_available() ? "yes" : "no",
              static_cast<long long>(info.uptime_s()));
  std::printf("slots %d, running %d, queued %d\ndata dir %s\nworker %s\n", info.slots(), info.running(),
              info.queue_length(), info.data_dir().c_str(), info.worker_binary().c_str());
  if (info.price_per_hour() > 0) {
    std::printf("cost since start %.2f (up %.2f h at %.2f/h); jobs since start %.2f GPU-h, %.2f\n",
                info.cost_since_start(), info.uptime_s() / 3600.0, info.price_per_hour(),
                info.jobs_gpu_seconds_since_start() / 3600, info.jobs_cost_since_start());
  } else {
    std::printf("jobs since start %.2f GPU-h (no price_per_hour set on the daemon)\n",
                info.jobs_gpu_seconds_since_start() / 3600);
  }
  if (!info.on_idle_command().empty()) {
    std::printf("on_idle after %s idle: %s (idle for %s)\n", Duration(info.on_idle_after_s()).c_str(),
                info.on_idle_command().c_str(), Duration(info.idle_for_s()).c_str());
  }
  for (const auto& event : info.recent_events()) {
    std::printf("event %s  %s: %s\n", absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(event.time_unix_ms()),
                                                      absl::LocalTimeZone()).c_str(),
                event.kind().c_str(), event.message().c_str());
  }
  for (const auto& gpu : info.gpus()) {
    std::printf("gpu %d: %s, %.1f/%.1f GiB free\n", gpu.index(), gpu.name().c_str(),
                gpu.memory_free_bytes() / 1073741824.0, gpu.memory_total_bytes() / 1073741824.0);
  }
  return kOk;
}


std::string SweepSummary(const lorad::v1::Sweep& s) {
  std::string text = absl::StrFormat("%d jobs: %d succeeded, %d failed, %d cancelled, %d queued/running", s.jobs_total(),
                                     s.jobs_succeeded(), s.jobs_failed(), s.jobs_cancelled(), s.jobs_active());
  if (s.gpu_seconds() > 0) absl::StrAppend(&text, "; ", UsageText(s.gpu_seconds(), s.cost()));
  return text;
}

int SweepSubmit(Client& client, const Args& args) {
  absl::Status read_status;
  lorad::v1::SubmitSweepRequest request;
  const std::string sweep_toml = ReadText(args.positional[0], &read_status);
  if (!read_status.ok()) return ExitFor(read_status, "sweep");
  // Local dataset folders go up first (content-addressed: unchanged ones are not sent again).
  auto prepared = lorad::client::UploadSweepDatasets(
      client, sweep_toml, fs::absolute(args.positional[0]).parent_path(),
      [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); });
  if (!prepared.ok()) return ExitFor(prepared.status(), "sweep");
  request.set_sweep_toml(prepared->sweep_toml);
  request.mutable_dataset_labels()->insert(prepared->dataset_labels.begin(), prepared->dataset_labels.end());
  request.set_name(args.Get("name", absl::StrCat(fs::path(args.positional[0]).stem().string(), "-",
                                                 NewRequestId().substr(0, 6))));
  request.set_force(args.Has("force"));
  int64_t priority = 0;
  if (args.Has("priority") && !absl::SimpleAtoi(args.Get("priority"), &priority)) {
    std::fprintf(stderr, "loractl sweep: --priority expects an integer\n");
    return kUsage;
  }
  request.set_priority(static_cast<int32_t>(priority));
  request.set_request_id(args.Get("request-id", NewRequestId()));
  grpc::Status status;
  lorad::v1::Sweep sweep;
  for (int attempt = 0; attempt < 4; ++attempt) {
    auto ctx = client.Context();
    status = client.stub()->SubmitSweep(ctx.get(), request, &sweep);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500 << attempt));
  }
  if (!status.ok()) return ExitFor(status, "sweep");
  std::fprintf(stderr, "sweep %s: %d job(s) queued\n", sweep.name().c_str(), sweep.jobs_total());
  for (const auto& e : sweep.submit_errors()) std::fprintf(stderr, "  not queued: %s\n", e.c_str());
  std::printf("%lld\n", static_cast<long long>(sweep.id()));
  return sweep.submit_errors_size() > 0 ? kRefused : kOk;
}

int Sweep(Client& client, const Args& args) {
  if (args.positional.empty()) {
    std::fprintf(stderr, "loractl sweep: expected SWEEP.toml, show, ls or cancel\n%s", kUsageText);
    return kUsage;
  }
  const std::string sub = args.positional[0];
  if (sub == "ls") {
    lorad::v1::ListSweepsResponse response;
    auto ctx = client.Context();
    grpc::Status status = client.stub()->ListSweeps(ctx.get(), lorad::v1::ListSweepsRequest(), &response);
    if (!status.ok()) return ExitFor(status, "sweep ls");
    if (args.Has("json")) {
      std::printf("%s\n", Json(response).c_str());
      return kOk;
    }
    for (const auto& s : response.sweeps()) {
      std::printf("%-5lld %-32s %s\n", static_cast<long long>(s.id()), s.name().c_str(), SweepSummary(s).c_str());
    }
    return kOk;
  }
  if (sub == "show" || sub == "cancel") {
    if (args.positional.size() != 2) {
      std::fprintf(stderr, "loractl sweep %s: expected a sweep id\n", sub.c_str());
      return kUsage;
    }
    auto sweep = lorad::client::GetSweep(client, args.positional[1]);
    if (!sweep.ok()) return ExitFor(sweep.status(), absl::StrCat("sweep ", sub));
    if (sub == "cancel") {
      lorad::v1::CancelSweepRequest request;
      request.set_sweep_id(sweep->id());
      request.set_reason(args.Get("reason"));
      lorad::v1::Sweep after;
      auto ctx = client.Context();
      grpc::Status status = client.stub()->CancelSweep(ctx.get(), request, &after);
      if (!status.ok()) return ExitFor(status, "sweep cancel");
      std::printf("sweep %lld %s: %s\n", static_cast<long long>(after.id()), after.name().c_str(),
                  SweepSummary(after).c_str());
      return kOk;
    }
    auto rows = lorad::client::SweepRows(client, *sweep);
    if (!rows.ok()) return ExitFor(rows.status(), "sweep show");
    const auto format = args.Has("json") ? lorad::planner::TableFormat::kJson
                        : args.Has("csv") ? lorad::planner::TableFormat::kCsv
                                          : lorad::planner::TableFormat::kText;
    if (format == lorad::planner::TableFormat::kText) {
      std::printf("sweep %lld %s (%s): %s\n", static_cast<long long>(sweep->id()), sweep->name().c_str(),
                  sweep->mode().c_str(), SweepSummary(*sweep).c_str());
    }
    std::printf("%s", lorad::planner::FormatSweepTable(*rows, format).c_str());
    return kOk;
  }
  if (args.positional.size() != 1) {
    std::fprintf(stderr, "loractl sweep: expected one SWEEP.toml\n%s", kUsageText);
    return kUsage;
  }
  return SweepSubmit(client, args);
}

int Plot(Client& client, const Args& args) {
  if (args.positional.size() + (args.Has("sweep") ? 1 : 0) != 1 || !args.Has("o")) {
    std::fprintf(stderr, "loractl plot: expected JOB|SWEEP_NAME|--sweep ID -o loss.png\n");
    return kUsage;
  }
  lorad::charts::LossPlotOptions options;
  if (args.Has("smoothing") && !absl::SimpleAtod(args.Get("smoothing"), &options.smoothing)) {
    std::fprintf(stderr, "loractl plot: --smoothing expects a number in [0, 1)\n");
    return kUsage;
  }
  std::vector<lorad::charts::LossSeries> series;
  int64_t job_id = 0;
  if (!args.Has("sweep") && absl::SimpleAtoi(args.positional[0], &job_id)) {
    auto events = lorad::client::ReadJobEvents(client, job_id);
    if (!events.ok()) return ExitFor(events.status(), "plot");
    auto curve = lorad::client::CurveFromEvents(*events);
    series.push_back({absl::StrCat("job ", job_id), std::move(curve.loss)});
    options.title = absl::StrCat("job ", job_id, " loss");
  } else {
    auto sweep = lorad::client::GetSweep(client, args.Has("sweep") ? args.Get("sweep") : args.positional[0]);
    if (!sweep.ok()) return ExitFor(sweep.status(), "plot");
    auto all = lorad::client::SweepLossSeries(client, *sweep);
    if (!all.ok()) return ExitFor(all.status(), "plot");
    series = std::move(*all);
    options.title = absl::StrCat("sweep ", sweep->name(), " loss");
  }
  auto image = lorad::charts::RenderLossPlot(series, options);
  if (!image.ok()) return ExitFor(image.status(), "plot");
  if (auto s = lorad::charts::WritePng(*image, args.Get("o")); !s.ok()) return ExitFor(s, "plot");
  std::printf("%s\n", args.Get("o").c_str());
  return kOk;
}

int Grid(Client& client, const Args& args) {
  if (args.positional.size() != 1 || !args.Has("o")) {
    std::fprintf(stderr, "loractl grid: expected SWEEP -o samples.png\n");
    return kUsage;
  }
  auto sweep = lorad::client::GetSweep(client, args.positional[0]);
  if (!sweep.ok()) return ExitFor(sweep.status(), "grid");
  const fs::path cache = args.Get("cache", (fs::temp_directory_path() /
                                            absl::StrCat("loractl-previews-", sweep->id())).string());
  auto grid = lorad::client::FetchSampleGrid(client, *sweep, cache);
  if (!grid.ok()) return ExitFor(grid.status(), "grid");
  lorad::charts::SampleGridOptions options;
  int64_t cell = 0;
  if (args.Has("cell")) {
    if (!absl::SimpleAtoi(args.Get("cell"), &cell) || cell < 16) {
      std::fprintf(stderr, "loractl grid: --cell expects a size in pixels (>= 16)\n");
      return kUsage;
    }
    options.cell_size = static_cast<int>(cell);
  }
  auto image = lorad::charts::RenderSampleGrid(*grid, options);
  if (!image.ok()) return ExitFor(image.status(), "grid");
  if (auto s = lorad::charts::WritePng(*image, args.Get("o")); !s.ok()) return ExitFor(s, "grid");
  std::printf("%s\n", args.Get("o").c_str());
  return kOk;
}

int FetchSweep(Client& client, const Args& args) {
  auto sweep = lorad::client::GetSweep(client, args.Get("sweep"));
  if (!sweep.ok()) return ExitFor(sweep.status(), "fetch --sweep");
  const fs::path out = args.Get("out", ".");
  int fetched_count = 0;
  for (const auto& job : sweep->jobs()) {
    lorad::v1::ListArtifactsRequest request;
    request.set_job_id(job.id());
    request.set_kind(lorad::v1::ARTIFACT_KIND_LORA);
    lorad::v1::ListArtifactsResponse response;
    auto ctx = client.Context();
    grpc::Status status = client.stub()->ListArtifacts(ctx.get(), request, &response);
    if (!status.ok()) return ExitFor(status, absl::StrCat("fetch --sweep: job ", job.id()));
    const lorad::v1::Artifact* best = nullptr;
    for (const auto& a : response.artifacts()) {
      if (a.is_directory()) continue;
      if (best == nullptr || (a.is_final() && !best->is_final()) ||
          (a.is_final() == best->is_final() && a.step() > best->step())) {
        best = &a;
      }
    }
    if (best == nullptr) {
      std::fprintf(stderr, "job %lld (%s): no LoRA\n", static_cast<long long>(job.id()), job.name().c_str());
      continue;
    }
    // One folder per job: LoRA file names may repeat across a sweep's jobs.
    const fs::path target = out / std::to_string(job.id()) / fs::path(best->name()).filename();
    absl::Status fetched = client.FetchArtifact(*best, target);
    if (!fetched.ok()) return ExitFor(fetched, absl::StrCat("fetch ", best->name()));
    std::printf("%s\n", target.string().c_str());
    ++fetched_count;
  }
  return fetched_count > 0 ? kOk : kNotFound;
}


// lorad-curate next to loractl (installed), in the build tree, or on PATH.
std::string CurateBinary(const char* argv0) {
  std::error_code ec;
  const fs::path self = fs::canonical("/proc/self/exe", ec);
  const fs::path dir = ec ? fs::path(argv0).parent_path() : self.parent_path();
  for (const fs::path& candidate : {dir / "lorad-curate", dir / ".." / "core" / "data" / "lorad-curate"}) {
    if (fs::exists(candidate, ec)) return candidate.string();
  }
  return "lorad-curate";
}

absl::StatusOr<std::string> LocalCurationJson(const fs::path& folder, const char* argv0) {
  int txt = 0, caption = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(folder, ec); !ec && it != fs::end(it); it.increment(ec)) {
    txt += it->path().extension() == ".txt" ? 1 : 0;
    caption += it->path().extension() == ".caption" ? 1 : 0;
  }
  lorad::SubprocessOptions options;
  options.argv = {CurateBinary(argv0), folder.string(), "--json"};
  if (txt > caption) options.argv.insert(options.argv.end(), {"--caption-extension", ".txt"});
  auto run = lorad::RunSubprocess(options);
  if (!run.ok()) return run.status();
  if (!run->succeeded()) {
    return absl::FailedPreconditionError(absl::StrCat("lorad-curate failed on ", folder.string(), " (",
                                                      run->Describe(), "): ", run->stderr_tail));
  }
  return std::move(run->stdout_text);
}

int Advise(Client& client, const Args& args, const char* argv0) {
  if (args.positional.size() != 1 || !args.Has("kind")) {
    std::fprintf(stderr, "loractl advise: expected DATASET --kind character|style|concept\n");
    return kUsage;
  }
  auto kind = lorad::planner::ParseTrainingKind(args.Get("kind"));
  if (!kind.ok()) return ExitFor(kind.status(), "advise");
  lorad::planner::ModelFamily family = lorad::planner::ModelFamily::kUnknown;
  if (args.Has("family")) {
    auto parsed = lorad::planner::ParseModelFamily(args.Get("family"));
    if (!parsed.ok()) return ExitFor(parsed.status(), "advise");
    family = *parsed;
  }
  lorad::planner::AdvisorInput input;
  input.kind = *kind;
  if (args.Has("config")) {
    absl::Status read_status;
    const std::string config = ReadText(args.Get("config"), &read_status);
    if (!read_status.ok()) return ExitFor(read_status, "advise");
    // The trainer's own reader; the model and dataset may be given elsewhere.
    auto training = lorad::train::ParseTrainOptions(config, {});
    if (!training.ok()) return ExitFor(training.status(), "advise");
    input.config = *training;
  }
  const std::string dataset = args.positional[0];
  std::string report_json;
  if (fs::is_directory(dataset)) {
    auto local = LocalCurationJson(dataset, argv0);
    if (!local.ok()) return ExitFor(local.status(), "advise");
    report_json = std::move(*local);
  } else {
    lorad::v1::InspectDatasetRequest request;
    request.set_dataset_id(dataset);
    lorad::v1::InspectDatasetResponse response;
    auto ctx = client.Context();
    grpc::Status status = client.stub()->InspectDataset(ctx.get(), request, &response);
    if (!status.ok()) return ExitFor(status, "advise");
    report_json = response.report_json();
  }
  auto facts = lorad::planner::FactsFromCurationJson(report_json, family);
  if (!facts.ok()) return ExitFor(facts.status(), "advise");
  input.dataset = *facts;
  const lorad::planner::AdviceReport report = lorad::planner::Advise(input);
  std::printf("%s", (args.Has("json") ? lorad::planner::RenderJson(report) + "\n"
                                      : lorad::planner::RenderText(report)).c_str());
  return report.blocking() ? kRefused : kOk;
}

}  // namespace

int main(int argc, char** argv) {
  lorad::client::ConnectionFlags flags;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string v;
    if (a == "--server" && value(&v)) flags.server = v;
    else if (a == "--token" && value(&v)) flags.token = v;
    else if (a == "--profile" && value(&v)) flags.profile = v;
    else if (a == "--tls") flags.tls = true;
    else if (a == "--ca" && value(&v)) flags.ca_file = v;
    else if (a == "--timeout" && value(&v)) {
      double seconds = 0;
      if (!absl::SimpleAtod(v, &seconds) || seconds <= 0) {
        std::fprintf(stderr, "loractl: --timeout expects seconds\n");
        return kUsage;
      }
      flags.timeout = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
    } else if (a == "--help" || a == "-h") {
      std::printf("%s", kUsageText);
      return kOk;
    } else break;
  }
  if (i >= argc) {
    std::fprintf(stderr, "%s", kUsageText);
    return kUsage;
  }
  const std::string command = argv[i];
  auto args = ParseArgs(argc, argv, i + 1);
  if (!args.ok()) {
    std::fprintf(stderr, "loractl %s: %s\n", command.c_str(), std::string(args.status().message()).c_str());
    return kUsage;
  }
  std::vector<std::string> warnings;
  auto connection =
      lorad::client::ResolveConnection(flags, lorad::client::ClientEnvironment::FromEnvironment(), &warnings);
  for (const auto& warning : warnings) std::fprintf(stderr, "loractl: warning: %s\n", warning.c_str());
  if (!connection.ok()) {
    std::fprintf(stderr, "loractl: %s\n", std::string(connection.status().message()).c_str());
    return kUsage;
  }
  Client client(*connection);
  if (command == "submit") return Submit(client, *args);
  if (command == "ls") return List(client, *args);
  if (command == "show") return Show(client, *args);
  if (command == "tail") return Tail(client, *args);
  if (command == "cancel") return Cancel(client, *args);
  if (command == "fetch") return Fetch(client, *args);
  if (command == "datasets") return Datasets(client, *args);
  if (command == "models") return Models(client, *args);
  if (command == "info") return Info(client, *args);
  if (command == "sweep") return Sweep(client, *args);
  if (command == "plot") return Plot(client, *args);
  if (command == "grid") return Grid(client, *args);
  if (command == "advise") return Advise(client, *args, argv[0]);
  std::fprintf(stderr, "loractl: unknown command '%s'\n%s", command.c_str(), kUsageText);
  return kUsage;
}
