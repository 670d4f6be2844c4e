#include "bench/op_counter.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string_view>
#include <vector>

namespace lorad::bench {
namespace {

std::atomic<int64_t> g_all{0};
std::atomic<int64_t> g_outermost{0};
std::atomic<int64_t> g_kernels{0};
std::mutex g_names_mu;
std::map<std::string, int64_t> g_names;         // guarded by g_names_mu
std::map<std::string, int64_t> g_kernel_names;  // guarded by g_names_mu
// One entry per running ATen op on this thread: whether an op it called
// launched a kernel (itself or further down).
thread_local std::vector<bool> t_launched_below;
// Open ops on this thread that count as one kernel whatever they call.
thread_local int t_open_kernels = 0;

// Ops that are one kernel (or one library call: cuBLAS, cuDNN) on a GPU but
// whose CPU implementation dispatches helper ops (copies into a contiguous
// layout, an output resize): counted once, their nested ops not at all. The
// _foreach_* ops are one multi-tensor launch per chunk of tensors on CUDA and
// a loop of per-tensor ops on the CPU: counted once too.
bool IsOneKernel(std::string_view name) {
  static const std::set<std::string_view> kOne = {
      "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_convolution",
      "aten::convolution_backward", "aten::_softmax", "aten::_softmax_backward_data", "aten::_log_softmax",
      "aten::native_layer_norm", "aten::native_layer_norm_backward", "aten::native_group_norm",
      "aten::native_group_norm_backward", "aten::_fused_adamw_", "aten::_fused_adam_",
      "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
      "aten::_scaled_dot_product_cudnn_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
      "aten::_scaled_dot_product_flash_attention_backward", "aten::_scaled_dot_product_efficient_attention_backward",
      "aten::_scaled_dot_product_cudnn_attention_backward",
      "aten::_scaled_dot_product_flash_attention_for_cpu_backward"};
  return kOne.count(name) > 0 || name.substr(0, 15) == "aten::_foreach_";
}

void CountKernel(const char* name) {
  g_kernels.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(g_names_mu);
  ++g_kernel_names[name];
}

// Leaf ops that launch no kernel on a GPU: views and shape changes, metadata,
// allocations without a fill, and conversions that found nothing to convert
// (a real one calls _to_copy -> copy_, which counts).
bool LaunchesNoKernel(std::string_view name) {
  static const std::set<std::string_view> kNone = {
      "aten::t", "aten::numpy_T", "aten::transpose", "aten::reshape", "aten::_reshape_alias", "aten::view",
      "aten::_unsafe_view", "aten::view_as", "aten::detach", "aten::detach_", "aten::alias", "aten::expand",
      "aten::expand_as", "aten::as_strided", "aten::unsqueeze", "aten::squeeze", "aten::permute", "aten::slice",
      "aten::select", "aten::narrow", "aten::split", "aten::split_with_sizes", "aten::chunk", "aten::unbind",
      "aten::unflatten", "aten::flatten", "aten::movedim", "aten::diagonal", "aten::lift_fresh", "aten::empty",
      "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided", "aten::resize_",
      "aten::set_", "aten::to", "aten::contiguous", "aten::size", "aten::stride", "aten::numel", "aten::dim",
      "aten::is_same_size", "aten::result_type", "aten::requires_grad_", "aten::retain_grad", "aten::resolve_conj",
      "aten::resolve_neg", "aten::_has_compatible_shallow_copy_type", "aten::type_as", "aten::broadcast_tensors",
      "aten::unsafe_split", "aten::unsafe_chunk", "aten::is_nonzero", "aten::squeeze_", "aten::unsqueeze_",
      "aten::t_", "aten::transpose_", "aten::as_strided_", "aten::broadcast_to", "aten::swapaxes", "aten::_unsafe_view",
      "aten::scalar_tensor", "aten::item"};
  return kNone.count(name) > 0;
}

// Only ATen operators count: RecordFunction also reports autograd's
// "autograd::engine::evaluate_function: XBackward0" wrappers, which run ATen
// ops (counted) but are none themselves.
bool IsAtenOp(const at::RecordFunction& fn) { return std::strncmp(fn.name(), "aten::", 6) == 0; }

std::unique_ptr<at::ObserverContext> OnStart(const at::RecordFunction& fn) {
  if (!IsAtenOp(fn)) return nullptr;
  g_all.fetch_add(1, std::memory_order_relaxed);
  const bool outermost = t_launched_below.empty();
  t_launched_below.push_back(false);
  if (IsOneKernel(fn.name())) {
    if (t_open_kernels == 0) CountKernel(fn.name());
    ++t_open_kernels;
  }
  if (outermost) {
    g_outermost.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(g_names_mu);
    ++g_names[fn.name()];
  }
  return nullptr;
}

void OnEnd(const at::RecordFunction& fn, at::ObserverContext*) {
  // An op already running when the callback was added has no start.
  if (!IsAtenOp(fn) || t_launched_below.empty()) return;
  bool launched = t_launched_below.back();
  t_launched_below.pop_back();
  if (IsOneKernel(fn.name())) {
    if (t_open_kernels > 0) --t_open_kernels;  // counted at its start
    launched = true;
  } else if (!launched && t_open_kernels == 0 && !LaunchesNoKernel(fn.name())) {
    // Nothing below it launched (it called nothing, or only views and
    // allocations, as a Scalar overload wrapping its argument does): its own
    // work is the kernel.
    CountKernel(fn.name());
    launched = true;
  }
  if (!t_launched_below.empty() && launched) t_launched_below.back() = true;
}

std::vector<std::pair<std::string, int64_t>> MostFrequentFirst(const std::map<std::string, int64_t>& names) {
  std::vector<std::pair<std::string, int64_t>> v(names.begin(), names.end());
  std::sort(v.begin(), v.end(),
            [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
  return v;
}

}  // namespace

OpCounter::OpCounter() {
  Reset();
  handle_ = at::addGlobalCallback(
      at::RecordFunctionCallback(&OnStart, &OnEnd).needsInputs(false).scopes({at::RecordScope::FUNCTION}));
}

OpCounter::~OpCounter() { at::removeCallback(handle_); }

void OpCounter::Reset() {
  g_all = 0;
  g_outermost = 0;
  g_kernels = 0;
  std::lock_guard<std::mutex> lock(g_names_mu);
  g_names.clear();
  g_kernel_names.clear();
}

OpCounts OpCounter::Take() const {
  OpCounts counts;
  counts.all = g_all.load();
  counts.outermost = g_outermost.load();
  counts.kernels = g_kernels.load();
  std::lock_guard<std::mutex> lock(g_names_mu);
  counts.by_name = MostFrequentFirst(g_names);
  counts.kernels_by_name = MostFrequentFirst(g_kernel_names);
  return counts;
}

}  // namespace lorad::bench
