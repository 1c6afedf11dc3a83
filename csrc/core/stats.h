// Per-model-version inference statistics with Triton's meaning (ModelStatistics): request
// outcomes and phase durations, executions per batch size. Written once per batch by the
// instance that ran it; read by the frontends as a snapshot.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>

#include "request.h"

namespace pyserve {

struct Duration {
  uint64_t count = 0;
  uint64_t ns = 0;
  void Add(uint64_t duration_ns, uint64_t times = 1) {
    count += times;
    ns += duration_ns * times;
  }
};

struct BatchStats {
  Duration compute_input, compute_infer, compute_output;
};

// A decoupled model's responses, by their index within their request (Triton's
// response_stats: the first responses of all requests under "0", and so on).
struct ResponseStats {
  Duration compute_infer, compute_output, success, fail, empty_response, cancel;
};

struct ModelStats {
  Duration success, fail, queue, compute_input, compute_infer, compute_output;
  Duration cache_hit, cache_miss;  // kept by the model's ModelCache (see Model::Statistics)
  uint64_t inference_count = 0;  // requests' batch sizes summed
  uint64_t execution_count = 0;  // batches run
  uint64_t last_inference_ms = 0;  // wall clock, ms since the epoch
  std::map<uint64_t, BatchStats> batch_stats;  // by batch size
};

class StatsRecorder {
 public:
  // A batch that ran: success or failure of all its requests.
  void RecordBatch(const Batch& batch, bool ok);
  // Requests refused after they were accepted (timeouts): failures with no execution.
  void RecordRejected(const InferRequest& request, uint64_t now_ns);
  ModelStats Snapshot() const;

 private:
  mutable std::mutex mutex_;
  ModelStats stats_;
};

}  // namespace pyserve
