#include "scheduler.h"

#include <chrono>

namespace pyserve {

namespace {
uint64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

Status Scheduler::Create(const SchedulerOptions& options, std::shared_ptr<Executor> executor,
                         std::unique_ptr<Scheduler>* scheduler) {
  if (options.instance_count < 1) {
    return Status(StatusCode::kInvalidArg, "instance count must be at least 1 for model '" +
                                               options.model_name + "'");
  }
  if (!executor) return Status(StatusCode::kInvalidArg, "scheduler needs an executor");
  scheduler->reset(new Scheduler(options, std::move(executor)));
  return Status::OK();
}

Scheduler::Scheduler(const SchedulerOptions& options, std::shared_ptr<Executor> executor)
    : options_(options), executor_(std::move(executor)), queue_(options.queue_capacity) {
  workers_.reserve(options_.instance_count);
  for (int i = 0; i < options_.instance_count; ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
}

Scheduler::~Scheduler() { Stop(); }

Status Scheduler::Enqueue(std::unique_ptr<InferRequest>& request) {
  // Counted before the stop check so that a stopping worker cannot exit past this request.
  inflight_.fetch_add(1, std::memory_order_seq_cst);
  if (stopping_.load(std::memory_order_seq_cst)) {
    Release(1);
    return Status(StatusCode::kUnavailable,
                  "model '" + options_.model_name + "' is not accepting requests");
  }
  request->enqueue_ns = NowNs();
  InferRequest* raw = request.get();
  if (!queue_.TryPush(raw)) {
    Release(1);
    return Status(StatusCode::kUnavailable, "Exceeds maximum queue size");
  }
  request.release();
  not_empty_.NotifyOne();
  return Status::OK();
}

void Scheduler::Release(uint64_t count) {
  uint64_t before = inflight_.fetch_sub(count, std::memory_order_seq_cst);
  if (before == count && stopping_.load(std::memory_order_seq_cst)) not_empty_.NotifyAll();
}

void Scheduler::Run(InferRequest* request, int instance) {
  Batch batch;
  batch.instance = instance;
  batch.requests.emplace_back(request);
  batch.inputs = request->inputs;
  executor_->Execute(batch);
  Release(batch.requests.size());
}

void Scheduler::WorkerLoop(int instance) {
  InferRequest* request = nullptr;
  for (;;) {
    if (queue_.TryPop(request)) {
      Run(request, instance);
      continue;
    }
    uint64_t key = not_empty_.PrepareWait();
    if (queue_.TryPop(request)) {
      not_empty_.CancelWait();
      Run(request, instance);
    } else if (stopping_.load(std::memory_order_seq_cst) &&
               inflight_.load(std::memory_order_seq_cst) == 0) {
      not_empty_.CancelWait();
      return;
    } else {
      not_empty_.Wait(key);
    }
  }
}

void Scheduler::Stop() {
  stopping_.store(true, std::memory_order_seq_cst);
  not_empty_.NotifyAll();
  std::lock_guard<std::mutex> lock(join_mutex_);
  for (auto& w : workers_) {
    if (w.joinable()) w.join();
  }
}

}  // namespace pyserve
