#include "core/train/distributed.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>

#include <torch/version.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/logging.h"
#include "core/base/status_macros.h"

// The c10d headers only declare the backends the build enables; these are set
// by core/train/CMakeLists.txt where the gloo / NCCL headers exist.
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef LORAD_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef LORAD_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace lorad::train {
namespace {

// LibTorch 1.13's backends are ProcessGroups; 2.x split them into Backends
// behind a ProcessGroup. Both expose allreduce / barrier with the same shape.
#if TORCH_VERSION_MAJOR >= 2
using CollectiveBackend = c10d::Backend;
#else
using CollectiveBackend = c10d::ProcessGroup;
#endif

constexpr char kHeartbeatPrefix[] = "lorad/heartbeat/";
constexpr char kFailurePrefix[] = "lorad/failed/";
constexpr char kArrivedKey[] = "lorad/arrived";
constexpr auto kHeartbeatPeriod = std::chrono::milliseconds(500);
// A rank whose heartbeat has not moved for this long is taken for dead.
constexpr auto kHeartbeatStale = std::chrono::milliseconds(2000);

std::string FirstLine(const std::string& text) {
  const size_t nl = text.find('\n');
  return nl == std::string::npos ? text : text.substr(0, nl);
}

absl::StatusOr<int> ParseInt(const std::string& what, const std::string& value, int min, int max) {
  int v = 0;
  if (!absl::SimpleAtoi(value, &v) || v < min || v > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be an integer in [", min, ", ", max, "], got \"", value, "\""));
  }
  return v;
}

// The local address a connection to `host` leaves from (no packet is sent: a
// connected UDP socket only picks the route), so Gloo listens where the peers
// reach this rank, including across network namespaces.
std::string LocalAddressToward(const std::string& host, int port) {
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &dst.sin_addr) != 1) return "";
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) == 0) {
    sockaddr_in local{};
    socklen_t len = sizeof(local);
    char text[INET_ADDRSTRLEN] = {};
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
        ::inet_ntop(AF_INET, &local.sin_addr, text, sizeof(text)) != nullptr) {
      out = text;
    }
  }
  ::close(fd);
  return out;
}

c10::intrusive_ptr<c10d::TCPStore> StoreClient(const DistributedSpec& spec, bool server) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(spec.master_port);
  options.isServer = server;
  options.waitWorkers = false;  // the rendezvous below waits, with a message naming who is missing
  options.timeout = spec.timeout;
  return c10::make_intrusive<c10d::TCPStore>(spec.master_addr, options);
}

}  // namespace

EnvLookup ProcessEnvironment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr || *v == '\0') return std::nullopt;
    return std::string(v);
  };
}

absl::StatusOr<DistributedSpec> ResolveDistributed(const TrainConfig& config, const EnvLookup& env) {
  DistributedSpec spec;
  if (config.ddp_timeout) {
    spec.timeout = std::chrono::milliseconds(static_cast<int64_t>(*config.ddp_timeout * 60'000.0));
  }
  if (auto world = env("WORLD_SIZE")) {
    // torchrun's variables (torch.distributed.run): they win over the config keys.
    ASSIGN_OR_RETURN(spec.world_size, ParseInt("WORLD_SIZE", *world, 1, 4096));
    const auto rank = env("RANK");
    if (!rank && spec.world_size > 1) {
      return absl::InvalidArgumentError("WORLD_SIZE is set but RANK is not; set both (torchrun sets both)");
    }
    ASSIGN_OR_RETURN(spec.rank, ParseInt("RANK", rank.value_or("0"), 0, spec.world_size - 1));
    ASSIGN_OR_RETURN(spec.local_rank, ParseInt("LOCAL_RANK", env("LOCAL_RANK").value_or("0"), 0, 4095));
    ASSIGN_OR_RETURN(spec.local_world_size,
                     ParseInt("LOCAL_WORLD_SIZE", env("LOCAL_WORLD_SIZE").value_or("1"), 1, 4096));
    spec.master_addr = env("MASTER_ADDR").value_or("127.0.0.1");
    ASSIGN_OR_RETURN(spec.master_port, ParseInt("MASTER_PORT", env("MASTER_PORT").value_or("29500"), 1, 65535));
    spec.source = "torchrun environment (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT)";
    return spec;
  }
  if (config.num_processes <= 1) return spec;
  // accelerate's keys: num_processes ranks in all, spread evenly over num_machines.
  if (config.num_processes % config.num_machines != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config key 'num_processes' (", config.num_processes,
                                                   ") must be a multiple of 'num_machines' (", config.num_machines,
                                                   "): every machine runs as many processes"));
  }
  if (config.machine_rank >= config.num_machines) {
    return absl::InvalidArgumentError(absl::StrCat("config key 'machine_rank' (", config.machine_rank,
                                                   ") must be below 'num_machines' (", config.num_machines, ")"));
  }
  if (config.num_machines > 1 && config.main_process_ip.empty()) {
    return absl::InvalidArgumentError(
        "config key 'main_process_ip' is needed with num_machines > 1: the address of machine_rank 0");
  }
  spec.world_size = static_cast<int>(config.num_processes);
  spec.local_world_size = static_cast<int>(config.num_processes / config.num_machines);
  spec.rank = static_cast<int>(config.machine_rank) * spec.local_world_size;
  spec.master_addr = config.main_process_ip.empty() ? "127.0.0.1" : config.main_process_ip;
  spec.master_port = static_cast<int>(config.main_process_port);
  spec.source = "config keys (num_processes, num_machines, machine_rank, main_process_ip, main_process_port)";
  spec.launch_local_ranks = true;
  return spec;
}

std::string DescribeDistributed(const DistributedSpec& spec) {
  if (spec.world_size <= 1) return "single process (world size 1)";
  return absl::StrCat("data-parallel rank ", spec.rank, " of ", spec.world_size, " (local rank ", spec.local_rank,
                      " of ", spec.local_world_size, "), rendezvous at ", spec.master_addr, ":", spec.master_port,
                      ", collective timeout ", spec.timeout.count() / 1000.0, " s; placed by the ", spec.source);
}

struct DistributedContext::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;  // the training thread's client (rank 0: also the server)
  c10::intrusive_ptr<CollectiveBackend> backend;
  std::string backend_name;
  torch::Device device = torch::kCPU;
  std::thread heartbeat;
  std::atomic<bool> stop{false};
  std::mutex stop_mu;
  std::condition_variable stop_cv;

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(stop_mu);
      stop = true;
    }
    stop_cv.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  }
};

DistributedContext::DistributedContext(DistributedSpec spec, std::unique_ptr<Impl> impl)
    : spec_(std::move(spec)), impl_(std::move(impl)) {}

DistributedContext::~DistributedContext() = default;

std::string DistributedContext::backend_name() const { return impl_->backend_name; }

absl::StatusOr<std::unique_ptr<DistributedContext>> DistributedContext::Connect(const DistributedSpec& spec,
                                                                                torch::Device device) {
  auto log = Logger("train");
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  const std::string where = absl::StrCat(spec.master_addr, ":", spec.master_port);
  const double timeout_s = spec.timeout.count() / 1000.0;
  try {
    impl->store = StoreClient(spec, spec.rank == 0);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "rendezvous: rank ", spec.rank, spec.rank == 0 ? " cannot host" : " cannot reach", " the TCPStore at ",
        where, " within ", timeout_s, " s (", FirstLine(e.what()),
        "); check MASTER_ADDR / main_process_ip and that the port is free on rank 0"));
  }
  try {
    // Everyone arrives, or the message says how many did.
    impl->store->add(kArrivedKey, 1);
    const auto deadline = std::chrono::steady_clock::now() + spec.timeout;
    int64_t arrived = 0;
    while ((arrived = impl->store->add(kArrivedKey, 0)) < spec.world_size) {
      if (std::chrono::steady_clock::now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            "rendezvous at ", where, ": ", arrived, " of ", spec.world_size, " ranks arrived within ", timeout_s,
            " s; start every rank with the same WORLD_SIZE / num_processes, MASTER_ADDR and MASTER_PORT"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
#ifdef LORAD_HAVE_NCCL
    if (device.is_cuda()) {
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = spec.timeout;
      impl->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl->store, spec.rank, spec.world_size, options);
      impl->backend_name = "nccl";
    }
#endif
    if (!impl->backend) {
      if (device.is_cuda()) {
        return absl::FailedPreconditionError(
            "data-parallel training on CUDA needs NCCL, and this lorad-train was built without its headers; "
            "rebuild against a LibTorch with NCCL, or train on the CPU (device = \"cpu\") over Gloo");
      }
#ifdef LORAD_HAVE_GLOO
      auto options = c10d::ProcessGroupGloo::Options::create(spec.timeout);
      std::string local = LocalAddressToward(spec.master_addr, spec.master_port);
      if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname != '\0') {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else {
        options->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForHostname(local.empty() ? spec.master_addr : local));
      }
      options->threads = 2;
      impl->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, spec.rank, spec.world_size, options);
      impl->backend_name = "gloo";
#else
      return absl::FailedPreconditionError(
          "data-parallel training on the CPU needs Gloo, and this lorad-train was built without its headers; "
          "install libgloo-dev (deploy/install-deps.sh) and rebuild");
#endif
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rendezvous at ", where, " (rank ", spec.rank, " of ",
                                               spec.world_size, "): ", FirstLine(e.what())));
  }
  // The heartbeat has its own store connection (a TCPStore client is one socket).
  Impl* raw = impl.get();
  auto hb_store = StoreClient(spec, false);
  const std::string hb_key = absl::StrCat(kHeartbeatPrefix, spec.rank);
  raw->heartbeat = std::thread([raw, hb_store, hb_key] {
    std::unique_lock<std::mutex> lock(raw->stop_mu);
    while (!raw->stop) {
      try {
        hb_store->add(hb_key, 1);
      } catch (const std::exception&) {
        return;  // the store (rank 0) is gone: the collectives report it
      }
      raw->stop_cv.wait_for(lock, kHeartbeatPeriod, [raw] { return raw->stop.load(); });
    }
  });
  log->info("joined the {} process group: rank {} of {} at {}", raw->backend_name, spec.rank, spec.world_size,
            where);
  return std::unique_ptr<DistributedContext>(new DistributedContext(spec, std::move(impl)));
}

absl::Status DistributedContext::AllReduceSum(torch::Tensor& tensor) {
  try {
    torch::Tensor on_device = tensor.to(impl_->device).contiguous();
    std::vector<at::Tensor> tensors{on_device};
    auto work = impl_->backend->allreduce(tensors);
    work->wait(spec_.timeout);
    if (!on_device.is_same(tensor)) tensor.copy_(on_device);
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return DiagnoseFailure(e.what());
  }
}

absl::StatusOr<bool> DistributedContext::SameOnAllRanks(const torch::Tensor& values) {
  try {
    torch::Tensor lo = values.to(impl_->device, torch::kLong).clone();
    torch::Tensor hi = lo.clone();
    std::vector<at::Tensor> a{lo}, b{hi};
    c10d::AllreduceOptions min_opts, max_opts;
    min_opts.reduceOp = c10d::ReduceOp::MIN;
    max_opts.reduceOp = c10d::ReduceOp::MAX;
    impl_->backend->allreduce(a, min_opts)->wait(spec_.timeout);
    impl_->backend->allreduce(b, max_opts)->wait(spec_.timeout);
    return torch::equal(lo, hi);
  } catch (const std::exception& e) {
    return DiagnoseFailure(e.what());
  }
}

absl::Status DistributedContext::Barrier() {
  // An all-reduce of one value: a barrier that also works on NCCL without a device guard.
  torch::Tensor one = torch::ones({1}, torch::kFloat32);
  return AllReduceSum(one);
}

void DistributedContext::RecordOwnFailure(const absl::Status& status) {
  try {
    const std::string text(status.message());
    impl_->store->set(absl::StrCat(kFailurePrefix, spec_.rank), std::vector<uint8_t>(text.begin(), text.end()));
  } catch (const std::exception&) {
    // The store is gone (rank 0 ended): rank 0 cannot report anything anyway.
  }
}

absl::Status DistributedContext::DiagnoseFailure(const std::string& what) {
  const std::string collective = FirstLine(what);
  std::vector<std::string> findings;
  try {
    auto& store = *impl_->store;
    auto failure_of = [&](int r) -> std::optional<std::string> {
      const std::string key = absl::StrCat(kFailurePrefix, r);
      if (!store.check({key})) return std::nullopt;
      const std::vector<uint8_t> bytes = store.get(key);
      return std::string(bytes.begin(), bytes.end());
    };
    auto beats = [&] {
      std::map<int, int64_t> out;
      for (int r = 0; r < spec_.world_size; ++r) {
        if (r != spec_.rank) out[r] = store.add(absl::StrCat(kHeartbeatPrefix, r), 0);
      }
      return out;
    };
    // A rank that failed on its own records why before it exits; give it a moment.
    const auto first = beats();
    const auto deadline = std::chrono::steady_clock::now() + kHeartbeatStale;
    std::map<int, std::string> failed;
    while (std::chrono::steady_clock::now() < deadline) {
      for (int r = 0; r < spec_.world_size; ++r) {
        if (r == spec_.rank || failed.count(r)) continue;
        if (auto reason = failure_of(r)) failed[r] = *reason;
      }
      if (!failed.empty()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    for (const auto& [r, reason] : failed) findings.push_back(absl::StrCat("rank ", r, " failed: ", reason));
    if (failed.empty()) {
      const auto second = beats();
      for (const auto& [r, count] : first) {
        if (second.at(r) == count) {
          findings.push_back(absl::StrCat("rank ", r, " died or stopped responding (no heartbeat for ",
                                          kHeartbeatStale.count() / 1000.0, " s)"));
        }
      }
    }
  } catch (const std::exception&) {
    if (spec_.rank != 0) findings.push_back("rank 0 (the rendezvous host) is gone");
  }
  if (findings.empty()) {
    findings.push_back(absl::StrCat("a collective failed or waited past ddp_timeout (",
                                    spec_.timeout.count() / 1000.0, " s) while every rank still runs"));
  }
  return absl::AbortedError(absl::StrCat("data-parallel job failed: ", absl::StrJoin(findings, "; "), " (rank ",
                                         spec_.rank, " saw: ", collective, ")"));
}

// ---- GradientReducer ----

struct GradientReducer::State {
  struct Slot {
    size_t bucket = 0;
    int64_t offset = 0;
    int64_t numel = 0;
    bool filled = false;
  };
  struct Bucket {
    torch::Tensor flat;
    std::vector<size_t> params;  // indices into `params`
    size_t pending = 0;
    bool launched = false;
    c10::intrusive_ptr<c10d::Work> work;
  };
  std::mutex mu;
  std::vector<torch::Tensor> params;
  std::vector<Slot> slots;
  std::vector<Bucket> buckets;
  std::vector<unsigned> hooks;
  size_t next_launch = 0;
  bool armed = false;
  CollectiveBackend* backend = nullptr;
  std::string error;  // the first launch failure (a hook cannot return a status)

  void Launch(size_t b) {
    Bucket& bucket = buckets[b];
    bucket.launched = true;
    try {
      std::vector<at::Tensor> tensors{bucket.flat};
      bucket.work = backend->allreduce(tensors);
    } catch (const std::exception& e) {
      if (error.empty()) error = e.what();
    }
  }
  // Starts every ready bucket in order (the same order on every rank).
  void LaunchReady() {
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) Launch(next_launch++);
  }
  void Fill(size_t p, const torch::Tensor* grad) {
    Slot& slot = slots[p];
    if (slot.filled) return;
    torch::NoGradGuard no_grad;
    torch::Tensor view = buckets[slot.bucket].flat.narrow(0, slot.offset, slot.numel);
    const torch::Tensor& accumulated = params[p].grad();
    if (grad != nullptr) {
      view.copy_(grad->reshape({-1}));
      if (accumulated.defined()) view.add_(accumulated.reshape({-1}));
    } else if (accumulated.defined()) {
      view.copy_(accumulated.reshape({-1}));
    } else {
      view.zero_();
    }
    slot.filled = true;
    --buckets[slot.bucket].pending;
  }
};

GradientReducer::GradientReducer(DistributedContext& context, std::vector<torch::Tensor> params,
                                 size_t bucket_cap_bytes, size_t first_bucket_bytes)
    : context_(context), state_(std::make_shared<State>()) {
  State& s = *state_;
  s.backend = context.impl_->backend.get();
  s.params = std::move(params);
  s.slots.resize(s.params.size());
  // Reverse order: backward produces the last layers' gradients first.
  size_t cap = first_bucket_bytes;
  std::map<std::pair<c10::ScalarType, std::string>, size_t> open;  // (dtype, device) -> bucket being filled
  std::vector<int64_t> sizes;
  for (size_t i = s.params.size(); i-- > 0;) {
    const torch::Tensor& p = s.params[i];
    const auto key = std::make_pair(p.scalar_type(), p.device().str());
    auto it = open.find(key);
    const size_t bytes = static_cast<size_t>(p.numel()) * p.element_size();
    if (it == open.end() || (static_cast<size_t>(sizes[it->second]) * p.element_size() + bytes > cap &&
                             !s.buckets[it->second].params.empty())) {
      if (it != open.end()) cap = bucket_cap_bytes;  // only the very first bucket is small
      s.buckets.emplace_back();
      sizes.push_back(0);
      open[key] = s.buckets.size() - 1;
      it = open.find(key);
    }
    const size_t b = it->second;
    s.slots[i] = {b, sizes[b], p.numel(), false};
    sizes[b] += p.numel();
    s.buckets[b].params.push_back(i);
  }
  for (size_t b = 0; b < s.buckets.size(); ++b) {
    const torch::Tensor& first = s.params[s.buckets[b].params.front()];
    s.buckets[b].flat = torch::zeros({sizes[b]}, first.options().requires_grad(false));
  }
  std::weak_ptr<State> weak = state_;
  for (size_t i = 0; i < s.params.size(); ++i) {
    s.hooks.push_back(s.params[i].register_hook([weak, i](const torch::Tensor& grad) {
      auto state = weak.lock();
      if (!state) return;
      std::lock_guard<std::mutex> lock(state->mu);
      if (!state->armed) return;
      state->Fill(i, &grad);
      state->LaunchReady();
    }));
  }
}

GradientReducer::~GradientReducer() {
  for (size_t i = 0; i < state_->params.size() && i < state_->hooks.size(); ++i) {
    state_->params[i].remove_hook(state_->hooks[i]);
  }
}

size_t GradientReducer::num_buckets() const { return state_->buckets.size(); }

void GradientReducer::Arm() {
  std::lock_guard<std::mutex> lock(state_->mu);
  State& s = *state_;
  s.armed = true;
  s.next_launch = 0;
  s.error.clear();
  for (auto& slot : s.slots) slot.filled = false;
  for (auto& b : s.buckets) {
    b.pending = b.params.size();
    b.launched = false;
    b.work.reset();
  }
}

absl::Status GradientReducer::Finish() {
  const auto start = std::chrono::steady_clock::now();
  std::string failure;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    State& s = *state_;
    if (!s.armed) {  // no micro-batch armed it (cannot happen in the loop): arm now
      s.armed = true;
      s.next_launch = 0;
      for (auto& slot : s.slots) slot.filled = false;
      for (auto& b : s.buckets) b.pending = b.params.size();
    }
    for (size_t p = 0; p < s.params.size(); ++p) s.Fill(p, nullptr);
    s.LaunchReady();
    s.armed = false;
    try {
      for (auto& b : s.buckets) {
        if (b.work) b.work->wait(context_.spec().timeout);
      }
    } catch (const std::exception& e) {
      failure = e.what();
    }
    if (failure.empty() && !s.error.empty()) failure = s.error;
    if (failure.empty()) {
      torch::NoGradGuard no_grad;
      for (size_t p = 0; p < s.params.size(); ++p) {
        const State::Slot& slot = s.slots[p];
        torch::Tensor sum = s.buckets[slot.bucket].flat.narrow(0, slot.offset, slot.numel).view(s.params[p].sizes());
        torch::Tensor& grad = s.params[p].mutable_grad();
        if (grad.defined()) {
          grad.copy_(sum);
        } else {
          grad = sum.clone();
        }
      }
    }
  }
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!failure.empty()) return context_.DiagnoseFailure(failure);
  return absl::OkStatus();
}

torch::Tensor ReplicaFingerprint(const std::vector<torch::Tensor>& tensors) {
  uint64_t h = 1469598103934665603ull;
  for (const torch::Tensor& t : tensors) {
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
    const size_t n = static_cast<size_t>(c.numel()) * c.element_size();
    for (size_t i = 0; i < n; ++i) {
      h ^= bytes[i];
      h *= 1099511628211ull;
    }
  }
  return torch::tensor({static_cast<int64_t>(h)}, torch::kLong);
}

}  // namespace lorad::train
