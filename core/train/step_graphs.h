// CUDA graphs for the training step. A Python trainer launches some 20,000
// kernels per SDXL step one by one and the GPU waits between them; a captured
// step replays all of them with one launch. StepGraphs captures a step body
// (forward, backward, clipping, optimizer step) once per input shape (a bucket
// resolution and batch size) and replays it for every later step of that shape.
//
// The body must be graph-safe: it reads only tensors that stay at the same
// address (static input buffers the caller refills before each run, the
// parameters, the optimizer's state, device lr and step tensors), writes its
// results into static output buffers, and neither reads values back to the
// host nor draws random numbers (noise and timesteps are drawn before, into the
// inputs, by the same generators an eager step uses). Then a replay computes
// what an eager run of the body computes.
//
// Everything runs on one side stream (torch's rule for capture: warm-up and
// capture on a non-default stream), ordered after the caller's stream and
// before its next work by events, never by a host wait. Where graphs cannot be
// captured (the CPU, LibTorch 1.x) Run() runs the body eagerly each time, so
// the static-buffer step is the same code on every device. Not thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <torch/torch.h>

#include "absl/status/statusor.h"

namespace lorad::train {

class StepGraphs {
 public:
  // How Run() executed the body.
  enum class Ran {
    kEager,     // ran eagerly (warm-up of a new shape, or no capture on this device)
    kCaptured,  // captured and replayed once: the body's host code ran during the capture
    kReplayed,  // replayed: no host code of the body ran
  };

  // `warmup_runs`: eager runs of each shape before its capture (cuBLAS and
  // cuDNN choose and allocate their workspaces, the optimizer creates its state).
  explicit StepGraphs(const torch::Device& device, int warmup_runs = 2);
  ~StepGraphs();
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;

  // True where Run() captures: a CUDA device with LibTorch 2.x built with CUDA.
  static bool CaptureSupported(const torch::Device& device);

  // Runs `body` once for a step whose inputs have the shape `shape_key`.
  // INTERNAL when a capture fails (an op in the body synchronises with the
  // host or is not capturable); the message names the cause. The failed
  // capture ran nothing, and the shape is never captured again.
  absl::StatusOr<Ran> Run(const std::string& shape_key, const std::function<void()>& body);

  // Shapes captured so far.
  int64_t num_graphs() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lorad::train
