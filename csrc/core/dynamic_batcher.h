// DynamicBatcher: Triton's dynamic batching rules, as a BatchPolicy. The scheduler's batcher
// thread adds requests, then asks Form() what to do now: send a batch, reject timed-out
// requests, or wait (and for how long).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "batch_policy.h"
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

// Whether a queued request can time out: a level's default timeout, or a request's own.
bool HasTimeouts(const BatchingOptions& options);

class DynamicBatcher : public BatchPolicy {
 public:
  explicit DynamicBatcher(BatchingOptions options);

  uint32_t LevelCount() const { return static_cast<uint32_t>(levels_.size()); }
  uint32_t LevelOf(uint64_t priority) const;  // 0-based queue index
  // Absolute deadline (ns) for a request enqueued at now_ns, or 0 for none.
  uint64_t DeadlineOf(const InferRequest& request, uint64_t now_ns) const;

  // Stamps the priority level and deadline; refuses past the level's max_queue_size.
  Status Admit(InferRequest& request, uint64_t now_ns) override;
  void Withdraw(const InferRequest& request) override;

  void Add(InferRequest* request) override;
  size_t QueuedCount() const override { return queued_; }
  void Form(uint64_t now_ns, bool flush, int idle_instances, Decision* decision) override;
  void Purge(uint64_t now_ns, Decision* decision) override;
  void TakeAll(std::vector<InferRequest*>* requests) override;
  uint64_t UnitsThatMatter() const override { return units_that_matter_; }

 private:
  struct Level {
    QueuePolicy policy;
    std::deque<InferRequest*> queue;
    std::deque<InferRequest*> delayed;  // timed out under DELAY: served behind the others
  };

  void PurgeLevels(uint64_t now_ns, Decision* decision);
  void FormBatch(uint64_t now_ns, bool flush, Decision* decision);
  void Departed(const std::vector<InferRequest*>& requests);
  bool SameShapes(const InferRequest& a, const InferRequest& b) const;
  uint64_t ClosestDeadline() const;

  BatchingOptions options_;
  std::vector<uint32_t> preferred_;  // ascending
  uint32_t max_preferred_ = 0;
  uint64_t delay_ns_ = 0;
  std::vector<Level> levels_;
  size_t queued_ = 0;
  // Arrivals can only grow the pending batch (one level, shapes equal by the config, no
  // timeouts): while it waits, only enough units to reach a preferred size change anything.
  bool arrivals_only_grow_ = false;
  uint64_t units_that_matter_ = 1;
  // Per level: admitted and not yet departed (for max_queue_size), counted on any thread.
  std::unique_ptr<std::atomic<uint32_t>[]> admitted_;
};

}  // namespace pyserve
