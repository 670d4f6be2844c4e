// The dashboard's HTTP layer through a real daemon (tests/daemon_harness.h):
// the token on every route, the login cookie and ?token=, path confinement of
// downloads, Server-Sent Events resumed with Last-Event-ID, the same-origin
// check on cancel, and /metrics counters moving after a job.
#include <httplib.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/daemon_harness.h"

namespace lorad::tests {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr char kToken[] = "test-token";

httplib::Headers Bearer() { return {{"Authorization", absl::StrCat("Bearer ", kToken)}}; }

// One daemon and one finished 4-step job (a LoRA every 2 steps) for the suite.
class HttpDashboardTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new Daemon(fs::temp_directory_path() / absl::StrCat("lorad-http-test-", getpid()), DaemonOptions{});
    daemon_->Start();
    dataset_ = new std::string(daemon_->UploadTestDataset(3));
    job_ = daemon_->Submit(Daemon::TinyConfig(4, 2), *dataset_, "dash");
    daemon_->WaitFor(job_, [](const auto& j) { return IsTerminal(j.state()); }, 300);
  }
  static void TearDownTestSuite() {
    if (daemon_ != nullptr) {
      daemon_->Stop();
      fs::remove_all(daemon_->data_dir());
    }
    delete daemon_;
    delete dataset_;
    daemon_ = nullptr;
  }

  static httplib::Client Http() {
    httplib::Client client("127.0.0.1", daemon_->http_port());
    client.set_url_encode(false);  // send the paths exactly as written ("..", "%2e")
    client.set_read_timeout(60);
    return client;
  }

  static Daemon* daemon_;
  static std::string* dataset_;
  static int64_t job_;
};
Daemon* HttpDashboardTest::daemon_ = nullptr;
std::string* HttpDashboardTest::dataset_ = nullptr;
int64_t HttpDashboardTest::job_ = 0;

// Every page, asset and API route, with and without a valid id.
std::vector<std::string> AllGetRoutes(int64_t job, const std::string& dataset) {
  return {"/", "/jobs/1", absl::StrCat("/jobs/", job), "/sweeps/none", "/datasets", absl::StrCat("/datasets/", dataset),
          "/server", "/static/app.js", "/static/charts.js", "/static/style.css", "/static/index.html",
          "/api/server", "/api/jobs", "/api/jobs?state=running", absl::StrCat("/api/jobs/", job),
          absl::StrCat("/api/jobs/", job, "/events"), absl::StrCat("/api/jobs/", job, "/stream"),
          absl::StrCat("/api/jobs/", job, "/files/tiny.safetensors"), "/api/sweeps", "/api/sweeps/none",
          "/api/datasets", absl::StrCat("/api/datasets/", dataset, "/report"),
          absl::StrCat("/api/datasets/", dataset, "/files/1_shape/img0.png"), "/metrics", "/no/such/page"};
}

TEST_F(HttpDashboardTest, EveryRouteWithoutTheTokenAnswers401) {
  auto http = Http();
  for (const auto& path : AllGetRoutes(job_, *dataset_)) {
    for (const httplib::Headers& headers :
         {httplib::Headers{}, httplib::Headers{{"Authorization", "Bearer wrong"}},
          httplib::Headers{{"Cookie", "lorad_token=wrong"}}}) {
      auto res = http.Get(path.c_str(), headers);
      ASSERT_TRUE(res) << path;
      EXPECT_EQ(res->status, 401) << path;
      EXPECT_EQ(res->body.find("tiny"), std::string::npos) << path << " leaked data: " << res->body.substr(0, 200);
    }
    auto wrong_query = http.Get(absl::StrCat(path, path.find('?') == std::string::npos ? "?" : "&", "token=nope").c_str());
    ASSERT_TRUE(wrong_query);
    EXPECT_EQ(wrong_query->status, 401) << path << "?token=nope";
  }
  auto cancel = http.Post(absl::StrCat("/api/jobs/", job_, "/cancel").c_str());
  ASSERT_TRUE(cancel);
  EXPECT_EQ(cancel->status, 401);
  // Pages answer with the login form, the API with JSON.
  auto page = http.Get("/");
  EXPECT_NE(page->body.find("name=\"token\""), std::string::npos);
  EXPECT_EQ(json::parse(http.Get("/api/jobs")->body).count("error"), 1u);
  // The login page itself is open.
  auto login = http.Get("/login");
  ASSERT_TRUE(login);
  EXPECT_EQ(login->status, 200);
  // And with the token every route is served (the unknown path: 404).
  for (const auto& path : AllGetRoutes(job_, *dataset_)) {
    if (absl::StrContains(path, "/stream")) continue;  // follows forever on a live job; tested below
    auto res = http.Get(path.c_str(), Bearer());
    ASSERT_TRUE(res) << path;
    EXPECT_NE(res->status, 401) << path;
  }
}

TEST_F(HttpDashboardTest, LoginSetsAnHttpOnlyCookieThatAuthorises) {
  auto http = Http();
  auto refused = http.Post("/login", "token=wrong&next=/server", "application/x-www-form-urlencoded");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 401);
  EXPECT_FALSE(refused->has_header("Set-Cookie"));

  auto login = http.Post("/login", "token=test-token&next=/server", "application/x-www-form-urlencoded");
  ASSERT_TRUE(login);
  EXPECT_EQ(login->status, 303);
  EXPECT_EQ(login->get_header_value("Location"), "/server");
  const std::string cookie = login->get_header_value("Set-Cookie");
  EXPECT_NE(cookie.find("lorad_token=test-token"), std::string::npos) << cookie;
  EXPECT_NE(cookie.find("HttpOnly"), std::string::npos) << cookie;
  EXPECT_NE(cookie.find("SameSite=Strict"), std::string::npos) << cookie;

  auto info = http.Get("/api/server", {{"Cookie", "other=1; lorad_token=test-token"}});
  ASSERT_TRUE(info);
  ASSERT_EQ(info->status, 200) << info->body;
  EXPECT_FALSE(json::parse(info->body)["version"].get<std::string>().empty());

  // An open redirect through `next` is refused.
  auto away = http.Post("/login", "token=test-token&next=//evil.example/", "application/x-www-form-urlencoded");
  EXPECT_EQ(away->get_header_value("Location"), "/");

  // ?token= once: a page redirects to itself without it and sets the cookie.
  auto once = http.Get("/datasets?token=test-token");
  ASSERT_TRUE(once);
  EXPECT_EQ(once->status, 303);
  EXPECT_EQ(once->get_header_value("Location"), "/datasets");
  EXPECT_NE(once->get_header_value("Set-Cookie").find("lorad_token=test-token"), std::string::npos);
  auto api = http.Get("/api/jobs?token=test-token");
  ASSERT_TRUE(api);
  EXPECT_EQ(api->status, 200);
}

TEST_F(HttpDashboardTest, DownloadsStayInsideTheRoots) {
  auto http = Http();
  auto detail = http.Get(absl::StrCat("/api/jobs/", job_).c_str(), Bearer());
  ASSERT_EQ(detail->status, 200) << detail->body;
  const json body = json::parse(detail->body);
  ASSERT_EQ(body["job"]["state"], "JOB_STATE_SUCCEEDED") << body["job"].dump();
  std::string lora;
  int64_t bytes = 0;
  for (const auto& a : body["artifacts"]) {
    if (a["kind"] == "ARTIFACT_KIND_LORA" && a["is_final"].get<bool>()) {
      lora = a["name"];
      ASSERT_TRUE(absl::SimpleAtoi(a["bytes"].get<std::string>(), &bytes));
    }
  }
  ASSERT_FALSE(lora.empty()) << body["artifacts"].dump();
  auto file = http.Get(absl::StrCat("/api/jobs/", job_, "/files/", lora).c_str(), Bearer());
  ASSERT_EQ(file->status, 200);
  EXPECT_EQ(static_cast<int64_t>(file->body.size()), bytes);
  EXPECT_NE(file->get_header_value("Content-Disposition").find("attachment"), std::string::npos);

  // ".." in any spelling, absolute paths and names that are no artifact: 404.
  for (const std::string& name :
       {std::string("../../../lorad.db"), std::string("%2e%2e/%2e%2e/%2e%2e/lorad.db"), std::string("output/../x"),
        std::string("/etc/passwd"), std::string("..%2f..%2florad.db"), std::string("config.toml")}) {
    auto res = http.Get(absl::StrCat("/api/jobs/", job_, "/files/", name).c_str(), Bearer());
    ASSERT_TRUE(res) << name;
    EXPECT_EQ(res->status, 404) << name << ": " << res->body;
  }
  auto image = http.Get(absl::StrCat("/api/datasets/", *dataset_, "/files/1_shape/img0.png").c_str(), Bearer());
  ASSERT_EQ(image->status, 200) << image->body;
  EXPECT_EQ(image->get_header_value("Content-Type"), "image/png");
  EXPECT_EQ(image->body.substr(1, 3), "PNG");
  for (const std::string& name : {std::string("../../lorad.db"), std::string("%2e%2e/%2e%2e/lorad.db"),
                                  std::string("1_shape/img0.txt"), std::string("1_shape/../../../lorad.db")}) {
    auto res = http.Get(absl::StrCat("/api/datasets/", *dataset_, "/files/", name).c_str(), Bearer());
    ASSERT_TRUE(res) << name;
    EXPECT_EQ(res->status, 404) << name << ": " << res->body;
  }

  // A symlink swapped in for a recorded file, pointing out of the roots: 403.
  const fs::path outside = daemon_->data_dir().parent_path() / absl::StrCat("outside-", getpid(), ".png");
  std::ofstream(outside) << "\x89PNG secret";
  auto list = json::parse(http.Get("/api/datasets", Bearer())->body);
  const fs::path folder = list["datasets"][0]["path"].get<std::string>();
  fs::create_symlink(outside, folder / "1_shape" / "link.png");
  auto link = http.Get(absl::StrCat("/api/datasets/", *dataset_, "/files/1_shape/link.png").c_str(), Bearer());
  EXPECT_EQ(link->status, 403) << link->body;
  EXPECT_EQ(link->body.find("secret"), std::string::npos);
  fs::remove(folder / "1_shape" / "link.png");

  const fs::path job_dir = daemon_->data_dir() / "jobs";
  fs::path recorded;
  for (const auto& entry : fs::recursive_directory_iterator(job_dir)) {
    if (entry.path().filename() == fs::path(lora).filename()) recorded = entry.path();
  }
  ASSERT_FALSE(recorded.empty());
  const fs::path kept = recorded.string() + ".kept";
  fs::rename(recorded, kept);
  fs::create_symlink(outside, recorded);
  auto swapped = http.Get(absl::StrCat("/api/jobs/", job_, "/files/", lora).c_str(), Bearer());
  EXPECT_EQ(swapped->status, 403) << swapped->body;
  EXPECT_EQ(swapped->body.find("secret"), std::string::npos);
  fs::remove(recorded);
  fs::rename(kept, recorded);
  fs::remove(outside);
}

struct SseEvent {
  int64_t id = -1;
  std::string type = "message";
  std::string data;
};

// Reads a job's event stream until `stop` holds for an event or the stream
// ends; returns what was read (each event's id, type and data).
std::vector<SseEvent> ReadStream(httplib::Client& http, const std::string& path, const httplib::Headers& headers,
                                 const std::function<bool(const SseEvent&)>& stop) {
  std::vector<SseEvent> events;
  std::string buffer;
  SseEvent current;
  bool stopped = false;
  auto res = http.Get(path.c_str(), headers, [&](const char* data, size_t length) {
    buffer.append(data, length);
    for (size_t end = buffer.find('\n'); end != std::string::npos; end = buffer.find('\n')) {
      const std::string line = buffer.substr(0, end);
      buffer.erase(0, end + 1);
      if (line.empty()) {
        if (!current.data.empty() || current.type != "message") {
          events.push_back(current);
          if (stop(current)) stopped = true;
        }
        current = SseEvent{};
        if (stopped) return false;
      } else if (line.rfind("id: ", 0) == 0) {
        EXPECT_TRUE(absl::SimpleAtoi(line.substr(4), &current.id)) << line;
      } else if (line.rfind("event: ", 0) == 0) {
        current.type = line.substr(7);
      } else if (line.rfind("data: ", 0) == 0) {
        current.data += line.substr(6);
      }
    }
    return true;
  });
  if (!stopped) {
    EXPECT_TRUE(res) << path;
    if (res) EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  }
  return events;
}

std::vector<int64_t> Ids(const std::vector<SseEvent>& events) {
  std::vector<int64_t> ids;
  for (const auto& e : events) {
    if (e.type != "message") continue;
    ids.push_back(e.id);
    EXPECT_EQ(json::parse(e.data)["seq"], std::to_string(e.id)) << e.data;
  }
  return ids;
}

TEST_F(HttpDashboardTest, StreamResumesWithLastEventIdExactlyWhereItLeft) {
  auto http = Http();
  const int64_t last_seq = daemon_->GetJob(job_).last_seq();
  ASSERT_GT(last_seq, 8);
  // A finished job: the replay from Last-Event-ID k is k+1..last, then "end".
  for (int64_t k : {int64_t{0}, int64_t{3}, last_seq - 1, last_seq}) {
    httplib::Headers headers = Bearer();
    headers.emplace("Last-Event-ID", std::to_string(k));
    const auto events = ReadStream(http, absl::StrCat("/api/jobs/", job_, "/stream"), headers,
                                   [](const SseEvent&) { return false; });
    std::vector<int64_t> want;
    for (int64_t seq = k + 1; seq <= last_seq; ++seq) want.push_back(seq);
    EXPECT_EQ(Ids(events), want) << "Last-Event-ID " << k;
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back().type, "end");
  }
  httplib::Headers bad = Bearer();
  bad.emplace("Last-Event-ID", "abc");
  EXPECT_EQ(http.Get(absl::StrCat("/api/jobs/", job_, "/stream").c_str(), bad)->status, 400);

  // A live job: read a few events, drop the connection, resume with the last
  // id seen; together they are every event once, in order, as gRPC replays them.
  const int64_t live = daemon_->Submit(Daemon::TinyConfig(12, 0), *dataset_, "live");
  int progress_seen = 0;
  auto first = ReadStream(http, absl::StrCat("/api/jobs/", live, "/stream"), Bearer(), [&](const SseEvent& e) {
    if (e.type == "message" && json::parse(e.data)["type"] == "progress") ++progress_seen;
    return progress_seen >= 2;
  });
  ASSERT_GE(progress_seen, 2);
  const int64_t resume_after = first.back().id;
  httplib::Headers headers = Bearer();
  headers.emplace("Last-Event-ID", std::to_string(resume_after));
  auto rest = ReadStream(http, absl::StrCat("/api/jobs/", live, "/stream"), headers,
                         [](const SseEvent&) { return false; });
  ASSERT_FALSE(rest.empty());
  EXPECT_EQ(rest.back().type, "end");
  std::vector<int64_t> all = Ids(first);
  for (int64_t id : Ids(rest)) all.push_back(id);
  std::vector<int64_t> grpc_ids;
  for (const auto& e : daemon_->ReadAllEvents(live)) grpc_ids.push_back(e.seq());
  EXPECT_EQ(all, grpc_ids);
  EXPECT_EQ(daemon_->GetJob(live).state(), lorad::v1::JOB_STATE_SUCCEEDED);
}

TEST_F(HttpDashboardTest, CancelNeedsTheSameOriginWithTheCookie) {
  auto http = Http();
  const int64_t victim = daemon_->Submit(Daemon::TinyConfig(400, 0), *dataset_, "victim");
  const std::string path = absl::StrCat("/api/jobs/", victim, "/cancel");
  const std::string host = absl::StrCat("127.0.0.1:", daemon_->http_port());
  auto forged = http.Post(path.c_str(), {{"Cookie", "lorad_token=test-token"}, {"Origin", "http://evil.example"}},
                          "", "application/x-www-form-urlencoded");
  ASSERT_TRUE(forged);
  EXPECT_EQ(forged->status, 403);
  auto no_origin = http.Post(path.c_str(), {{"Cookie", "lorad_token=test-token"}}, "", "text/plain");
  EXPECT_EQ(no_origin->status, 403);
  EXPECT_FALSE(daemon_->GetJob(victim).cancel_requested());
  EXPECT_FALSE(IsTerminal(daemon_->GetJob(victim).state()));

  auto ok = http.Post(path.c_str(), {{"Cookie", "lorad_token=test-token"}, {"Origin", absl::StrCat("http://", host)}},
                      "", "text/plain");
  ASSERT_TRUE(ok);
  ASSERT_EQ(ok->status, 200) << ok->body;
  const auto job = daemon_->WaitFor(victim, [](const auto& j) { return IsTerminal(j.state()); }, 120);
  EXPECT_EQ(job.state(), lorad::v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(job.reason().rfind("cancelled from the dashboard", 0), 0u) << job.reason();
}

// name{labels} value lines of an exposition, keyed by the text before the value.
std::map<std::string, double> Samples(const std::string& text) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (line.front() == '#') continue;
    const size_t space = line.rfind(' ');
    double value = 0;
    EXPECT_TRUE(absl::SimpleAtod(line.substr(space + 1), &value)) << line;
    out[std::string(line.substr(0, space))] = value;
  }
  return out;
}

TEST_F(HttpDashboardTest, MetricsCountersMoveAfterAJob) {
  auto http = Http();
  auto before_res = http.Get("/metrics", Bearer());
  ASSERT_EQ(before_res->status, 200);
  EXPECT_EQ(before_res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  auto before = Samples(before_res->body);
  const std::string submit_ok = "lorad_rpc_requests_total{method=\"lorad.v1.Lorad/SubmitJob\",code=\"OK\"}";
  const std::string succeeded = "lorad_jobs{state=\"succeeded\"}";
  const std::string get_count = "lorad_rpc_duration_seconds_count{method=\"lorad.v1.Lorad/GetJob\"}";

  const int64_t job = daemon_->Submit(Daemon::TinyConfig(3, 0), *dataset_, "metrics");
  // While it runs: its loss and speed are exported from its progress events.
  bool saw_running = false;
  for (int i = 0; i < 600 && !saw_running; ++i) {
    auto now = Samples(http.Get("/metrics", Bearer())->body);
    const std::string labels = absl::StrCat("{job=\"", job, "\",name=\"metrics\"}");
    if (now.count("lorad_job_loss" + labels) && now.count("lorad_job_steps_per_second" + labels)) {
      saw_running = true;
      EXPECT_GT(now["lorad_job_step" + labels], 0);
      EXPECT_EQ(now["lorad_job_gpu_memory_bytes" + labels], 0);  // CPU training
      EXPECT_EQ(now["lorad_slots_busy"], 1);
    }
    if (IsTerminal(daemon_->GetJob(job).state())) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(saw_running) << "no running job's progress in /metrics";
  daemon_->WaitFor(job, [](const auto& j) { return IsTerminal(j.state()); }, 300);

  auto after = Samples(http.Get("/metrics", Bearer())->body);
  EXPECT_EQ(after[submit_ok], before[submit_ok] + 1);
  EXPECT_EQ(after[succeeded], before[succeeded] + 1);
  EXPECT_GT(after[get_count], before[get_count]);
  EXPECT_EQ(after["lorad_queue_length"], 0);
  // Histogram buckets are cumulative and end at the count.
  const std::string method = "method=\"lorad.v1.Lorad/GetJob\"";
  EXPECT_EQ(after[absl::StrCat("lorad_rpc_duration_seconds_bucket{", method, ",le=\"+Inf\"}")], after[get_count]);
  EXPECT_LE(after[absl::StrCat("lorad_rpc_duration_seconds_bucket{", method, ",le=\"0.001\"}")],
            after[absl::StrCat("lorad_rpc_duration_seconds_bucket{", method, ",le=\"1\"}")]);
  // A failed call is counted under its code.
  auto stranger = daemon_->NewClient("wrong");
  lorad::v1::ServerInfo info;
  auto ctx = stranger->Context();
  EXPECT_FALSE(stranger->stub()->GetServerInfo(ctx.get(), {}, &info).ok());
  auto denied = Samples(http.Get("/metrics", Bearer())->body);
  EXPECT_EQ(denied["lorad_rpc_requests_total{method=\"lorad.v1.Lorad/GetServerInfo\",code=\"UNAUTHENTICATED\"}"],
            after["lorad_rpc_requests_total{method=\"lorad.v1.Lorad/GetServerInfo\",code=\"UNAUTHENTICATED\"}"] + 1);

  // An open event stream is a fan-out subscriber.
  std::atomic<bool> opened{false};
  const int64_t slow = daemon_->Submit(Daemon::TinyConfig(400, 0), *dataset_, "subscriber");
  std::thread reader([&] {
    auto client = Http();
    ReadStream(client, absl::StrCat("/api/jobs/", slow, "/stream"), Bearer(), [&](const SseEvent&) {
      opened = true;
      return IsTerminal(daemon_->GetJob(slow).state());
    });
  });
  while (!opened) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_GE(Samples(http.Get("/metrics", Bearer())->body)["lorad_event_subscribers"], 1);
  lorad::v1::CancelJobRequest cancel;
  cancel.set_job_id(slow);
  lorad::v1::Job cancelled;
  auto cancel_ctx = daemon_->client().Context();
  EXPECT_TRUE(daemon_->client().stub()->CancelJob(cancel_ctx.get(), cancel, &cancelled).ok());
  reader.join();
}

}  // namespace
}  // namespace lorad::tests
