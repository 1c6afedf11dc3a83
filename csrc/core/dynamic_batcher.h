// DynamicBatcher: Triton's dynamic batching rules as a single-threaded decision engine. The
// scheduler's batcher thread owns it: it adds requests, then asks Form() what to do now —
// send a batch, reject timed-out requests, or wait (and for how long). No clocks or threads
// inside, so the rules are tested deterministically.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "request.h"

namespace pyserve {

struct QueuePolicy {
  bool delay_on_timeout = false;  // timeout_action DELAY (else REJECT)
  uint64_t default_timeout_us = 0;  // 0 = no timeout
  bool allow_timeout_override = false;
  uint32_t max_queue_size = 0;  // 0 = unbounded
};

struct BatchingOptions {
  uint32_t max_batch_size = 1;
  std::vector<uint32_t> preferred_batch_sizes;  // empty = {max_batch_size}
  uint64_t max_queue_delay_us = 0;
  uint32_t priority_levels = 0;          // 0 = a single level
  uint32_t default_priority_level = 0;   // 1-based; 0 = the lowest-numbered (1)
  QueuePolicy default_policy;
  std::map<uint32_t, QueuePolicy> level_policies;  // 1-based level -> policy
  std::vector<std::string> equal_shape_inputs;     // shapes must match within a batch
  bool equal_input_sets = false;                   // optional inputs: the same set per batch
};

class DynamicBatcher {
 public:
  explicit DynamicBatcher(BatchingOptions options);

  // Thread-safe helpers for the enqueueing side.
  uint32_t LevelCount() const { return static_cast<uint32_t>(levels_.size()); }
  uint32_t LevelOf(uint64_t priority) const;  // 0-based queue index
  const QueuePolicy& PolicyOf(uint32_t level) const { return levels_[level].policy; }
  // Absolute deadline (ns) for a request enqueued at now_ns, or 0 for none.
  uint64_t DeadlineOf(const InferRequest& request, uint64_t now_ns) const;

  // Batcher thread only.
  void Add(InferRequest* request);
  size_t QueuedCount() const { return queued_; }
  bool Empty() const { return queued_ == 0; }

  struct Decision {
    std::vector<InferRequest*> batch;     // send now, in this order
    std::vector<InferRequest*> rejected;  // timed out under REJECT
    std::vector<InferRequest*> cancelled;  // the client went away while they waited
    uint64_t wait_ns = 0;                 // nothing to send: wait this long (0 = for news)
  };
  // `flush` sends whatever is queued without waiting for the delay (used when stopping).
  void Form(uint64_t now_ns, bool flush, Decision* decision);
  // Takes every queued request out (for a scheduler that gives up on its instances).
  void TakeAll(std::vector<InferRequest*>* requests);
  // Only applies the timeout policies and removes cancelled requests (while no instance is
  // free to take a batch).
  void Purge(uint64_t now_ns, Decision* decision);

 private:
  struct Level {
    QueuePolicy policy;
    std::deque<InferRequest*> queue;
    std::deque<InferRequest*> delayed;  // timed out under DELAY: served behind the others
  };

  bool SameShapes(const InferRequest& a, const InferRequest& b) const;
  uint64_t ClosestDeadline() const;

  BatchingOptions options_;
  std::vector<uint32_t> preferred_;  // ascending
  uint32_t max_preferred_ = 0;
  uint64_t delay_ns_ = 0;
  std::vector<Level> levels_;
  size_t queued_ = 0;
};

}  // namespace pyserve
