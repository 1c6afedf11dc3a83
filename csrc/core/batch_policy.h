// BatchPolicy: how a scheduler's batcher thread turns queued requests into batches. The
// scheduler owns the threads, the queues, the instances and the statistics; a policy only
// decides, with no threads or clocks of its own, so its rules are tested deterministically.
// Triton's dynamic batcher (DynamicBatcher) is one policy, its sequence batcher the other.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "request.h"
#include "status.h"

namespace pyserve {

class BatchPolicy {
 public:
  struct Decision {
    std::vector<InferRequest*> batch;  // send now, in this order, to `instance`
    int instance = -1;  // -1: whichever instance is idle (policies that do not bind instances)
    std::vector<InferRequest*> rejected;   // timed out under REJECT
    std::vector<InferRequest*> cancelled;  // the client went away while they waited
    // Refused with a status of their own (e.g. a sequence that timed out while queued).
    std::vector<std::pair<InferRequest*, Status>> refused;
    uint64_t wait_ns = 0;  // nothing to send: wait this long (0 = for news)

    bool Empty() const {
      return batch.empty() && rejected.empty() && cancelled.empty() && refused.empty();
    }
  };

  virtual ~BatchPolicy() = default;

  // Any thread, before the request is queued: stamps what the policy needs (priority level,
  // deadline, ...) or refuses it with the client's answer. Withdraw undoes an admission whose
  // request could not be queued after all.
  virtual Status Admit(InferRequest& request, uint64_t now_ns) = 0;
  virtual void Withdraw(const InferRequest& request) = 0;

  // The batcher thread only, from here on. Every request leaves the policy exactly once: in a
  // Decision, or through TakeAll.
  virtual void Add(InferRequest* request) = 0;
  virtual size_t QueuedCount() const = 0;
  // TRITONSERVER_DELAY_SCHEDULER, Triton's test hook: whether batching is still held for want
  // of `delay_count` queued requests.
  virtual bool Holding(size_t delay_count) const { return QueuedCount() < delay_count; }
  // `idle_instances`: how many instances can take a batch now (at least one). `flush` sends
  // what is queued without waiting for a delay (the scheduler is stopping).
  virtual void Form(uint64_t now_ns, bool flush, int idle_instances, Decision* decision) = 0;
  // Only what needs no instance: timeouts and cancellations (no instance is idle).
  virtual void Purge(uint64_t now_ns, Decision* decision) = 0;
  // Takes every queued request out (a scheduler that gives up on its instances).
  virtual void TakeAll(std::vector<InferRequest*>* requests) = 0;

  // A policy that binds requests to instances (the sequence batcher) names the instance of
  // each batch, sends one only to an instance it knows to be idle, and is told on the batcher
  // thread when an instance has finished the batch it was sent.
  virtual bool BindsInstances() const { return false; }
  virtual void InstanceDone(int /*instance*/) {}

  // Iterative sequences (the sequence batcher's iterative_sequence): a request the backend
  // releases with RESCHEDULE is added again; the sequence of one released otherwise has ended
  // (SequenceEnded, on the batcher thread).
  virtual bool Iterative() const { return false; }
  virtual void SequenceEnded(const CorrelationId& /*id*/, uint64_t /*now_ns*/) {}

  // After a Form or Purge that decided to wait: how many batch units (requests' batch sizes)
  // must arrive before an arrival can change that decision, so that the scheduler need not
  // wake the batcher for fewer. 1 (the default): any arrival may.
  virtual uint64_t UnitsThatMatter() const { return 1; }
};

}  // namespace pyserve
