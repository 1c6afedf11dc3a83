#include "latency_summary.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace pyserve {

namespace {
uint64_t Span(uint64_t from, uint64_t to) { return to > from ? to - from : 0; }
}  // namespace

const char* LatencyPhaseName(LatencyPhase phase) {
  switch (phase) {
    case LatencyPhase::kRequest: return "request";
    case LatencyPhase::kQueue: return "queue";
    case LatencyPhase::kComputeInput: return "compute_input";
    case LatencyPhase::kComputeInfer: return "compute_infer";
    case LatencyPhase::kComputeOutput: return "compute_output";
    case LatencyPhase::kCacheHit: return "cache_hit";
    case LatencyPhase::kCacheMiss: return "cache_miss";
    default: return "?";
  }
}

LatencySummaries::LatencySummaries(uint64_t window_ns, size_t capacity)
    : window_ns_(window_ns), capacity_(std::max<size_t>(capacity, 1)) {}

void LatencySummaries::Observe(LatencyPhase phase, uint64_t us, uint64_t now_ns) {
  std::lock_guard<std::mutex> lock(mutex_);
  ObserveLocked(phase, us, now_ns);
}

void LatencySummaries::ObserveLocked(LatencyPhase phase, uint64_t us, uint64_t now_ns) {
  Ring& ring = rings_[static_cast<int>(phase)];
  if (ring.samples.size() < capacity_) {
    ring.samples.emplace_back(now_ns, us);
  } else {
    ring.samples[ring.next] = {now_ns, us};
  }
  ring.next = (ring.next + 1) % capacity_;
  ring.count += 1;
  ring.sum_us += us;
}

void LatencySummaries::ObserveBatch(const Batch& batch) {
  const BatchTimes& t = batch.times;
  const uint64_t infer_start = t.infer_start ? t.infer_start : t.input_start;
  const uint64_t infer_end = t.infer_end ? t.infer_end : infer_start;
  const uint64_t end = t.output_end ? t.output_end : SteadyNowNs();
  std::lock_guard<std::mutex> lock(mutex_);  // once per batch
  for (const auto& request : batch.requests) {
    ObserveLocked(LatencyPhase::kRequest, Span(request->enqueue_ns, end) / 1000, end);
    ObserveLocked(LatencyPhase::kQueue, Span(request->enqueue_ns, t.input_start) / 1000, end);
    ObserveLocked(LatencyPhase::kComputeInput, Span(t.input_start, infer_start) / 1000, end);
    ObserveLocked(LatencyPhase::kComputeInfer, Span(infer_start, infer_end) / 1000, end);
    ObserveLocked(LatencyPhase::kComputeOutput, Span(infer_end, end) / 1000, end);
  }
}

LatencySummaries::Summary LatencySummaries::Read(LatencyPhase phase,
                                                 const std::vector<double>& quantiles,
                                                 uint64_t now_ns) const {
  Summary summary;
  std::vector<uint64_t> recent;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const Ring& ring = rings_[static_cast<int>(phase)];
    summary.count = ring.count;
    summary.sum_us = ring.sum_us;
    recent.reserve(ring.samples.size());
    for (const auto& [when, us] : ring.samples) {
      if (Span(when, now_ns) <= window_ns_) recent.push_back(us);
    }
  }
  std::sort(recent.begin(), recent.end());
  for (double q : quantiles) {
    if (recent.empty()) {
      summary.values.push_back(std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    // The nearest rank: the smallest value with at least q of the observations at or below it.
    const double rank = std::ceil(std::clamp(q, 0.0, 1.0) * recent.size());
    const size_t index = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
    summary.values.push_back(static_cast<double>(recent[std::min(index, recent.size() - 1)]));
  }
  return summary;
}

}  // namespace pyserve
