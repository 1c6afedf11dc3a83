// Triton's latency summaries (--metrics-config summary_latencies=true): per model version and
// phase, the count and sum of every observation (microseconds), and quantiles over the
// observations of the last minute, as prometheus-cpp's Summary keeps a 60 s sliding window.
// The window's observations are kept in a bounded ring per phase, so memory stays fixed under
// any load; quantiles are exact over what the ring holds. Only models that have it enabled pay
// for it (a lock and a store per request and phase).
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "request.h"

namespace pyserve {

enum class LatencyPhase : uint8_t {
  kRequest, kQueue, kComputeInput, kComputeInfer, kComputeOutput, kCacheHit, kCacheMiss, kCount
};
const char* LatencyPhaseName(LatencyPhase phase);

class LatencySummaries {
 public:
  explicit LatencySummaries(uint64_t window_ns = 60'000'000'000ull, size_t capacity = 4096);

  void Observe(LatencyPhase phase, uint64_t us, uint64_t now_ns);
  // Every request of a batch that succeeded: its request, queue and compute phases, as
  // Triton's statistics count them.
  void ObserveBatch(const Batch& batch);

  struct Summary {
    uint64_t count = 0, sum_us = 0;
    std::vector<double> values;  // per quantile asked for; NaN with nothing in the window
  };
  Summary Read(LatencyPhase phase, const std::vector<double>& quantiles, uint64_t now_ns) const;

 private:
  void ObserveLocked(LatencyPhase phase, uint64_t us, uint64_t now_ns);  // mutex_ held

  struct Ring {
    std::vector<std::pair<uint64_t, uint64_t>> samples;  // (when, us), oldest overwritten
    size_t next = 0;
    uint64_t count = 0, sum_us = 0;
  };
  const uint64_t window_ns_;
  const size_t capacity_;
  mutable std::mutex mutex_;
  Ring rings_[static_cast<int>(LatencyPhase::kCount)];
};

}  // namespace pyserve
