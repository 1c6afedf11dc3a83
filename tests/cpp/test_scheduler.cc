#include <atomic>
#include <chrono>
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
  void Execute(Batch& batch) override {
    if (delay_.count() > 0) std::this_thread::sleep_for(delay_);
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& r : batch.requests) {
      ids_.insert(r->id);
      CHECK(batch.inputs.size() == r->inputs.size());
      // A single-request batch aliases the request's bytes.
      for (size_t i = 0; i < r->inputs.size(); ++i) CHECK(batch.inputs[i].data == r->inputs[i].data);
    }
    instances_.insert(batch.instance);
  }
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

int main() {
  RUN(RejectsBadOptions);
  RUN(StopDrainsAcceptedRequests);
  RUN(FullQueueRefuses);
  return 0;
}
