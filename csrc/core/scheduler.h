// Scheduler: one per model version. Frontends enqueue requests from any thread without a lock;
// one worker thread per model instance takes them off the queue and runs them on its instance.
// Stop() refuses new requests, lets every accepted one run, then joins the workers.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "executor.h"
#include "mpmc_queue.h"
#include "notifier.h"
#include "request.h"
#include "status.h"

namespace pyserve {

struct SchedulerOptions {
  std::string model_name;
  int instance_count = 1;
  size_t queue_capacity = 4096;
};

class Scheduler {
 public:
  static Status Create(const SchedulerOptions& options, std::shared_ptr<Executor> executor,
                       std::unique_ptr<Scheduler>* scheduler);
  ~Scheduler();

  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // On success the scheduler owns the request; on failure `request` is left with the caller.
  Status Enqueue(std::unique_ptr<InferRequest>& request);

  // Requests accepted but not yet completed by an executor.
  uint64_t InflightCount() const { return inflight_.load(std::memory_order_acquire); }

  void Stop();

 private:
  Scheduler(const SchedulerOptions& options, std::shared_ptr<Executor> executor);
  void WorkerLoop(int instance);
  void Run(InferRequest* request, int instance);
  void Release(uint64_t count);  // requests done (or refused); wakes stopping workers at zero

  SchedulerOptions options_;
  std::shared_ptr<Executor> executor_;
  MpmcQueue<InferRequest*> queue_;
  Notifier not_empty_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> inflight_{0};
  std::mutex join_mutex_;
  std::vector<std::thread> workers_;
};

}  // namespace pyserve
