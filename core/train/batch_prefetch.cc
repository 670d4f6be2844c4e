#include "core/train/batch_prefetch.h"

#include <vector>

#if defined(LORAD_TORCH_CUDA)
#define LORAD_PREFETCH_CUDA 1
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace lorad::train {

struct PrefetchingIterator::Staged {
  absl::StatusOr<std::optional<data::Batch>> batch;
  data::DataPosition position_after;
#ifdef LORAD_PREFETCH_CUDA
  // Recorded on the copy stream after the batch's copies.
  std::optional<at::cuda::CUDAEvent> copied;
#endif
};

namespace {

std::vector<torch::Tensor*> DeviceTensors(data::Batch& b) {
  return {&b.images, &b.latents, &b.original_hw, &b.crop_top_left, &b.target_hw, &b.loss_weights};
}

}  // namespace

PrefetchingIterator::PrefetchingIterator(std::unique_ptr<data::BatchIterator> inner, const torch::Device& device)
    : inner_(std::move(inner)), device_(device), position_(inner_->position()) {}

PrefetchingIterator::~PrefetchingIterator() = default;

std::unique_ptr<PrefetchingIterator::Staged> PrefetchingIterator::Fetch() {
  auto staged = std::make_unique<Staged>();
  staged->batch = inner_->Next();
  staged->position_after = inner_->position();
  if (!staged->batch.ok() || !staged->batch->has_value() || !device_.is_cuda()) return staged;
  data::Batch& b = **staged->batch;
#ifdef LORAD_PREFETCH_CUDA
  // Pinned host memory makes the copy asynchronous (a pageable one blocks the
  // host); the copy stream lets it overlap the step running on the compute stream.
  const c10::DeviceIndex index = device_.has_index() ? device_.index() : c10::cuda::current_device();
  c10::cuda::CUDAGuard device_guard(index);
  c10::cuda::CUDAStream copy_stream = c10::cuda::getStreamFromPool(false, index);
  {
    c10::cuda::CUDAStreamGuard stream_guard(copy_stream);
    for (torch::Tensor* t : DeviceTensors(b)) {
      if (!t->defined() || t->is_cuda()) continue;
      torch::Tensor pinned = t->is_pinned() ? *t : t->pin_memory();
      *t = pinned.to(torch::Device(torch::kCUDA, index), /*non_blocking=*/true);
    }
  }
  staged->copied.emplace();
  staged->copied->record(copy_stream);
#else
  for (torch::Tensor* t : DeviceTensors(b)) {
    if (t->defined()) *t = t->to(device_);
  }
#endif
  return staged;
}

absl::StatusOr<std::optional<data::Batch>> PrefetchingIterator::Next() {
  std::unique_ptr<Staged> current = ahead_ != nullptr ? std::move(ahead_) : Fetch();
  if (!current->batch.ok() || !current->batch->has_value()) return std::move(current->batch);
  position_ = current->position_after;
  ahead_ = Fetch();  // read and copy the following batch while this one trains
#ifdef LORAD_PREFETCH_CUDA
  if (current->copied.has_value()) {
    c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(current->copied->device_index());
    current->copied->block(compute);
    // The tensors were allocated on the copy stream: tell the allocator the
    // compute stream uses them, so their memory is not reused before it is done.
    for (torch::Tensor* t : DeviceTensors(**current->batch)) {
      if (t->defined() && t->is_cuda()) c10::cuda::CUDACachingAllocator::recordStream(t->storage().data_ptr(), compute);
    }
  }
#endif
  return std::move(current->batch);
}

}  // namespace lorad::train
