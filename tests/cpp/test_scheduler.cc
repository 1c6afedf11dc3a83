#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "scheduler.h"
#include "status_matchers.h"

using namespace pyserve;
using namespace std::chrono_literals;

namespace {

// How long a test waits for something its executor signals before it fails instead: far
// beyond what any wait takes, even under ThreadSanitizer on a loaded machine.
constexpr auto kWaitLimit = std::chrono::seconds(30);

// A one-shot event: set by an executor's callback, waited for by the test.
class Event {
 public:
  void Set() {
    std::lock_guard<std::mutex> lock(mutex_);
    set_ = true;
    cv_.notify_all();
  }
  // False when the limit passed first.
  bool Wait(std::chrono::steady_clock::duration limit = kWaitLimit) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, limit, [this] { return set_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool set_ = false;
};

// Records which requests ran on which instance; optionally slow, and optionally holding its
// first batch: until the test opens `gate` (so that what follows queues up behind it), or until
// another instance has started a batch (so that every instance is seen to take work, whatever
// the threads' timing).
class RecordingExecutor : public Executor {
 public:
  enum class Hold { kNone, kFirstUntilGate, kFirstUntilAnotherInstance };
  explicit RecordingExecutor(std::chrono::microseconds delay = {}, Hold hold = Hold::kNone)
      : delay_(delay), hold_(hold) {}
  Status Execute(Batch& batch) override {
    HoldFirst(batch.instance);
    if (delay_.count() > 0) std::this_thread::sleep_for(delay_);
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& r : batch.requests) {
      ids_.insert(r->id);
      EXPECT_EQ(batch.inputs.size(), r->inputs.size()) << "request " << r->id;
      if (batch.inputs.size() != r->inputs.size()) continue;
      // A single-request batch aliases the request's bytes.
      for (size_t i = 0; i < r->inputs.size(); ++i) {
        EXPECT_EQ(batch.inputs[i].data, r->inputs[i].data) << "request " << r->id << ", input " << i;
      }
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
  Event gate;

 private:
  void HoldFirst(int instance) {
    if (hold_ == Hold::kNone) return;
    std::unique_lock<std::mutex> lock(mutex_);
    if (first_instance_ >= 0) {  // not the first batch
      if (instance != first_instance_ && !another_started_) {
        another_started_ = true;
        another_started_cv_.notify_all();
      }
      return;
    }
    first_instance_ = instance;
    if (hold_ == Hold::kFirstUntilAnotherInstance) {
      EXPECT_TRUE(another_started_cv_.wait_for(lock, kWaitLimit, [this] { return another_started_; }))
          << "no other instance took work while instance " << instance << " was busy";
    } else {
      lock.unlock();
      EXPECT_TRUE(gate.Wait()) << "the test never let the first batch finish";
    }
  }

  std::chrono::microseconds delay_;
  Hold hold_;
  std::mutex mutex_;
  std::condition_variable another_started_cv_;
  int first_instance_ = -1;
  bool another_started_ = false;
  std::set<uint64_t> ids_;
  std::set<int> instances_;
};

std::unique_ptr<InferRequest> MakeRequest(uint64_t id, const int32_t* data) {
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

// Once the executor says the first request started: it was taken by an instance, so later
// ones queue behind it (call with ASSERT_NO_FATAL_FAILURE).
void WaitUntilExecuting(Event& started, const Scheduler& s) {
  ASSERT_TRUE(started.Wait()) << "the first request never started executing";
  ASSERT_EQ(s.PendingCount(), 0u);
}

// Records each batch's size, first input and the times. The first batch holds its instance
// until the test opens `gate` (and for 50 ms at least), so that the next requests queue up
// behind it; it sets `first_started` when it begins.
class BatchRecorder : public Executor {
 public:
  Status Execute(Batch& batch) override {
    bool first;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      first = !executed_;
      executed_ = true;
    }
    if (first) {
      const auto start = std::chrono::steady_clock::now();
      first_started.Set();
      EXPECT_TRUE(gate.Wait()) << "the test never let the first batch finish";
      std::this_thread::sleep_until(start + 50ms);
    }
    const TensorView& x = batch.inputs.at(0);
    std::vector<int32_t> values(x.byte_size / 4);
    std::memcpy(values.data(), x.data, x.byte_size);
    std::lock_guard<std::mutex> lock(mutex_);
    batches_.push_back({batch.requests.size(), x.shape, values});
    batches_cv_.notify_all();
    return Status::OK();
  }
  // False when fewer than `count` batches ran within the limit.
  bool WaitForBatches(size_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    return batches_cv_.wait_for(lock, kWaitLimit, [&] { return batches_.size() >= count; });
  }
  void Reject(const std::vector<InferRequest*>& requests, const Status& status) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto* r : requests) rejected_.push_back({r->id, status.message()});
    rejected_cv_.notify_all();
  }
  // False when fewer than `count` requests were rejected within the limit.
  bool WaitForRejected(size_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    return rejected_cv_.wait_for(lock, kWaitLimit, [&] { return rejected_.size() >= count; });
  }
  struct Seen {
    size_t requests;
    std::vector<int64_t> shape;
    std::vector<int32_t> values;
  };
  Event first_started;
  Event gate;
  std::mutex mutex_;
  std::condition_variable rejected_cv_, batches_cv_;
  bool executed_ = false;
  std::vector<Seen> batches_;
  std::vector<std::pair<uint64_t, std::string>> rejected_;
};

// Opens the gate when the test leaves, even early (a failed ASSERT): the scheduler, destroyed
// before the executor, then stops without waiting for the gate's limit.
struct OpenAtExit {
  Event& gate;
  ~OpenAtExit() { gate.Set(); }
};

// An executor that never returns until released: Stop's timeout abandons its instance and
// answers its batch and what waits behind it.
class HangingExecutor : public Executor {
 public:
  Status Execute(Batch&) override {
    started.Set();
    std::unique_lock<std::mutex> lock(mutex_);
    released_cv_.wait(lock, [this] { return released_; });
    return Status::OK();
  }
  void Reject(const std::vector<InferRequest*>& requests, const Status& status) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < requests.size(); ++i) rejected_.push_back(status.message());
    rejected_cv_.notify_all();
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mutex_);
    released_ = true;
    released_cv_.notify_all();
  }
  // False when fewer than `count` requests were rejected within the limit.
  bool WaitForRejected(size_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    return rejected_cv_.wait_for(lock, kWaitLimit, [&] { return rejected_.size() >= count; });
  }
  Event started;
  std::mutex mutex_;
  std::condition_variable released_cv_, rejected_cv_;
  bool released_ = false;
  std::vector<std::string> rejected_;
};

}  // namespace

TEST(Scheduler, RejectsBadOptions) {
  SchedulerOptions options;
  options.instance_count = 0;
  std::unique_ptr<Scheduler> s;
  EXPECT_EQ(Scheduler::Create(options, std::make_shared<RecordingExecutor>(), &s).code(),
            StatusCode::kInvalidArg);
  options.instance_count = 1;
  EXPECT_EQ(Scheduler::Create(options, nullptr, &s).code(), StatusCode::kInvalidArg);
}

// Stop() after a burst: every accepted request has run; later enqueues are refused and the
// caller keeps its request.
TEST(Scheduler, StopDrainsAcceptedRequests) {
  auto executor = std::make_shared<RecordingExecutor>(
      std::chrono::microseconds(200), RecordingExecutor::Hold::kFirstUntilAnotherInstance);
  SchedulerOptions options;
  options.model_name = "m";
  options.instance_count = 2;
  std::unique_ptr<Scheduler> s;
  ASSERT_OK(Scheduler::Create(options, executor, &s));
  int32_t data[4] = {1, 2, 3, 4};
  constexpr int kRequests = 200;
  std::vector<std::thread> producers;
  for (int p = 0; p < 2; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kRequests / 2; ++i) {
        auto r = MakeRequest(p * 1000 + i, data);
        EXPECT_OK(s->Enqueue(r));
        EXPECT_EQ(r.get(), nullptr);
      }
    });
  }
  for (auto& t : producers) t.join();
  s->Stop();
  EXPECT_EQ(s->InflightCount(), 0u);
  EXPECT_EQ(executor->ids().size(), size_t(kRequests));
  EXPECT_EQ(executor->instances().size(), 2u);  // both instances took work

  auto late = MakeRequest(7, data);
  Status st = s->Enqueue(late);
  EXPECT_EQ(st.code(), StatusCode::kUnavailable);
  EXPECT_NE(late.get(), nullptr);
}

TEST(Scheduler, FullQueueRefuses) {
  // One busy instance (held until the burst is in) and a 2-slot queue: a burst overflows
  // with Triton's text.
  auto executor = std::make_shared<RecordingExecutor>(std::chrono::microseconds(0),
                                                      RecordingExecutor::Hold::kFirstUntilGate);
  SchedulerOptions options;
  options.queue_capacity = 2;
  std::unique_ptr<Scheduler> s;
  ASSERT_OK(Scheduler::Create(options, executor, &s));
  OpenAtExit open{executor->gate};
  int32_t data[4] = {0, 0, 0, 0};
  int refused = 0;
  for (int i = 0; i < 8; ++i) {
    auto r = MakeRequest(i, data);
    Status st = s->Enqueue(r);
    if (!st.ok()) {
      EXPECT_EQ(st.message(), "Exceeds maximum queue size");
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
  executor->gate.Set();
  s->Stop();
  EXPECT_EQ(executor->ids().size(), size_t(8 - refused));
}

TEST(Scheduler, BatchingGathersQueuedRequestsAndRecordsStats) {
  auto executor = std::make_shared<BatchRecorder>();
  SchedulerOptions options;
  options.model_name = "m";
  options.dynamic_batching = true;
  options.batching.max_batch_size = 8;
  options.batching.equal_shape_inputs = {"INPUT0"};
  std::unique_ptr<Scheduler> s;
  ASSERT_OK(Scheduler::Create(options, executor, &s));
  OpenAtExit open{executor->gate};
  std::vector<std::vector<int32_t>> data;
  for (int i = 0; i < 4; ++i) data.push_back({i, i, i, i});
  for (int i = 0; i < 4; ++i) {
    auto r = MakeRequest(i, data[i].data());
    ASSERT_OK(s->Enqueue(r));
    if (i == 0) {  // the first one runs alone
      ASSERT_NO_FATAL_FAILURE(WaitUntilExecuting(executor->first_started, *s));
    }
  }
  executor->gate.Set();
  s->Stop();
  ASSERT_EQ(executor->batches_.size(), 2u);
  EXPECT_EQ(executor->batches_[0].requests, 1u);
  const auto& batch = executor->batches_[1];
  EXPECT_EQ(batch.requests, 3u);
  EXPECT_EQ(batch.shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(batch.values, (std::vector<int32_t>{1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3}));
  ModelStats stats = s->Statistics();
  EXPECT_EQ(stats.execution_count, 2u);
  EXPECT_EQ(stats.inference_count, 4u);
  EXPECT_EQ(stats.success.count, 4u);
  EXPECT_EQ(stats.queue.count, 4u);
  EXPECT_EQ(stats.fail.count, 0u);
  ASSERT_EQ(stats.batch_stats.size(), 2u);
  ASSERT_EQ(stats.batch_stats.count(1), 1u);
  ASSERT_EQ(stats.batch_stats.count(3), 1u);
  EXPECT_EQ(stats.batch_stats.at(1).compute_infer.count, 1u);
  EXPECT_EQ(stats.batch_stats.at(3).compute_infer.count, 1u);
  EXPECT_GE(stats.batch_stats.at(1).compute_infer.ns, 50000000u);  // the slow first batch
  EXPECT_GT(stats.last_inference_ms, 0u);
}

// The batcher sleeps through arrivals that cannot change its decision, but not through the one
// that fills a batch: with a minute's delay, full batches still go at once. One instance is
// its own batcher; two have a batcher thread.
TEST(Scheduler, AFullBatchGoesAtOnceWhateverTheDelay) {
  for (int instances : {1, 2}) {
    SCOPED_TRACE(std::to_string(instances) + " instance(s)");
    auto executor = std::make_shared<BatchRecorder>();
    executor->gate.Set();
    SchedulerOptions options;
    options.model_name = "m";
    options.instance_count = instances;
    options.dynamic_batching = true;
    options.batching.max_batch_size = 4;
    options.batching.max_queue_delay_us = 60'000'000;
    std::unique_ptr<Scheduler> s;
    ASSERT_OK(Scheduler::Create(options, executor, &s));
    std::vector<std::vector<int32_t>> data(8, std::vector<int32_t>{1, 2, 3, 4});
    for (int i = 0; i < 8; ++i) {
      auto r = MakeRequest(i, data[i].data());
      ASSERT_OK(s->Enqueue(r));
    }
    ASSERT_TRUE(executor->WaitForBatches(2));
    s->Stop();
    ASSERT_EQ(executor->batches_.size(), 2u);
    EXPECT_EQ(executor->batches_[0].requests, 4u);
    EXPECT_EQ(executor->batches_[1].requests, 4u);
  }
}

TEST(Scheduler, QueuePolicyRejectsAndLimits) {
  auto executor = std::make_shared<BatchRecorder>();
  SchedulerOptions options;
  options.dynamic_batching = true;
  options.batching.max_batch_size = 1;
  // The default level (2): 5 ms, while the first batch runs until the queued ones have timed
  // out. The first request has priority 1, a level without a timeout: it runs however late
  // the batcher thread gets to it.
  options.batching.priority_levels = 2;
  options.batching.default_priority_level = 2;
  options.batching.default_policy.default_timeout_us = 5000;
  options.batching.default_policy.max_queue_size = 2;
  options.batching.level_policies[1] = QueuePolicy{};
  std::unique_ptr<Scheduler> s;
  ASSERT_OK(Scheduler::Create(options, executor, &s));
  OpenAtExit open{executor->gate};
  int32_t data[4] = {7, 7, 7, 7};
  auto first = MakeRequest(0, data);
  first->priority = 1;
  ASSERT_OK(s->Enqueue(first));
  ASSERT_NO_FATAL_FAILURE(WaitUntilExecuting(executor->first_started, *s));
  auto a = MakeRequest(1, data), b = MakeRequest(2, data), c = MakeRequest(3, data);
  ASSERT_OK(s->Enqueue(a));
  ASSERT_OK(s->Enqueue(b));
  Status full = s->Enqueue(c);
  EXPECT_EQ(full.code(), StatusCode::kUnavailable);
  EXPECT_EQ(full.message(), "Exceeds maximum queue size");
  EXPECT_TRUE(executor->WaitForRejected(2)) << "the queued requests did not time out";
  executor->gate.Set();
  s->Stop();
  EXPECT_EQ(executor->batches_.size(), 1u);
  ASSERT_EQ(executor->rejected_.size(), 2u);
  EXPECT_EQ(executor->rejected_[0].second, "Request timeout expired");
  ModelStats stats = s->Statistics();
  EXPECT_EQ(stats.success.count, 1u);
  EXPECT_EQ(stats.fail.count, 2u);
}

// A request whose client went away while it waited is answered CANCELLED, never computed,
// and counted as a failure; with and without dynamic batching.
TEST(Scheduler, CancelledRequestsAreNotComputed) {
  for (bool batching : {false, true}) {
    SCOPED_TRACE(batching ? "dynamic batching" : "no batching");
    auto executor = std::make_shared<BatchRecorder>();
    SchedulerOptions options;
    options.dynamic_batching = batching;
    options.batching.max_batch_size = 4;
    std::unique_ptr<Scheduler> s;
    ASSERT_OK(Scheduler::Create(options, executor, &s));
    OpenAtExit open{executor->gate};
    int32_t data[4] = {1, 2, 3, 4};
    std::atomic<bool> gone{false}, here{false};
    auto first = MakeRequest(0, data);  // runs until the gate opens: the others queue behind it
    ASSERT_OK(s->Enqueue(first));
    ASSERT_NO_FATAL_FAILURE(WaitUntilExecuting(executor->first_started, *s));
    auto a = MakeRequest(1, data), b = MakeRequest(2, data);
    a->cancelled = &gone;
    b->cancelled = &here;
    ASSERT_OK(s->Enqueue(a));
    ASSERT_OK(s->Enqueue(b));
    gone.store(true);
    executor->gate.Set();
    s->Stop();
    ASSERT_EQ(executor->rejected_.size(), 1u);
    EXPECT_EQ(executor->rejected_[0].first, 1u);
    EXPECT_EQ(executor->rejected_[0].second, "Request was cancelled");
    size_t computed = 0;
    for (const auto& batch : executor->batches_) computed += batch.requests;
    EXPECT_EQ(computed, 2u);
    ModelStats stats = s->Statistics();
    EXPECT_EQ(stats.success.count, 2u);
    EXPECT_EQ(stats.fail.count, 1u);
  }
}

// max_pending bounds what waits behind a busy instance, batching or not.
TEST(Scheduler, PendingBoundRefusesAtOnce) {
  for (bool batching : {false, true}) {
    SCOPED_TRACE(batching ? "dynamic batching" : "no batching");
    auto executor = std::make_shared<BatchRecorder>();
    SchedulerOptions options;
    options.dynamic_batching = batching;
    options.batching.max_batch_size = 1;
    options.max_pending = 3;
    std::unique_ptr<Scheduler> s;
    ASSERT_OK(Scheduler::Create(options, executor, &s));
    OpenAtExit open{executor->gate};
    int32_t data[4] = {1, 2, 3, 4};
    auto first = MakeRequest(0, data);
    ASSERT_OK(s->Enqueue(first));
    // Executing: not pending.
    ASSERT_NO_FATAL_FAILURE(WaitUntilExecuting(executor->first_started, *s));
    int accepted = 0;
    Status refused;
    for (int i = 1; i <= 10; ++i) {
      auto r = MakeRequest(i, data);
      Status status = s->Enqueue(r);
      if (status.ok()) {
        ++accepted;
      } else {
        refused = status;
        EXPECT_NE(r.get(), nullptr);  // the caller keeps a refused request
      }
    }
    EXPECT_EQ(accepted, 3);
    EXPECT_EQ(refused.code(), StatusCode::kUnavailable);
    EXPECT_EQ(refused.message(), "Exceeds maximum queue size");
    executor->gate.Set();
    s->Stop();
    EXPECT_EQ(executor->batches_.size(), 4u);
  }
}

TEST(Scheduler, StopTimeoutAbandonsAHungInstance) {
  for (bool batching : {false, true}) {
    SCOPED_TRACE(batching ? "dynamic batching" : "no batching");
    auto executor = std::make_shared<HangingExecutor>();
    SchedulerOptions options;
    options.model_name = "hung";
    options.dynamic_batching = batching;
    options.batching.max_batch_size = 1;
    std::unique_ptr<Scheduler> owned;
    ASSERT_OK(Scheduler::Create(options, executor, &owned));
    Scheduler* s = owned.release();  // never destroyed, as an abandoned scheduler must not be
    int32_t data[4] = {1, 2, 3, 4};
    auto first = MakeRequest(0, data);
    ASSERT_OK(s->Enqueue(first));
    ASSERT_NO_FATAL_FAILURE(WaitUntilExecuting(executor->started, *s));
    auto a = MakeRequest(1, data), b = MakeRequest(2, data);
    ASSERT_OK(s->Enqueue(a));
    ASSERT_OK(s->Enqueue(b));
    const auto start = std::chrono::steady_clock::now();
    EXPECT_FALSE(s->Stop(0.2));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
    // The hung one and the two behind it (with batching, the hung worker is also the batcher:
    // Abandon answers those).
    EXPECT_TRUE(executor->WaitForRejected(3));
    {
      std::lock_guard<std::mutex> lock(executor->mutex_);
      EXPECT_EQ(executor->rejected_.size(), 3u);
      ASSERT_FALSE(executor->rejected_.empty());
      EXPECT_EQ(executor->rejected_[0],
                "model 'hung' was stopped while an instance was still executing (stop timeout)");
    }
    executor->Release();  // the abandoned thread returns into a scheduler that still exists
    // Nothing the test can wait on follows the count's drop (after Execute returns): poll it.
    const auto limit = std::chrono::steady_clock::now() + kWaitLimit;
    while (s->InflightCount() != 0 && std::chrono::steady_clock::now() < limit) {
      std::this_thread::sleep_for(1ms);
    }
    EXPECT_EQ(s->InflightCount(), 0u);
  }
}

TEST(Scheduler, SequenceBatchingPadsEmptySlotsAndCountsFilledOnes) {
  auto executor = std::make_shared<BatchRecorder>();
  SchedulerOptions options;
  options.model_name = "m";
  options.sequence_batching = true;
  options.sequence.max_batch_size = 2;
  SequenceControl ready;
  ready.name = "READY";
  ready.kind = SequenceControl::Kind::kReady;
  options.sequence.controls = {ready};
  std::unique_ptr<Scheduler> s;
  ASSERT_OK(Scheduler::Create(options, executor, &s));
  OpenAtExit open{executor->gate};
  std::vector<std::vector<int32_t>> data = {{1, 1, 1, 1}, {2, 2, 2, 2}, {3, 3, 3, 3}};
  auto enqueue = [&](uint64_t id, uint64_t corrid, uint32_t flags) {
    auto r = MakeRequest(id, data[id].data());
    r->correlation_id.number = corrid;
    r->flags = flags;
    return s->Enqueue(r);
  };
  ASSERT_OK(enqueue(0, 1, kSequenceStart));  // sequence 1: slot 0, runs alone
  ASSERT_NO_FATAL_FAILURE(WaitUntilExecuting(executor->first_started, *s));
  ASSERT_OK(enqueue(1, 2, kSequenceStart));  // sequence 2: slot 1
  ASSERT_OK(enqueue(2, 2, kSequenceEnd));
  auto none = MakeRequest(9, data[0].data());
  EXPECT_EQ(s->Enqueue(none).code(), StatusCode::kInvalidArg);  // no correlation ID
  executor->gate.Set();
  s->Stop();
  ASSERT_EQ(executor->batches_.size(), 3u);
  EXPECT_EQ(executor->batches_[0].values, (std::vector<int32_t>{1, 1, 1, 1}));
  for (int i : {1, 2}) {  // slot 0 padded with zeros below sequence 2's slot
    EXPECT_EQ(executor->batches_[i].requests, 2u);
    EXPECT_EQ(executor->batches_[i].shape, (std::vector<int64_t>{2, 4}));
    EXPECT_EQ(executor->batches_[i].values,
              (std::vector<int32_t>{0, 0, 0, 0, i + 1, i + 1, i + 1, i + 1}));
  }
  ModelStats stats = s->Statistics();
  EXPECT_EQ(stats.execution_count, 3u);
  EXPECT_EQ(stats.inference_count, 3u);  // the filled slots only
  EXPECT_EQ(stats.success.count, 3u);
  EXPECT_EQ(s->InflightCount(), 0u);
}
