#include "core/train/step_graphs.h"

#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/models/grad_checkpoint.h"

#if defined(LORAD_TORCH_CUDA) && TORCH_VERSION_MAJOR >= 2
#define LORAD_STEP_GRAPHS 1
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace lorad::train {

#ifdef LORAD_STEP_GRAPHS

namespace {

// Autocast's cast cache would hand the capture tensors cast outside it (torch's
// graphed callables turn it off too); restored on exit.
class AutocastCacheOff {
 public:
  AutocastCacheOff() : previous_(at::autocast::is_autocast_cache_enabled()) {
    at::autocast::set_autocast_cache_enabled(false);
  }
  ~AutocastCacheOff() { at::autocast::set_autocast_cache_enabled(previous_); }
  AutocastCacheOff(const AutocastCacheOff&) = delete;
  AutocastCacheOff& operator=(const AutocastCacheOff&) = delete;

 private:
  bool previous_;
};

}  // namespace

struct StepGraphs::Impl {
  struct Shape {
    int eager_runs = 0;
    bool capture_failed = false;
    std::unique_ptr<at::cuda::CUDAGraph> graph;
  };

  Impl(const torch::Device& d, int warmup)
      : device(torch::kCUDA, d.has_index() ? d.index() : c10::cuda::current_device()), warmup_runs(warmup),
        side(c10::cuda::getStreamFromPool(false, device.index())), pool(at::cuda::graph_pool_handle()) {}

  // `fn` on the side stream, after everything queued on the caller's stream,
  // and the caller's stream after it: events, no host wait.
  template <typename Fn>
  void OnSideStream(Fn&& fn) {
    c10::cuda::CUDAGuard device_guard(device.index());
    c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream(device.index());
    at::cuda::CUDAEvent inputs_ready;
    inputs_ready.record(caller);
    inputs_ready.block(side);
    {
      c10::cuda::CUDAStreamGuard stream_guard(side);
      fn();
    }
    at::cuda::CUDAEvent done;
    done.record(side);
    done.block(caller);
  }

  torch::Device device;
  int warmup_runs;
  c10::cuda::CUDAStream side;
  // One memory pool for every shape's graph: they replay one at a time, in
  // the order of the steps, so their intermediates may share memory.
  at::cuda::MempoolId_t pool;
  std::map<std::string, Shape> shapes;
  int64_t num_graphs = 0;
};

bool StepGraphs::CaptureSupported(const torch::Device& device) { return device.is_cuda(); }

StepGraphs::StepGraphs(const torch::Device& device, int warmup_runs) {
  if (CaptureSupported(device)) impl_ = std::make_unique<Impl>(device, std::max(1, warmup_runs));
}

absl::StatusOr<StepGraphs::Ran> StepGraphs::Run(const std::string& shape_key, const std::function<void()>& body) {
  if (impl_ == nullptr) {
    body();
    return Ran::kEager;
  }
  Impl::Shape& shape = impl_->shapes[shape_key];
  if (shape.graph != nullptr) {
    impl_->OnSideStream([&] { shape.graph->replay(); });
    return Ran::kReplayed;
  }
  if (shape.capture_failed || shape.eager_runs < impl_->warmup_runs) {
    // The same ops the capture will record, run on the capture stream so the
    // libraries' per-stream lazy setup happens before it.
    impl_->OnSideStream([&] {
      models::RngFreeCheckpointScope no_rng_state;
      body();
    });
    ++shape.eager_runs;
    return Ran::kEager;
  }
  auto graph = std::make_unique<at::cuda::CUDAGraph>();
  std::optional<std::string> failure;
  impl_->OnSideStream([&] {
    AutocastCacheOff no_cast_cache;
    models::RngFreeCheckpointScope no_rng_state;
    try {
      // Global capture mode, torch.cuda.graph's default: the autograd engine's
      // device thread launches the backward kernels into the captured stream.
      graph->capture_begin(impl_->pool, cudaStreamCaptureModeGlobal);
      try {
        body();
      } catch (const c10::Error& e) {
        failure = e.what_without_backtrace();
      } catch (const std::exception& e) {
        failure = e.what();
      }
      graph->capture_end();  // ends the stream's capture even after a failure (then it throws)
    } catch (const c10::Error& e) {
      if (!failure) failure = e.what_without_backtrace();
    }
  });
  if (failure) {
    shape.capture_failed = true;
    return absl::InternalError(absl::StrCat("CUDA graph capture of the training step (inputs ", shape_key,
                                            ") failed: ", *failure));
  }
  // The capture recorded the step without running it: run it now.
  impl_->OnSideStream([&] { graph->replay(); });
  shape.graph = std::move(graph);
  ++impl_->num_graphs;
  return Ran::kCaptured;
}

int64_t StepGraphs::num_graphs() const { return impl_ == nullptr ? 0 : impl_->num_graphs; }

#else  // no capture in this build: the body runs eagerly

struct StepGraphs::Impl {};

bool StepGraphs::CaptureSupported(const torch::Device&) { return false; }

StepGraphs::StepGraphs(const torch::Device&, int) {}

absl::StatusOr<StepGraphs::Ran> StepGraphs::Run(const std::string&, const std::function<void()>& body) {
  body();
  return Ran::kEager;
}

int64_t StepGraphs::num_graphs() const { return 0; }

#endif

StepGraphs::~StepGraphs() = default;

}  // namespace lorad::train
