#include "stats.h"

#include <chrono>

namespace pyserve {

namespace {
uint64_t WallNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
uint64_t Span(uint64_t from, uint64_t to) { return to > from ? to - from : 0; }
}  // namespace

void StatsRecorder::RecordBatch(const Batch& batch, bool ok) {
  const BatchTimes& t = batch.times;
  const uint64_t input_ns = Span(t.input_start, t.infer_start);
  const uint64_t infer_ns = Span(t.infer_start, t.infer_end);
  const uint64_t output_ns = Span(t.infer_end, t.output_end);
  const uint64_t now_ms = WallNowMs();

  std::lock_guard<std::mutex> lock(mutex_);
  uint32_t padding = 0;  // a sequence batch's empty slots: computed, not inferences
  for (const auto& request : batch.requests) {
    if (request->padding) {
      ++padding;
      continue;
    }
    const uint64_t total_ns = Span(request->enqueue_ns, t.output_end);
    if (!ok) {
      stats_.fail.Add(total_ns);
      continue;
    }
    // Triton counts queue and compute durations per successful request.
    stats_.success.Add(total_ns);
    stats_.queue.Add(Span(request->enqueue_ns, t.input_start));
    stats_.compute_input.Add(input_ns);
    stats_.compute_infer.Add(infer_ns);
    stats_.compute_output.Add(output_ns);
  }
  if (!ok) return;
  const uint32_t size = batch.Size();
  stats_.inference_count += size - padding;
  stats_.execution_count += 1;
  stats_.last_inference_ms = now_ms;
  BatchStats& by_size = stats_.batch_stats[size];
  by_size.compute_input.Add(input_ns);
  by_size.compute_infer.Add(infer_ns);
  by_size.compute_output.Add(output_ns);
}

void StatsRecorder::RecordRejected(const InferRequest& request, uint64_t now_ns) {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.fail.Add(Span(request.enqueue_ns, now_ns));
}

ModelStats StatsRecorder::Snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace pyserve
