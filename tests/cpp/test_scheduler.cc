#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <string>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "check.h"
#include "scheduler.h"

using namespace pyserve;

// Records which requests ran on which instance; optionally slow.
class RecordingExecutor : public Executor {
 public:
  explicit RecordingExecutor(std::chrono::microseconds delay = {}) : delay_(delay) {}
  Status Execute(Batch& batch) override {
    if (delay_.count() > 0) std::this_thread::sleep_for(delay_);
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& r : batch.requests) {
      ids_.insert(r->id);
      CHECK(batch.inputs.size() == r->inputs.size());
      // A single-request batch aliases the request's bytes.
      for (size_t i = 0; i < r->inputs.size(); ++i) CHECK(batch.inputs[i].data == r->inputs[i].data);
    }
    instances_.insert(batch.instance);
    return Status::OK();
  }
  void Reject(const std::vector<InferRequest*>& requests, const Status&) override {
    std::lock_guard<std::mutex> lock(mutex_);
    rejected_ += requests.size();
  }
  size_t rejected_ = 0;
  std::set<uint64_t> ids() { std::lock_guard<std::mutex> l(mutex_); return ids_; }
  std::set<int> instances() { std::lock_guard<std::mutex> l(mutex_); return instances_; }

 private:
  std::chrono::microseconds delay_;
  std::mutex mutex_;
  std::set<uint64_t> ids_;
  std::set<int> instances_;
};

static std::unique_ptr<InferRequest> MakeRequest(uint64_t id, const int32_t* data) {
  auto r = std::make_unique<InferRequest>();
  r->id = id;
  TensorView t;
  t.name = "INPUT0";
  t.dtype = DataType::kInt32;
  t.shape = {1, 4};
  t.data = reinterpret_cast<const uint8_t*>(data);
  t.byte_size = 16;
  r->inputs.push_back(t);
  return r;
}

// Until every accepted request has been taken by an instance (so later ones queue behind).
static void WaitUntilNonePending(const Scheduler& s) {
  for (int i = 0; i < 5000 && s.PendingCount() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK(s.PendingCount() == 0);
}

static void RejectsBadOptions() {
  SchedulerOptions options;
  options.instance_count = 0;
  std::unique_ptr<Scheduler> s;
  CHECK(Scheduler::Create(options, std::make_shared<RecordingExecutor>(), &s).code() ==
        StatusCode::kInvalidArg);
  options.instance_count = 1;
  CHECK(Scheduler::Create(options, nullptr, &s).code() == StatusCode::kInvalidArg);
}

// Stop() after a burst: every accepted request has run; later enqueues are refused and the
// caller keeps its request.
static void StopDrainsAcceptedRequests() {
  auto executor = std::make_shared<RecordingExecutor>(std::chrono::microseconds(200));
  SchedulerOptions options;
  options.model_name = "m";
  options.instance_count = 2;
  std::unique_ptr<Scheduler> s;
  CHECK(Scheduler::Create(options, executor, &s).ok());
  int32_t data[4] = {1, 2, 3, 4};
  constexpr int kRequests = 200;
  std::vector<std::thread> producers;
  for (int p = 0; p < 2; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kRequests / 2; ++i) {
        auto r = MakeRequest(p * 1000 + i, data);
        CHECK(s->Enqueue(r).ok());
        CHECK(r == nullptr);
      }
    });
  }
  for (auto& t : producers) t.join();
  s->Stop();
  CHECK(s->InflightCount() == 0);
  CHECK(executor->ids().size() == kRequests);
  CHECK(executor->instances().size() == 2);  // both instances took work

  auto late = MakeRequest(7, data);
  Status st = s->Enqueue(late);
  CHECK(st.code() == StatusCode::kUnavailable);
  CHECK(late != nullptr);
}

static void FullQueueRefuses() {
  // One slow instance and a 2-slot queue: a burst overflows with Triton's text.
  auto executor = std::make_shared<RecordingExecutor>(std::chrono::milliseconds(50));
  SchedulerOptions options;
  options.queue_capacity = 2;
  std::unique_ptr<Scheduler> s;
  CHECK(Scheduler::Create(options, executor, &s).ok());
  int32_t data[4] = {0, 0, 0, 0};
  int refused = 0;
  for (int i = 0; i < 8; ++i) {
    auto r = MakeRequest(i, data);
    Status st = s->Enqueue(r);
    if (!st.ok()) {
      CHECK(st.message() == "Exceeds maximum queue size");
      ++refused;
    }
  }
  CHECK(refused > 0);
  s->Stop();
  CHECK(executor->ids().size() == size_t(8 - refused));
}

// Records each batch's size, first input and the times; the first batch is slow so that the
// next requests queue up behind it.
class BatchRecorder : public Executor {
 public:
  Status Execute(Batch& batch) override {
    if (batches_.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const TensorView& x = batch.inputs.at(0);
    std::vector<int32_t> values(x.byte_size / 4);
    std::memcpy(values.data(), x.data, x.byte_size);
    std::lock_guard<std::mutex> lock(mutex_);
    batches_.push_back({batch.requests.size(), x.shape, values});
    return Status::OK();
  }
  void Reject(const std::vector<InferRequest*>& requests, const Status& status) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto* r : requests) rejected_.push_back({r->id, status.message()});
  }
  struct Seen {
    size_t requests;
    std::vector<int64_t> shape;
    std::vector<int32_t> values;
  };
  std::mutex mutex_;
  std::vector<Seen> batches_;
  std::vector<std::pair<uint64_t, std::string>> rejected_;
};

static void BatchingGathersQueuedRequestsAndRecordsStats() {
  auto executor = std::make_shared<BatchRecorder>();
  SchedulerOptions options;
  options.model_name = "m";
  options.dynamic_batching = true;
  options.batching.max_batch_size = 8;
  options.batching.equal_shape_inputs = {"INPUT0"};
  std::unique_ptr<Scheduler> s;
  CHECK(Scheduler::Create(options, executor, &s).ok());
  std::vector<std::vector<int32_t>> data;
  for (int i = 0; i < 4; ++i) data.push_back({i, i, i, i});
  for (int i = 0; i < 4; ++i) {
    auto r = MakeRequest(i, data[i].data());
    CHECK(s->Enqueue(r).ok());
    if (i == 0) WaitUntilNonePending(*s);  // the first one runs alone
  }
  s->Stop();
  CHECK(executor->batches_.size() == 2);
  CHECK(executor->batches_[0].requests == 1);
  const auto& batch = executor->batches_[1];
  CHECK(batch.requests == 3);
  CHECK((batch.shape == std::vector<int64_t>{3, 4}));
  CHECK((batch.values == std::vector<int32_t>{1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3}));
  ModelStats stats = s->Statistics();
  CHECK(stats.execution_count == 2 && stats.inference_count == 4);
  CHECK(stats.success.count == 4 && stats.queue.count == 4 && stats.fail.count == 0);
  CHECK(stats.batch_stats.size() == 2);
  CHECK(stats.batch_stats.at(1).compute_infer.count == 1);
  CHECK(stats.batch_stats.at(3).compute_infer.count == 1);
  CHECK(stats.batch_stats.at(1).compute_infer.ns >= 50000000);  // the slow first batch
  CHECK(stats.last_inference_ms > 0);
}

static void QueuePolicyRejectsAndLimits() {
  auto executor = std::make_shared<BatchRecorder>();
  SchedulerOptions options;
  options.dynamic_batching = true;
  options.batching.max_batch_size = 1;
  options.batching.default_policy.default_timeout_us = 5000;  // 5 ms; the first batch takes 50
  options.batching.default_policy.max_queue_size = 2;
  std::unique_ptr<Scheduler> s;
  CHECK(Scheduler::Create(options, executor, &s).ok());
  int32_t data[4] = {7, 7, 7, 7};
  auto first = MakeRequest(0, data);
  CHECK(s->Enqueue(first).ok());
  WaitUntilNonePending(*s);
  auto a = MakeRequest(1, data), b = MakeRequest(2, data), c = MakeRequest(3, data);
  CHECK(s->Enqueue(a).ok() && s->Enqueue(b).ok());
  Status full = s->Enqueue(c);
  CHECK(full.code() == StatusCode::kUnavailable && full.message() == "Exceeds maximum queue size");
  s->Stop();
  CHECK(executor->batches_.size() == 1);
  CHECK(executor->rejected_.size() == 2);
  CHECK(executor->rejected_[0].second == "Request timeout expired");
  ModelStats stats = s->Statistics();
  CHECK(stats.success.count == 1 && stats.fail.count == 2);
}

// A request whose client went away while it waited is answered CANCELLED, never computed,
// and counted as a failure; with and without dynamic batching.
static void CancelledRequestsAreNotComputed() {
  for (bool batching : {false, true}) {
    auto executor = std::make_shared<BatchRecorder>();
    SchedulerOptions options;
    options.dynamic_batching = batching;
    options.batching.max_batch_size = 4;
    std::unique_ptr<Scheduler> s;
    CHECK(Scheduler::Create(options, executor, &s).ok());
    int32_t data[4] = {1, 2, 3, 4};
    std::atomic<bool> gone{false}, here{false};
    auto first = MakeRequest(0, data);  // takes 50 ms: the others queue behind it
    CHECK(s->Enqueue(first).ok());
    WaitUntilNonePending(*s);
    auto a = MakeRequest(1, data), b = MakeRequest(2, data);
    a->cancelled = &gone;
    b->cancelled = &here;
    CHECK(s->Enqueue(a).ok() && s->Enqueue(b).ok());
    gone.store(true);
    s->Stop();
    CHECK(executor->rejected_.size() == 1);
    CHECK(executor->rejected_[0].first == 1 && executor->rejected_[0].second == "Request was cancelled");
    size_t computed = 0;
    for (const auto& batch : executor->batches_) computed += batch.requests;
    CHECK(computed == 2);
    ModelStats stats = s->Statistics();
    CHECK(stats.success.count == 2 && stats.fail.count == 1);
  }
}

// max_pending bounds what waits behind a busy instance, batching or not.
static void PendingBoundRefusesAtOnce() {
  for (bool batching : {false, true}) {
    auto executor = std::make_shared<BatchRecorder>();
    SchedulerOptions options;
    options.dynamic_batching = batching;
    options.batching.max_batch_size = 1;
    options.max_pending = 3;
    std::unique_ptr<Scheduler> s;
    CHECK(Scheduler::Create(options, executor, &s).ok());
    int32_t data[4] = {1, 2, 3, 4};
    auto first = MakeRequest(0, data);
    CHECK(s->Enqueue(first).ok());
    WaitUntilNonePending(*s);  // executing: not pending
    int accepted = 0;
    Status refused;
    for (int i = 1; i <= 10; ++i) {
      auto r = MakeRequest(i, data);
      Status status = s->Enqueue(r);
      if (status.ok()) {
        ++accepted;
      } else {
        refused = status;
        CHECK(r != nullptr);  // the caller keeps a refused request
      }
    }
    CHECK(accepted == 3);
    CHECK(refused.code() == StatusCode::kUnavailable && refused.message() == "Exceeds maximum queue size");
    s->Stop();
    CHECK(executor->batches_.size() == 4);
  }
}

// An executor that never returns until released: Stop's timeout abandons its instance and
// answers its batch and what waits behind it.
class HangingExecutor : public Executor {
 public:
  Status Execute(Batch&) override {
    std::unique_lock<std::mutex> lock(mutex_);
    released_cv_.wait(lock, [this] { return released_; });
    return Status::OK();
  }
  void Reject(const std::vector<InferRequest*>& requests, const Status& status) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < requests.size(); ++i) rejected_.push_back(status.message());
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mutex_);
    released_ = true;
    released_cv_.notify_all();
  }
  std::mutex mutex_;
  std::condition_variable released_cv_;
  bool released_ = false;
  std::vector<std::string> rejected_;
};

static void StopTimeoutAbandonsAHungInstance() {
  for (bool batching : {false, true}) {
    auto executor = std::make_shared<HangingExecutor>();
    SchedulerOptions options;
    options.model_name = "hung";
    options.dynamic_batching = batching;
    options.batching.max_batch_size = 1;
    std::unique_ptr<Scheduler> owned;
    CHECK(Scheduler::Create(options, executor, &owned).ok());
    Scheduler* s = owned.release();  // never destroyed, as an abandoned scheduler must not be
    int32_t data[4] = {1, 2, 3, 4};
    auto first = MakeRequest(0, data);
    CHECK(s->Enqueue(first).ok());
    WaitUntilNonePending(*s);
    auto a = MakeRequest(1, data), b = MakeRequest(2, data);
    CHECK(s->Enqueue(a).ok() && s->Enqueue(b).ok());
    const auto start = std::chrono::steady_clock::now();
    CHECK(!s->Stop(0.2));
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
    for (int i = 0; i < 5000; ++i) {
      {
        std::lock_guard<std::mutex> lock(executor->mutex_);
        if (executor->rejected_.size() == 3) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    {
      std::lock_guard<std::mutex> lock(executor->mutex_);
      CHECK(executor->rejected_.size() == 3);  // the hung one and the two behind it
      CHECK(executor->rejected_[0] ==
            "model 'hung' was stopped while an instance was still executing (stop timeout)");
    }
    executor->Release();  // the abandoned thread returns into a scheduler that still exists
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK(s->InflightCount() == 0);
  }
}

int main() {
  RUN(RejectsBadOptions);
  RUN(StopTimeoutAbandonsAHungInstance);
  RUN(CancelledRequestsAreNotComputed);
  RUN(PendingBoundRefusesAtOnce);
  RUN(StopDrainsAcceptedRequests);
  RUN(FullQueueRefuses);
  RUN(BatchingGathersQueuedRequestsAndRecordsStats);
  RUN(QueuePolicyRejectsAndLimits);
  return 0;
}
