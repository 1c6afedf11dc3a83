#include "scheduler.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/prctl.h>
#endif

#include "request_limits.h"
#include "trace.h"

namespace pyserve {

namespace {

Notifier::Clock::time_point AtSteadyNs(uint64_t ns) {
  return Notifier::Clock::time_point(std::chrono::nanoseconds(ns));
}

const TensorView* FindInput(const InferRequest& request, const std::string& name) {
  for (const auto& t : request.inputs) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Status CancelledStatus() { return Status(StatusCode::kCancelled, "Request was cancelled"); }

// Requests of a batch that get answers (a sequence batch's padding rows get none).
uint64_t AnsweredCount(const Batch& batch) {
  uint64_t count = 0;
  for (const auto& r : batch.requests) count += r->padding ? 0 : 1;
  return count;
}

}  // namespace

Status Scheduler::Create(const SchedulerOptions& options, std::shared_ptr<Executor> executor,
                         std::unique_ptr<Scheduler>* scheduler) {
  const std::string model = "model '" + options.model_name + "'";
  if (options.instance_count < 1) {
    return Status(StatusCode::kInvalidArg, "instance count must be at least 1 for " + model);
  }
  if (!options.instance_devices.empty() &&
      options.instance_devices.size() != static_cast<size_t>(options.instance_count)) {
    return Status(StatusCode::kInvalidArg, "one device per instance is needed for " + model);
  }
  if (!executor) return Status(StatusCode::kInvalidArg, "scheduler needs an executor");
  const CudaRuntime* cuda = CudaRuntime::Get();
  for (int device : options.instance_devices) {
    if (device >= 0 && options.device_inputs && (cuda == nullptr || device >= cuda->device_count())) {
      return Status(StatusCode::kUnavailable,
                    "GPU " + std::to_string(device) + " is not available for " + model);
    }
  }
  if (!options.instance_rate_limits.empty() &&
      options.instance_rate_limits.size() != static_cast<size_t>(options.instance_count)) {
    return Status(StatusCode::kInvalidArg, "one rate limit per instance is needed for " + model);
  }
  std::unique_ptr<Scheduler> created(new Scheduler(options, std::move(executor)));
  Status registered = created->RegisterRateLimits();
  if (!registered.ok()) return registered;
  *scheduler = std::move(created);
  (*scheduler)->Start();
  return Status::OK();
}

Scheduler::Scheduler(const SchedulerOptions& options, std::shared_ptr<Executor> executor)
    : options_(options),
      executor_(std::move(executor)),
      pool_(HostMemoryPool::Global()),
      instances_(options.instance_count),
      ingress_(options.queue_capacity),
      ready_(std::max<size_t>(2, 2 * options.instance_count)),
      done_(std::max<size_t>(2, 2 * options.instance_count)) {
  const CudaRuntime* cuda = CudaRuntime::Get();
  for (size_t i = 0; i < instances_.size(); ++i) {
    Instance& instance = instances_[i];
    instance.device = options_.instance_devices.empty() ? -1 : options_.instance_devices[i];
    if (instance.device >= 0 && options_.device_inputs && cuda != nullptr) {
      instance.stream = cuda->CreateStream(instance.device);
    }
  }
  // Rate-limited instances of one model take turns by priority, which needs a batcher thread
  // to choose: a model that does not batch gets one forming batches of one request.
  ranks_ = options_.rate_limiter && options_.instance_count > 1 &&
           !options_.instance_rate_limits.empty() && !options_.sequence_batching;
  if (options_.dynamic_batching) {
    batcher_ = std::make_unique<DynamicBatcher>(options_.batching);
  } else if (options_.sequence_batching) {
    SequenceBatchingOptions sequence = options_.sequence;
    sequence.instance_count = options_.instance_count;
    if (!sequence.states.empty()) {
      waker_ = std::make_shared<StateWaker>([this] { ingress_ready_.NotifyOne(); });
    }
    batcher_ = std::make_unique<SequenceBatcher>(options_.model_name, std::move(sequence), waker_);
  } else if (ranks_) {
    batcher_ = std::make_unique<DynamicBatcher>(BatchingOptions{});
  }
  binds_ = batcher_ && batcher_->BindsInstances();
  dispatches_ = binds_ || ranks_;
  iterative_ = batcher_ && batcher_->Iterative();
  quiet_waits_ = options_.dynamic_batching && !ranks_ && options_.delay_scheduler_count == 0;
  inline_batching_ = quiet_waits_ && options_.instance_count == 1 && !options_.rate_limiter &&
                     !HasTimeouts(options_.batching);
}

Status Scheduler::RegisterRateLimits() {
  if (!options_.rate_limiter || options_.instance_rate_limits.empty()) return Status::OK();
  std::vector<uint64_t> ids;
  Status status = options_.rate_limiter->Register(options_.instance_rate_limits, &ids);
  if (!status.ok()) return status;
  for (size_t i = 0; i < ids.size(); ++i) instances_[i].rate_limit_id = ids[i];
  return Status::OK();
}

void Scheduler::Start() {
  idle_instances_.store(options_.instance_count);
  running_threads_ = options_.instance_count + (batcher_ && !inline_batching_ ? 1 : 0);
  for (int i = 0; i < options_.instance_count; ++i) {
    workers_.emplace_back([this, i] {
      NameThread("ps-worker");
      // A GPU instance's worker keeps its GPU current, as Triton's instance threads do:
      // frameworks launch their kernels on the calling thread's current device.
      const CudaRuntime* cuda = CudaRuntime::Get();
      if (cuda != nullptr && instances_[i].device >= 0) cuda->SetDevice(instances_[i].device);
      if (static_cast<size_t>(i) < options_.instance_policies.size()) {
        // Checked when the model was loaded (the shell applied it to the loading thread).
        Status applied = ApplyHostPolicy(options_.instance_policies[i]);
        if (!applied.ok()) {
          std::fprintf(stderr, "pyserve: model '%s' instance %d: %s\n",
                       options_.model_name.c_str(), i, applied.message().c_str());
        }
      }
      if (inline_batching_) {
        BatcherLoop(i);
      } else if (batcher_) {
        WorkerLoop(i);
      } else {
        DirectWorkerLoop(i);
      }
      LeaveRateLimiterLine(i);
      ThreadExited();
    });
  }
  if (batcher_ && !inline_batching_) {
    batcher_thread_ = std::thread([this] {
      NameThread("ps-batcher");
      BatcherLoop(-1);
      ThreadExited();
    });
  }
}

void Scheduler::ThreadExited() {
  std::lock_guard<std::mutex> lock(done_mutex_);
  if (--running_threads_ == 0) threads_done_.notify_all();
}

Scheduler::~Scheduler() {
  Stop();
  if (waker_) waker_->Cut();  // a decoupled model may settle a state later
  if (options_.rate_limiter) {  // no worker is left to wait for or hold resources
    std::vector<uint64_t> ids;
    for (const Instance& instance : instances_) ids.push_back(instance.rate_limit_id);
    options_.rate_limiter->Unregister(ids);
  }
  const CudaRuntime* cuda = CudaRuntime::Get();
  if (cuda == nullptr) return;
  for (Instance& instance : instances_) {
    for (auto& [ptr, capacity] : instance.device_buffers) cuda->DeviceFree(instance.device, ptr);
    if (instance.stream != nullptr) cuda->DestroyStream(instance.device, instance.stream);
  }
}

Status Scheduler::Enqueue(std::unique_ptr<InferRequest>& request) {
  // Counted before the stop check, so that a stopping thread cannot exit past this request.
  inflight_.fetch_add(1, std::memory_order_seq_cst);
  if (batcher_) in_ingress_.fetch_add(1, std::memory_order_seq_cst);
  auto refuse = [&](Status status) {
    if (batcher_) in_ingress_.fetch_sub(1, std::memory_order_seq_cst);
    Release(1);
    return status;
  };
  if (stopping_.load(std::memory_order_seq_cst)) {
    return refuse(Status(StatusCode::kUnavailable,
                         "model '" + options_.model_name + "' is not accepting requests"));
  }
  if (options_.max_pending != 0 && PendingCount() > options_.max_pending) {
    return refuse(Status(StatusCode::kUnavailable, "Exceeds maximum queue size"));
  }
  const uint64_t now = SteadyNowNs();
  request->enqueue_ns = now;
  if (batcher_) {
    Status admitted = batcher_->Admit(*request, now);
    if (!admitted.ok()) return refuse(std::move(admitted));
  }
  InferRequest* raw = request.get();
  // Counted before the push, so that the batcher never takes away units not yet added.
  const uint64_t units = quiet_waits_ ? std::max<uint64_t>(raw->batch_size, 1) : 0;
  ingress_units_.fetch_add(units, std::memory_order_seq_cst);
  if (!ingress_.TryPush(raw)) {
    ingress_units_.fetch_sub(units, std::memory_order_seq_cst);
    if (batcher_) batcher_->Withdraw(*request);
    return refuse(Status(StatusCode::kUnavailable, "Exceeds maximum queue size"));
  }
  request.release();
  if (!quiet_waits_ || ingress_units_.load(std::memory_order_seq_cst) >=
                           wake_units_.load(std::memory_order_seq_cst)) {
    ingress_ready_.NotifyOne();
  }
  return Status::OK();
}

void Scheduler::Release(uint64_t count) {
  uint64_t before = inflight_.fetch_sub(count, std::memory_order_seq_cst);
  if (before == count && stopping_.load(std::memory_order_seq_cst)) {
    ingress_ready_.NotifyAll();
    batch_ready_.NotifyAll();
  }
}

// The batcher: on its own thread (runs_on < 0), or on the worker of the model's only
// instance (inline batching), which then runs each batch it forms itself.
void Scheduler::BatcherLoop(int runs_on) {
#if defined(__linux__)
  // The batcher's timed waits are max_queue_delay's, often 100 µs or less: the kernel's
  // default timer slack (50 µs) would add up to half of that again to each batch.
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
#endif
  uint32_t hold = options_.delay_scheduler_count;
  std::unique_lock<std::mutex> policy(policy_mutex_, std::defer_lock);
  for (;;) {
    if (runs_on >= 0) policy.lock();  // Abandon may take the policy's requests while it runs
    // Prepared before looking, so that a notification during the look is not lost.
    const uint64_t key = ingress_ready_.PrepareWait();
    InferRequest* request = nullptr;
    while (ingress_.TryPop(request)) {
      if (quiet_waits_) {
        ingress_units_.fetch_sub(std::max<uint64_t>(request->batch_size, 1),
                                 std::memory_order_seq_cst);
      }
      batcher_->Add(request);
      in_ingress_.fetch_sub(1, std::memory_order_seq_cst);
    }
    if (iterative_) {
      std::vector<CorrelationId> ended;
      {
        std::lock_guard<std::mutex> lock(ended_mutex_);
        ended.swap(ended_);
      }
      for (const CorrelationId& id : ended) batcher_->SequenceEnded(id, SteadyNowNs());
    }
    for (int done = 0; binds_ && done_.TryPop(done);) batcher_->InstanceDone(done);
    for (int done = 0; ranks_ && done_.TryPop(done);) instances_[done].idle = true;
    if (abandoning_.load(std::memory_order_seq_cst)) {
      ingress_ready_.CancelWait();
      TakeAllAbandoned();
      break;
    }
    const bool stopping = stopping_.load(std::memory_order_seq_cst);
    if (stopping && in_ingress_.load(std::memory_order_seq_cst) == 0 && batcher_->QueuedCount() == 0) {
      ingress_ready_.CancelWait();
      break;
    }
    if (hold > 0 && !stopping && batcher_->Holding(hold)) {
      ingress_ready_.Wait(key);  // TRITONSERVER_DELAY_SCHEDULER: hold until enough are queued
      continue;
    }
    hold = 0;

    const uint64_t now = SteadyNowNs();
    BatchPolicy::Decision decision;
    const int idle = idle_instances_.load(std::memory_order_acquire);
    if (idle > 0) {
      batcher_->Form(now, stopping, idle, &decision);  // lazily: only when an instance can take it
    } else {
      batcher_->Purge(now, &decision);
    }
    if (!decision.rejected.empty()) {
      RejectRequests(decision.rejected, now, Status(StatusCode::kUnavailable, "Request timeout expired"));
    }
    if (!decision.cancelled.empty()) RejectRequests(decision.cancelled, now, CancelledStatus());
    for (auto& [request, status] : decision.refused) {
      std::vector<InferRequest*> one{request};
      RejectRequests(one, now, status);
    }
    if (!decision.batch.empty()) {
      auto batch = std::make_unique<Batch>();
      for (InferRequest* r : decision.batch) batch->requests.emplace_back(r);
      idle_instances_.fetch_sub(1, std::memory_order_acq_rel);
      if (runs_on >= 0) {
        ingress_ready_.CancelWait();
        policy.unlock();
        RunInline(std::move(batch), runs_on);
        continue;
      }
      Batch* raw = batch.release();
      if (ranks_) decision.instance = PreferredIdleInstance();
      if (decision.instance >= 0) {  // the policy knows this instance to be idle
        instances_[decision.instance].bound.store(raw, std::memory_order_release);
        batch_ready_.NotifyAll();
      } else {
        ready_.TryPush(raw);  // never full: at most one batch per idle instance is out
        batch_ready_.NotifyOne();
      }
    }
    if (!decision.Empty() || !SleepIsQuiet(idle)) {
      ingress_ready_.CancelWait();
      if (runs_on >= 0) policy.unlock();
      continue;
    }
    if (runs_on >= 0) policy.unlock();
    if (decision.wait_ns > 0) {
      ingress_ready_.Wait(key, AtSteadyNs(now + decision.wait_ns));
    } else {
      ingress_ready_.Wait(key);
    }
  }
  batcher_done_.store(true, std::memory_order_seq_cst);
  batch_ready_.NotifyAll();
}

// Inline batching: the batch runs on the batcher's own thread, which saves a wake-up per batch.
void Scheduler::RunInline(std::unique_ptr<Batch> batch, int instance) {
  batch->instance = instance;
  if (abandoning_.load(std::memory_order_seq_cst)) {
    RejectBatch(std::move(batch), AbandonedStatus());
  } else {
    Run(std::move(batch));
  }
  instances_[instance].executions.fetch_add(1, std::memory_order_acq_rel);
  idle_instances_.fetch_add(1, std::memory_order_seq_cst);
}

// What waits in the policy and the ingress when Stop gives up: answered, not run.
void Scheduler::TakeAllAbandoned() {
  std::vector<InferRequest*> queued;
  batcher_->TakeAll(&queued);
  InferRequest* request = nullptr;
  while (ingress_.TryPop(request)) {
    in_ingress_.fetch_sub(1, std::memory_order_seq_cst);
    queued.push_back(request);
  }
  if (!queued.empty()) RejectRequests(queued, SteadyNowNs(), AbandonedStatus());
}

// Of the instances without a batch, the one Triton's limiter would stage: lowest executions
// times priority (at least 1), the first on a tie; -1 when none is known to be idle yet.
int Scheduler::PreferredIdleInstance() {
  // An instance counted idle pushed to done_ before it was counted: its entry is there now.
  for (int done = 0; done_.TryPop(done);) instances_[done].idle = true;
  int preferred = -1;
  uint64_t lowest = 0;
  for (int i = 0; i < options_.instance_count; ++i) {
    Instance& instance = instances_[i];
    if (!instance.idle) continue;
    const uint64_t priority = std::max<uint32_t>(options_.instance_rate_limits[i].priority, 1);
    const uint64_t scaled = instance.executions.load(std::memory_order_acquire) * priority;
    if (preferred < 0 || scaled < lowest) {
      preferred = i;
      lowest = scaled;
    }
  }
  if (preferred >= 0) instances_[preferred].idle = false;
  return preferred;
}

// Before the batcher sleeps (dynamic batching): says what may wake it, then looks again at
// what arrived or went idle meanwhile (whose thread may not have seen the new rules). False:
// something that matters did, so do not sleep.
bool Scheduler::SleepIsQuiet(int idle_seen) {
  if (!quiet_waits_) return true;
  const bool stopping = stopping_.load(std::memory_order_seq_cst);  // wakes for everything
  const bool queued = batcher_->QueuedCount() > 0;
  uint64_t units = 1;
  if (queued && !stopping) {
    units = std::clamp<uint64_t>(batcher_->UnitsThatMatter(), 1,
                                 std::max<uint64_t>(options_.queue_capacity / 2, 1));
  }
  wake_units_.store(units, std::memory_order_seq_cst);
  idle_is_quiet_.store(!stopping && (!queued || idle_seen > 0), std::memory_order_seq_cst);
  if (ingress_units_.load(std::memory_order_seq_cst) >= units) return false;
  return idle_seen > 0 || idle_instances_.load(std::memory_order_seq_cst) == 0;
}

void Scheduler::WorkerLoop(int instance) {
  Batch* batch = nullptr;
  auto run = [&] {
    batch->instance = instance;
    if (abandoning_.load(std::memory_order_seq_cst)) {
      RejectBatch(std::unique_ptr<Batch>(batch), AbandonedStatus());
    } else {
      Run(std::unique_ptr<Batch>(batch));
    }
    instances_[instance].executions.fetch_add(1, std::memory_order_acq_rel);
    if (dispatches_) done_.TryPush(instance);  // never full: one entry per instance at most
    idle_instances_.fetch_add(1, std::memory_order_seq_cst);
    if (!idle_is_quiet_.load(std::memory_order_seq_cst)) {
      ingress_ready_.NotifyOne();  // the batcher may form the next batch now
    }
  };
  for (;;) {
    if (TakeBatch(instance, batch) || SpinBriefly([&] { return TakeBatch(instance, batch); })) {
      run();
      continue;
    }
    const uint64_t key = batch_ready_.PrepareWait();
    if (TakeBatch(instance, batch)) {
      batch_ready_.CancelWait();
      run();
    } else if (batcher_done_.load(std::memory_order_seq_cst)) {
      batch_ready_.CancelWait();
      // The batcher's last batch may have been pushed between the pop above and this load
      // (it sets batcher_done_ after that push): take it, or it is never answered.
      if (!TakeBatch(instance, batch)) return;
      run();
    } else {
      LeaveRateLimiterLine(instance);
      batch_ready_.Wait(key);
    }
  }
}

bool Scheduler::TakeBatch(int instance, Batch*& batch) {
  if (ready_.TryPop(batch)) return true;
  if (!dispatches_) return false;
  batch = instances_[instance].bound.exchange(nullptr, std::memory_order_acq_rel);
  return batch != nullptr;
}

void Scheduler::DirectWorkerLoop(int instance) {
  InferRequest* request = nullptr;
  auto run = [&] {
    auto batch = std::make_unique<Batch>();
    batch->instance = instance;
    batch->requests.emplace_back(request);
    Run(std::move(batch));
  };
  for (;;) {
    if (ingress_.TryPop(request) || SpinBriefly([&] { return ingress_.TryPop(request); })) {
      run();
      continue;
    }
    const uint64_t key = ingress_ready_.PrepareWait();
    if (ingress_.TryPop(request)) {
      ingress_ready_.CancelWait();
      run();
    } else if ((stopping_.load(std::memory_order_seq_cst) &&
                inflight_.load(std::memory_order_seq_cst) == 0) ||
               abandoning_.load(std::memory_order_seq_cst)) {
      ingress_ready_.CancelWait();
      return;
    } else {
      LeaveRateLimiterLine(instance);
      ingress_ready_.Wait(key);
    }
  }
}

// A worker about to sleep: it stayed in the limiter's line for work it did not get.
void Scheduler::LeaveRateLimiterLine(int instance) {
  if (options_.rate_limiter) options_.rate_limiter->Withdraw(instances_[instance].rate_limit_id);
}

void Scheduler::Run(std::unique_ptr<Batch> batch) {
  Instance& instance = instances_[batch->instance];
  // Waiting for the instance's resources is queue time (the requests are pending), as in Triton.
  if (options_.rate_limiter) {
    options_.rate_limiter->Acquire(instance.rate_limit_id);
    if (abandoning_.load(std::memory_order_seq_cst)) {  // Stop gave up while it waited
      options_.rate_limiter->Release(instance.rate_limit_id);
      RejectBatch(std::move(batch), AbandonedStatus());
      return;
    }
  }
  const uint64_t count = binds_ ? AnsweredCount(*batch) : batch->requests.size();
  executing_.fetch_add(count, std::memory_order_acq_rel);
  RejectCancelled(*batch);
  if (batch->requests.empty() || (binds_ && AnsweredCount(*batch) == 0)) {
    if (options_.rate_limiter) options_.rate_limiter->Release(instance.rate_limit_id);
    executing_.fetch_sub(count, std::memory_order_acq_rel);
    Release(count);
    return;
  }
  batch->times.input_start = SteadyNowNs();
  Status status;
  if (!GatherBatch(*batch, pool_)) {
    status = Status(StatusCode::kInternal, "out of host memory for a batch of model '" +
                                               options_.model_name + "'");
  } else if (options_.device_inputs && instance.stream != nullptr && !CopyToDevice(*batch, instance)) {
    status = Status(StatusCode::kInternal, "failed to copy a batch of model '" +
                                               options_.model_name + "' to GPU " +
                                               std::to_string(instance.device));
  }
  if (status.ok()) {
    {
      std::lock_guard<std::mutex> lock(instance.running_mutex);
      instance.running = batch.get();
    }
    try {
      status = executor_->Execute(*batch);
    } catch (...) {  // an executor must complete its requests; a throw is a bug, not a crash
      status = Status(StatusCode::kInternal, "executor of model '" + options_.model_name + "' failed");
    }
    std::lock_guard<std::mutex> lock(instance.running_mutex);
    instance.running = nullptr;
  } else {
    std::vector<InferRequest*> requests;
    for (const auto& r : batch->requests) requests.push_back(r.get());
    executor_->Reject(requests, status);
  }
  if (batch->stream != nullptr) CudaRuntime::Get()->Synchronize(batch->stream);
  // With more requests waiting, the instance stays in the limiter's line as Triton's does.
  if (options_.rate_limiter) {
    options_.rate_limiter->Release(instance.rate_limit_id, PendingCount() > 0);
  }
  BatchTimes& t = batch->times;
  const uint64_t now = SteadyNowNs();
  if (t.infer_start == 0) t.infer_start = t.input_start;
  if (t.infer_end == 0) t.infer_end = now;
  if (t.output_end == 0) t.output_end = now;
  for (const auto& request : batch->requests) {
    if (request->trace) request->trace->StampBatch(*request, t);
  }
  stats_.RecordBatch(*batch, status.ok());
  if (iterative_) Reschedule(*batch);
  batch.reset();  // frees the requests and gives the gathered buffers back to the pool
  executing_.fetch_sub(count, std::memory_order_acq_rel);
  Release(count);
}

bool GatherBatch(Batch& batch, HostMemoryPool& pool) {
  const InferRequest& first = *batch.requests.front();
  if (batch.requests.size() == 1) {
    batch.inputs = first.inputs;  // zero-copy: the request's own bytes
    return true;
  }
  for (const TensorView& model_input : first.inputs) {
    std::vector<const TensorView*> parts;
    size_t total = 0;
    int64_t rows = 0, elements = 0;
    bool same_shape = true;
    for (const auto& request : batch.requests) {
      const TensorView* part = FindInput(*request, model_input.name);
      if (part == nullptr) continue;  // an optional input some requests leave out
      parts.push_back(part);
      total += part->byte_size;
      rows += part->shape.empty() ? 1 : part->shape[0];
      uint64_t count = 0;
      CountElements(part->shape, &count);  // validated: within the limit
      elements += static_cast<int64_t>(count);
      same_shape = same_shape && part->shape.size() == model_input.shape.size() &&
                   std::equal(part->shape.begin() + (part->shape.empty() ? 0 : 1),
                              part->shape.end(),
                              model_input.shape.begin() + (model_input.shape.empty() ? 0 : 1));
    }
    std::shared_ptr<uint8_t> buffer = pool.Acquire(std::max<size_t>(total, 1));
    if (!buffer) return false;
    size_t offset = 0;
    for (const TensorView* part : parts) {
      if (part->byte_size != 0) std::memcpy(buffer.get() + offset, part->data, part->byte_size);
      offset += part->byte_size;
    }
    TensorView gathered = model_input;
    gathered.data = buffer.get();
    gathered.byte_size = total;
    if (same_shape && !gathered.shape.empty()) {
      gathered.shape[0] = rows;
    } else {
      gathered.shape = {elements};  // ragged: the elements end to end
    }
    batch.inputs.push_back(std::move(gathered));
    batch.buffers.push_back(std::move(buffer));
  }
  return true;
}

bool Scheduler::CopyToDevice(Batch& batch, Instance& instance) {
  const CudaRuntime* cuda = CudaRuntime::Get();
  instance.device_buffers.resize(std::max(instance.device_buffers.size(), batch.inputs.size()));
  for (size_t i = 0; i < batch.inputs.size(); ++i) {
    const TensorView& host = batch.inputs[i];
    if (host.dtype == DataType::kBytes) continue;  // strings are read on the host
    auto& [ptr, capacity] = instance.device_buffers[i];
    if (capacity < host.byte_size) {
      if (ptr != nullptr) cuda->DeviceFree(instance.device, ptr);
      capacity = std::max<size_t>(host.byte_size, 2 * capacity);
      ptr = cuda->DeviceAlloc(instance.device, capacity);
      if (ptr == nullptr) {
        capacity = 0;
        return false;
      }
    }
    if (host.byte_size != 0 &&
        !cuda->CopyToDeviceAsync(ptr, host.data, host.byte_size, instance.stream)) {
      return false;
    }
    TensorView on_device = host;
    on_device.data = static_cast<const uint8_t*>(ptr);
    batch.device_inputs.push_back(std::move(on_device));
  }
  batch.device = instance.device;
  batch.stream = instance.stream;
  return true;
}

void Scheduler::RejectRequests(std::vector<InferRequest*>& requests, uint64_t now_ns,
                               const Status& status) {
  for (InferRequest* request : requests) stats_.RecordRejected(*request, now_ns);
  executor_->Reject(requests, status);
  for (InferRequest* request : requests) delete request;
  Release(requests.size());
}

// Requests whose clients went away after the batch was formed are answered, not computed.
void Scheduler::Reschedule(Batch& batch) {
  for (size_t i = 0; i < batch.requests.size(); ++i) {
    std::unique_ptr<InferRequest>& request = batch.requests[i];
    if (request->padding) continue;
    if (i >= batch.reschedule.size() || !batch.reschedule[i]) {
      NoteEnded(*request);
      continue;
    }
    request->flags = 0;  // the same sequence, neither starting nor ending
    request->rescheduled = true;
    Status status = Enqueue(request);  // on success the queue owns it
    if (!status.ok()) {
      executor_->Reject({request.get()}, status);
      NoteEnded(*request);
    }
  }
}

void Scheduler::NoteEnded(const InferRequest& request) {
  if ((request.flags & kSequenceEnd) != 0) return;  // its END released the slot
  std::lock_guard<std::mutex> lock(ended_mutex_);
  ended_.push_back(request.correlation_id);
}

void Scheduler::RejectCancelled(Batch& batch) {
  auto& requests = batch.requests;
  auto cancelled = std::stable_partition(requests.begin(), requests.end(),
                                         [](const auto& r) { return !r->Cancelled(); });
  if (cancelled == requests.end()) return;
  const uint64_t now = SteadyNowNs();
  std::vector<InferRequest*> refused;
  for (auto it = cancelled; it != requests.end(); ++it) {
    stats_.RecordRejected(**it, now);
    refused.push_back(it->get());
    if (iterative_) NoteEnded(**it);
  }
  executor_->Reject(refused, CancelledStatus());
  requests.erase(cancelled, requests.end());
}

bool Scheduler::Stop(double timeout_seconds) {
  stopping_.store(true, std::memory_order_seq_cst);
  ingress_ready_.NotifyAll();
  batch_ready_.NotifyAll();
  std::lock_guard<std::mutex> lock(join_mutex_);
  if (abandoning_.load()) return false;
  if (timeout_seconds >= 0) {
    std::unique_lock<std::mutex> done(done_mutex_);
    const auto timeout = std::chrono::duration<double>(timeout_seconds);
    if (!threads_done_.wait_for(done, timeout, [this] { return running_threads_ == 0; })) {
      done.unlock();
      Abandon();
      return false;
    }
  }
  if (batcher_thread_.joinable()) batcher_thread_.join();
  for (auto& w : workers_) {
    if (w.joinable()) w.join();
  }
  return true;
}

// Stop's timeout passed with an instance still executing: what waits is answered, the
// threads are left to finish (or not) on their own.
void Scheduler::Abandon() {
  abandoning_.store(true, std::memory_order_seq_cst);
  ingress_ready_.NotifyAll();
  batch_ready_.NotifyAll();
  if (!batcher_) {  // no batcher to drain the ingress: answer it here
    InferRequest* request = nullptr;
    std::vector<InferRequest*> queued;
    while (ingress_.TryPop(request)) queued.push_back(request);
    if (!queued.empty()) RejectRequests(queued, SteadyNowNs(), AbandonedStatus());
  } else if (inline_batching_) {  // the batcher's thread may be the one that hangs
    std::lock_guard<std::mutex> policy(policy_mutex_);
    TakeAllAbandoned();
  }
  Batch* batch = nullptr;
  while (ready_.TryPop(batch)) RejectBatch(std::unique_ptr<Batch>(batch), AbandonedStatus());
  for (Instance& instance : instances_) {
    batch = instance.bound.exchange(nullptr);
    if (batch != nullptr) RejectBatch(std::unique_ptr<Batch>(batch), AbandonedStatus());
  }
  // The hung batches' requests are answered now; their late results will not be.
  for (Instance& instance : instances_) {
    std::lock_guard<std::mutex> lock(instance.running_mutex);
    if (instance.running == nullptr) continue;
    std::vector<InferRequest*> requests;
    for (auto& r : instance.running->requests) requests.push_back(r.get());
    executor_->Reject(requests, AbandonedStatus());
  }
  if (batcher_thread_.joinable()) batcher_thread_.detach();
  for (auto& w : workers_) {
    if (w.joinable()) w.detach();
  }
}

Status Scheduler::AbandonedStatus() const {
  return Status(StatusCode::kUnavailable, "model '" + options_.model_name +
                                              "' was stopped while an instance was still "
                                              "executing (stop timeout)");
}

// A formed batch answered without running it.
void Scheduler::RejectBatch(std::unique_ptr<Batch> batch, const Status& status) {
  const uint64_t now = SteadyNowNs();
  std::vector<InferRequest*> requests;
  for (auto& r : batch->requests) {
    if (r->padding) continue;
    stats_.RecordRejected(*r, now);
    requests.push_back(r.get());
  }
  executor_->Reject(requests, status);
  const uint64_t count = requests.size();
  batch.reset();
  Release(count);
}

}  // namespace pyserve
