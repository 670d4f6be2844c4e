#include "bench/op_counter.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

namespace lorad::bench {
namespace {

std::atomic<int64_t> g_all{0};
std::atomic<int64_t> g_outermost{0};
std::mutex g_names_mu;
std::map<std::string, int64_t> g_names;  // guarded by g_names_mu
thread_local int t_depth = 0;

// Only ATen operators count: RecordFunction also reports autograd's
// "autograd::engine::evaluate_function: XBackward0" wrappers, which run ATen
// ops (counted) but are none themselves.
bool IsAtenOp(const at::RecordFunction& fn) { return std::strncmp(fn.name(), "aten::", 6) == 0; }

std::unique_ptr<at::ObserverContext> OnStart(const at::RecordFunction& fn) {
  if (!IsAtenOp(fn)) return nullptr;
  g_all.fetch_add(1, std::memory_order_relaxed);
  if (t_depth++ == 0) {
    g_outermost.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(g_names_mu);
    ++g_names[fn.name()];
  }
  return nullptr;
}

void OnEnd(const at::RecordFunction& fn, at::ObserverContext*) {
  // An op already running when the callback was added has no start.
  if (IsAtenOp(fn) && t_depth > 0) --t_depth;
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
  std::lock_guard<std::mutex> lock(g_names_mu);
  g_names.clear();
}

OpCounts OpCounter::Take() const {
  OpCounts counts;
  counts.all = g_all.load();
  counts.outermost = g_outermost.load();
  {
    std::lock_guard<std::mutex> lock(g_names_mu);
    counts.by_name.assign(g_names.begin(), g_names.end());
  }
  std::sort(counts.by_name.begin(), counts.by_name.end(),
            [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
  return counts;
}

}  // namespace lorad::bench
