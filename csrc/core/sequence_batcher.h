// SequenceBatcher: Triton's sequence batcher, as a BatchPolicy. Each sequence (the requests of
// one correlation ID, START to END) holds a slot of one instance from its first request to its
// last; a sequence that finds every slot taken waits in the backlog for one to free up. A slot
// is released at the sequence's END, when the sequence has been idle for
// max_sequence_idle_microseconds, or when its client goes away.
//
//   direct: `max_batch_size` slots per instance; a batch has one row per slot up to the
//           highest one with a request, the empty ones below it padded (READY false).
//   oldest: `max_candidate_sequences` slots per instance; the oldest sequences with a request
//           ready are batched as the dynamic batcher would (preferred sizes, queue delay).
//
// Either way a batch goes to the instance that holds its sequences (Decision::instance), and
// each sequence has at most one request in flight: only an idle instance gets a batch, which
// the scheduler reports with InstanceDone. The control inputs (START, END, READY, CORRID) are
// added to each request of a batch as the model's config asks, and so are the sequence's
// implicit states (sequence_state.h), kept with its slot from START to its release.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <queue>
#include <string>
#include <unordered_map>
#include <vector>

#include "batch_policy.h"
#include "request.h"
#include "sequence_controls.h"
#include "sequence_state.h"

namespace pyserve {

struct SequenceBatchingOptions {
  bool oldest = false;               // strategy: oldest (else direct)
  uint32_t max_batch_size = 0;       // the model's; 0 = it does not batch (one slot)
  uint32_t max_candidate_sequences = 0;  // oldest: slots per instance (0 = max_batch_size)
  std::vector<uint32_t> preferred_batch_sizes;  // oldest
  uint64_t max_queue_delay_us = 0;
  float minimum_slot_utilization = 0;  // direct: 0 = send at once, whatever the delay
  uint64_t max_sequence_idle_us = 1000000;  // Triton's default (also for 0)
  // iterative_sequence: a request without a correlation ID starts a sequence of its own, and
  // the backend decides when it ends (it releases it without RESCHEDULE).
  bool iterative = false;
  // TRITONSERVER_BACKLOG_DELAY_SCHEDULER: while TRITONSERVER_DELAY_SCHEDULER holds batching,
  // hold it also until the backlog has this many requests (Triton's test hook).
  uint32_t backlog_delay_count = 0;
  int instance_count = 1;
  std::vector<SequenceControl> controls;
  std::vector<StateSpec> states;  // sequence_batching.state
};

class SequenceBatcher : public BatchPolicy {
 public:
  // `waker` (may be null) wakes the batcher thread when a decoupled model's request settles
  // its sequence's state (its final response), so that the sequence's next request can run.
  SequenceBatcher(std::string model_name, SequenceBatchingOptions options,
                  std::shared_ptr<StateWaker> waker = nullptr);

  // Refuses a request without a correlation ID (an iterative model gives it one) or with a
  // batch of more than one.
  Status Admit(InferRequest& request, uint64_t now_ns) override;
  void Withdraw(const InferRequest&) override {}

  void Add(InferRequest* request) override;
  size_t QueuedCount() const override { return queued_ + refused_.size(); }
  // As Triton's: requests queued in slots (the backlog not counted) and in the backlog.
  bool Holding(size_t delay_count) const override;
  void Form(uint64_t now_ns, bool flush, int idle_instances, Decision* decision) override;
  void Purge(uint64_t now_ns, Decision* decision) override;
  void TakeAll(std::vector<InferRequest*>* requests) override;
  bool BindsInstances() const override { return true; }
  void InstanceDone(int instance) override;
  bool Iterative() const override { return options_.iterative; }
  void SequenceEnded(const CorrelationId& id, uint64_t now_ns) override;

  // For tests and statistics: sequences holding a slot, and waiting in the backlog.
  size_t ActiveCount() const { return sequences_.size(); }
  size_t BacklogCount() const { return backlog_.size(); }
  // Sequences whose implicit state the batcher holds.
  size_t StateCount() const;

 private:
  // A correlation ID as a map key: the number, or the text (the two never equal).
  struct Key {
    uint64_t number = 0;
    std::string text;
    bool is_text = false;
    bool operator==(const Key& o) const {
      return is_text == o.is_text && number == o.number && text == o.text;
    }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      return k.is_text ? std::hash<std::string>()(k.text) : std::hash<uint64_t>()(k.number);
    }
  };
  static Key KeyOf(const InferRequest& request);

  struct Slot {
    uint32_t position = 0;          // held by a sequence: its index in active_[instance]
    Key key;
    uint64_t last_ns = 0;           // when its sequence's latest request arrived
    std::deque<InferRequest*> queue;
    std::shared_ptr<SequenceState> state;  // its implicit state (null until its first batch)
  };
  struct Backlog {
    Key key;
    bool ended = false;  // its END has arrived: later requests of the key start anew
    std::deque<InferRequest*> queue;
  };
  struct SlotRef {
    int instance = 0;
    uint32_t slot = 0;
    bool operator>(const SlotRef& o) const {
      return slot != o.slot ? slot > o.slot : instance > o.instance;
    }
  };

  Slot& At(SlotRef ref) { return slots_[ref.instance][ref.slot]; }
  // Whether the slot's front request may join a batch: it has one, and the request before it
  // has settled the state (a START begins a state of its own).
  static bool Ready(const Slot& slot);
  void Activate(SlotRef ref);
  void Deactivate(SlotRef ref);
  void Bind(const Key& key, SlotRef ref, uint64_t now_ns);
  void Release(SlotRef ref, uint64_t now_ns);
  void ReapIdle(uint64_t now_ns, bool flush, Decision* decision);
  void FormDirect(int instance, uint64_t now_ns, bool flush, Decision* decision);
  void FormOldest(int instance, uint64_t now_ns, bool flush, Decision* decision);
  void Take(SlotRef ref, uint64_t now_ns, Decision* decision);
  std::unique_ptr<InferRequest> Padding(const InferRequest& like, size_t own_inputs) const;
  static InferRequest* CopyOf(const InferRequest& padding);
  void Wake(uint64_t wait_ns, Decision* decision) const;
  uint64_t NextIdleNs(uint64_t now_ns) const;

  std::string model_name_;
  SequenceBatchingOptions options_;
  uint32_t slots_per_instance_ = 1;
  uint64_t delay_ns_ = 0;
  uint64_t idle_ns_ = 0;
  std::vector<uint32_t> preferred_;  // oldest, ascending
  std::shared_ptr<const std::vector<StateSpec>> states_;  // null: the model has none
  std::shared_ptr<StateWaker> waker_;

  std::vector<std::vector<Slot>> slots_;  // per instance
  // Per instance, the slots a sequence holds (in no order): what the rules walk, however many
  // slots there are.
  std::vector<std::vector<uint32_t>> active_;
  std::vector<bool> busy_;                // per instance: running a batch of ours
  std::priority_queue<SlotRef, std::vector<SlotRef>, std::greater<SlotRef>> free_;
  std::unordered_map<Key, SlotRef, KeyHash> sequences_;  // sequences holding a slot
  std::deque<std::unique_ptr<Backlog>> backlog_;         // oldest first
  std::unordered_map<Key, Backlog*, KeyHash> backlogged_;  // open backlogs, by key
  std::vector<std::pair<InferRequest*, Status>> refused_;  // found out in Add, sent next
  size_t queued_ = 0;
  std::atomic<uint64_t> next_iterative_id_{1};  // Admit runs on any thread
};

}  // namespace pyserve
