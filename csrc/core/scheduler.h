// RequestScheduler: what a served model version hands its accepted requests to. Scheduler (the
// instances of a model, batching by a BatchPolicy) is one; an ensemble's, which hands each step
// to its composing model, is another.
//
// Scheduler: one per model version. Frontends enqueue requests from any thread without a lock.
// With a batching policy (Triton's dynamic batcher), a batcher thread forms batches whenever
// an instance is idle; without one, each request is its own batch. One worker thread
// per model instance gathers a batch's inputs into pooled host memory (no GIL, no copy for a
// single request), copies them to its GPU on its own stream when asked, runs the executor and
// records statistics. Stop() refuses new requests, runs every accepted one, joins the threads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "batch_policy.h"
#include "cuda_runtime.h"
#include "dynamic_batcher.h"
#include "executor.h"
#include "host_memory.h"
#include "host_policy.h"
#include "mpmc_queue.h"
#include "notifier.h"
#include "rate_limiter.h"
#include "request.h"
#include "sequence_batcher.h"
#include "stats.h"
#include "status.h"

namespace pyserve {

struct SchedulerOptions {
  std::string model_name;
  int instance_count = 1;
  // Per instance: the GPU it runs on, or -1 for the CPU. Empty = all CPU.
  std::vector<int> instance_devices;
  bool device_inputs = false;  // copy batch inputs to the instance's GPU before Execute
  // Per instance: the host policy its worker thread runs under. Empty = none.
  std::vector<HostPolicy> instance_policies;
  // --rate-limit=execution_count: the server's limiter, and per instance what it asks of it
  // (empty = nothing). Null: instances run whenever they have a batch.
  std::shared_ptr<RateLimiter> rate_limiter;
  std::vector<InstanceRateLimit> instance_rate_limits;
  size_t queue_capacity = 4096;
  // Requests accepted and not yet executing, at most (0 = no bound but queue_capacity's);
  // past it Enqueue refuses at once with UNAVAILABLE "Exceeds maximum queue size".
  uint64_t max_pending = 0;
  bool dynamic_batching = false;
  BatchingOptions batching;
  uint32_t delay_scheduler_count = 0;  // hold batching until this many requests are queued
  bool sequence_batching = false;  // Triton's sequence batcher (instead of dynamic_batching)
  SequenceBatchingOptions sequence;  // its instance_count is the scheduler's
};

class RequestScheduler {
 public:
  virtual ~RequestScheduler() = default;
  // On success the scheduler owns the request; on failure `request` is left with the caller.
  virtual Status Enqueue(std::unique_ptr<InferRequest>& request) = 0;
  // Requests accepted but not yet completed.
  virtual uint64_t InflightCount() const = 0;
  // Requests accepted and not yet executing (Triton's nv_inference_pending_request_count).
  virtual uint64_t PendingCount() const = 0;
  virtual ModelStats Statistics() const = 0;
  // Refuses new requests, answers every accepted one and joins the threads. With a timeout
  // (seconds, < 0 = none), gives up when it passes: requests not yet executing are answered
  // UNAVAILABLE, work still executing is abandoned (its threads detached; the scheduler must
  // then never be destroyed). Returns false when it gave up.
  virtual bool Stop(double timeout_seconds = -1) = 0;
  // Refusing new requests: Stop has begun.
  virtual bool Stopping() const = 0;
};

// Gathers the batch's inputs into one pooled host buffer per input (batch.inputs), or aliases
// the request's own bytes when the batch holds one request. Returns false when out of memory.
bool GatherBatch(Batch& batch, HostMemoryPool& pool);

class Scheduler : public RequestScheduler {
 public:
  static Status Create(const SchedulerOptions& options, std::shared_ptr<Executor> executor,
                       std::unique_ptr<Scheduler>* scheduler);
  ~Scheduler() override;

  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  Status Enqueue(std::unique_ptr<InferRequest>& request) override;
  uint64_t InflightCount() const override { return inflight_.load(std::memory_order_acquire); }
  uint64_t PendingCount() const override {
    const uint64_t inflight = inflight_.load(std::memory_order_acquire);
    const uint64_t executing = executing_.load(std::memory_order_acquire);
    return inflight > executing ? inflight - executing : 0;
  }
  ModelStats Statistics() const override { return stats_.Snapshot(); }
  // Instances with no batch to run (tests wait on it: an instance counted here has finished
  // its batch, and the batcher hears so before it forms the next).
  int IdleInstanceCount() const { return idle_instances_.load(std::memory_order_acquire); }
  bool Stop(double timeout_seconds = -1) override;
  bool Stopping() const override { return stopping_.load(std::memory_order_seq_cst); }

 private:
  struct Instance {
    std::mutex running_mutex;  // guards `running`
    Batch* running = nullptr;  // the batch the instance is executing
    int device = -1;
    CudaStream stream = nullptr;
    std::vector<std::pair<void*, size_t>> device_buffers;  // per input: pointer, capacity
    std::atomic<Batch*> bound{nullptr};  // a batch for this instance only (dispatches_)
    uint64_t rate_limit_id = 0;  // its resources in options_.rate_limiter (0: none)
    std::atomic<uint64_t> executions{0};  // batches it was handed (ranks_: its turn)
    bool idle = true;                     // ranks_, batcher thread only: has no batch
  };

  Scheduler(const SchedulerOptions& options, std::shared_ptr<Executor> executor);
  Status RegisterRateLimits();
  void Start();
  void BatcherLoop(int runs_on);
  void RunInline(std::unique_ptr<Batch> batch, int instance);
  void TakeAllAbandoned();
  void WorkerLoop(int instance);
  void DirectWorkerLoop(int instance);
  void Run(std::unique_ptr<Batch> batch);
  bool CopyToDevice(Batch& batch, Instance& instance);
  void RejectRequests(std::vector<InferRequest*>& requests, uint64_t now_ns, const Status& status);
  void RejectCancelled(Batch& batch);
  // Iterative sequences, after a batch: requests released with RESCHEDULE are queued again;
  // the others' sequences have ended, which the batcher thread hears next.
  void Reschedule(Batch& batch);
  void NoteEnded(const InferRequest& request);
  void Release(uint64_t count);
  bool TakeBatch(int instance, Batch*& batch);
  bool SleepIsQuiet(int idle_seen);
  void LeaveRateLimiterLine(int instance);
  int PreferredIdleInstance();

  SchedulerOptions options_;
  std::shared_ptr<Executor> executor_;
  std::unique_ptr<BatchPolicy> batcher_;  // null: each request is its own batch
  std::shared_ptr<StateWaker> waker_;  // implicit state: a settled state wakes the batcher
  bool binds_ = false;  // the policy sends each batch to an instance of its choice
  // With the rate limiter, each batch goes to the idle instance of lowest executions times
  // priority, as Triton's limiter picks among a model's available instances.
  bool ranks_ = false;
  bool dispatches_ = false;  // binds_ or ranks_: batches go to a named instance
  HostMemoryPool& pool_;
  StatsRecorder stats_;
  std::vector<Instance> instances_;

  MpmcQueue<InferRequest*> ingress_;
  Notifier ingress_ready_;  // wakes whoever consumes ingress_ (batcher, or direct workers)
  MpmcQueue<Batch*> ready_;
  Notifier batch_ready_;    // wakes workers when ready_ gets a batch
  std::atomic<int> idle_instances_{0};
  MpmcQueue<int> done_;  // dispatches_: instances that finished their batch, for the batcher
  bool iterative_ = false;  // the policy runs iterative sequences
  std::mutex ended_mutex_;
  std::vector<CorrelationId> ended_;  // guarded by ended_mutex_: for the policy

  void Abandon();
  void RejectBatch(std::unique_ptr<Batch> batch, const Status& status);
  Status AbandonedStatus() const;
  void ThreadExited();

  std::atomic<bool> stopping_{false};
  std::atomic<bool> abandoning_{false};  // Stop's timeout passed: answer, do not run
  int running_threads_ = 0;  // guarded by done_mutex_
  std::mutex done_mutex_;
  std::condition_variable threads_done_;
  std::atomic<bool> batcher_done_{false};
  std::atomic<uint64_t> inflight_{0};
  std::atomic<uint64_t> executing_{0};  // requests in batches an instance is running
  std::atomic<uint64_t> in_ingress_{0};  // accepted, not yet taken by the batcher
  // What wakes a sleeping batcher (dynamic batching; other policies are woken by everything):
  // arrivals once ingress holds `wake_units_` batch units, and instances going idle unless
  // `idle_is_quiet_` (nothing is queued, or an instance is idle already). Each wake-up is a
  // context switch, which costs more than the work it finds.
  bool quiet_waits_ = false;
  std::atomic<uint64_t> ingress_units_{0};
  std::atomic<uint64_t> wake_units_{1};
  std::atomic<bool> idle_is_quiet_{false};
  // One instance, no rate limiter, no queue timeouts: its worker is also its batcher (a
  // timeout needs a batcher awake while the instance runs).
  bool inline_batching_ = false;
  std::mutex policy_mutex_;  // inline batching: the policy, between its thread and Abandon
  std::mutex join_mutex_;
  std::thread batcher_thread_;
  std::vector<std::thread> workers_;
};

}  // namespace pyserve
