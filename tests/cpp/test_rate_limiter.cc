// Triton's rate limiter: resource counts and their checks, schedulers of two models sharing a
// limiter (resource exclusion, priority), and the instances of one model taking turns by
// priority.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "rate_limiter.h"
#include "scheduler.h"
#include "status_matchers.h"

using namespace pyserve;
using namespace std::chrono_literals;

namespace {

constexpr auto kWaitLimit = std::chrono::seconds(30);

InstanceRateLimit Asks(std::vector<RateLimitResource> resources, uint32_t priority = 0,
                       int device = 0) {
  return InstanceRateLimit{std::move(resources), priority, device};
}

class Event {
 public:
  void Set() {
    std::lock_guard<std::mutex> lock(mutex_);
    set_ = true;
    cv_.notify_all();
  }
  bool Wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, kWaitLimit, [this] { return set_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool set_ = false;
};

// Waits until `done` holds, looking every 100 µs; false when the limit passed first.
bool WaitFor(const std::function<bool()>& done) {
  const auto limit = std::chrono::steady_clock::now() + kWaitLimit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > limit) return false;
    std::this_thread::sleep_for(100us);
  }
  return true;
}

TEST(RateLimiter, CountsAreTheLargestAskPerDeviceAndGlobal) {
  RateLimiter limiter({});
  std::vector<uint64_t> ids;
  ASSERT_OK(limiter.Register({Asks({{"R", false, 2}, {"G", true, 1}}, 0, 0),
                              Asks({{"R", false, 4}, {"G", true, 3}}, 0, 1), Asks({})},
                             &ids));
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_NE(ids[0], 0u);
  EXPECT_EQ(ids[2], 0u);  // asks for nothing: never waits
  EXPECT_EQ(limiter.Capacity("R", 0), 2u);
  EXPECT_EQ(limiter.Capacity("R", 1), 4u);
  EXPECT_EQ(limiter.Capacity("G", RateLimiter::kGlobal), 3u);

  std::vector<uint64_t> more;
  ASSERT_OK(limiter.Register({Asks({{"R", false, 5}}, 0, 0)}, &more));
  EXPECT_EQ(limiter.Capacity("R", 0), 5u);
  limiter.Unregister(more);  // the largest ask left is the count again
  EXPECT_EQ(limiter.Capacity("R", 0), 2u);
}

TEST(RateLimiter, ServerCountsReplaceTheAsks) {
  RateLimiter limiter({{"R", 6, -1}, {"R", 3, 1}, {"G", 2, 7}, {"R", 9, 1}});
  std::vector<uint64_t> ids;
  ASSERT_OK(limiter.Register({Asks({{"R", false, 2}}, 0, 0), Asks({{"R", false, 2}}, 0, 1),
                              Asks({{"G", true, 1}})},
                             &ids));
  EXPECT_EQ(limiter.Capacity("R", 0), 6u);  // every device's
  EXPECT_EQ(limiter.Capacity("R", 1), 6u);  // the larger of device 1's (3: twice, the smaller) and every device's
  EXPECT_EQ(limiter.Capacity("G", RateLimiter::kGlobal), 2u);  // a global one: any device's
}

TEST(RateLimiter, RefusesCountsBelowWhatAnInstanceAsks) {
  RateLimiter limiter({{"resource1", 3, -1}, {"resource2", 2, -1}});
  std::vector<uint64_t> ids;
  ASSERT_OK(limiter.Register({Asks({{"resource1", false, 2}})}, &ids));
  Status refused = limiter.Register({Asks({{"resource1", false, 2}}), Asks({{"resource1", false, 4}})}, &ids);
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArg);
  EXPECT_EQ(refused.message(),
            "Resource count for \"resource1\" is limited to 3 which will prevent scheduling of "
            "one or more model instances, the minimum required count is 4");
  // All or none: the first instance of the refused model is not registered either.
  EXPECT_EQ(limiter.Capacity("resource1", 0), 3u);
  ASSERT_OK(limiter.Register({Asks({{"resource2", true, 2}})}, &ids));

  RateLimiter elsewhere({{"resource1", 10, 10}});  // another device's only
  refused = elsewhere.Register({Asks({{"resource1", false, 4}}, 0, 0)}, &ids);
  EXPECT_EQ(refused.message(),
            "Resource count for \"resource1\" is limited to 0 which will prevent scheduling of "
            "one or more model instances, the minimum required count is 4");
}

TEST(RateLimiter, RefusesAResourceBothGlobalAndPerDevice) {
  RateLimiter limiter({});
  std::vector<uint64_t> ids;
  ASSERT_OK(limiter.Register({Asks({{"resource2", true, 2}})}, &ids));
  Status refused = limiter.Register({Asks({{"resource2", false, 1}})}, &ids);
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArg);
  EXPECT_EQ(refused.message(),
            "Resource \"resource2\" is present as both global and device-specific resource in "
            "the model configuration.");
}

// Runs each batch of its model, records when it runs, and holds it while `hold` says so.
class TimelineExecutor : public Executor {
 public:
  struct Timeline {
    std::mutex mutex;
    std::condition_variable changed;
    int running = 0, most_running = 0;
    size_t requests = 0;
    std::vector<std::string> refusals;  // the status of each request answered unrun
    std::vector<char> order;  // the model of each execution, in start order
    bool Wait(const std::function<bool()>& done) {
      std::unique_lock<std::mutex> lock(mutex);
      return changed.wait_for(lock, kWaitLimit, done);
    }
  };
  TimelineExecutor(char model, Timeline& timeline, std::function<void(char)> hold = {})
      : model_(model), timeline_(timeline), hold_(std::move(hold)) {}
  Status Execute(Batch& batch) override {
    {
      std::lock_guard<std::mutex> lock(timeline_.mutex);
      timeline_.most_running = std::max(timeline_.most_running, ++timeline_.running);
      timeline_.requests += batch.requests.size();
      timeline_.order.push_back(model_);
      timeline_.changed.notify_all();
    }
    if (hold_) hold_(model_);
    std::lock_guard<std::mutex> lock(timeline_.mutex);
    --timeline_.running;
    timeline_.changed.notify_all();
    return Status::OK();
  }
  void Reject(const std::vector<InferRequest*>& requests, const Status& status) override {
    std::lock_guard<std::mutex> lock(timeline_.mutex);
    for (size_t i = 0; i < requests.size(); ++i) timeline_.refusals.push_back(status.message());
    timeline_.changed.notify_all();
  }

 private:
  char model_;
  Timeline& timeline_;
  std::function<void(char)> hold_;
};

enum class Policy { kNone, kDynamic, kSequence };

// `instances` of a model under a batch policy (none: each request its own batch), each asking
// `asks` of the limiter.
std::unique_ptr<Scheduler> MakeScheduler(const std::string& name, std::shared_ptr<RateLimiter> limiter,
                                         InstanceRateLimit asks, std::shared_ptr<Executor> executor,
                                         Policy policy = Policy::kNone, int instances = 1) {
  SchedulerOptions options;
  options.model_name = name;
  options.rate_limiter = std::move(limiter);
  options.instance_count = instances;
  options.instance_rate_limits.assign(instances, asks);
  options.dynamic_batching = policy == Policy::kDynamic;
  options.batching.max_batch_size = 4;
  options.sequence_batching = policy == Policy::kSequence;
  options.sequence.max_batch_size = 2;
  std::unique_ptr<Scheduler> scheduler;
  EXPECT_OK(Scheduler::Create(options, std::move(executor), &scheduler));
  return scheduler;
}

// `sequence`: the request is a sequence of its own (START and END), with `id` as its ID.
void Submit(Scheduler& scheduler, uint64_t id, bool sequence = false) {
  auto request = std::make_unique<InferRequest>();
  request->id = id;
  if (sequence) {
    request->correlation_id.number = id;
    request->flags = kSequenceStart | kSequenceEnd;
  }
  ASSERT_OK(scheduler.Enqueue(request));
}

// Models whose instances each take the one unit of a resource (b: two instances behind the
// dynamic batcher; c: two behind the sequence batcher): never run at once.
TEST(RateLimiterScheduler, InstancesOfTwoModelsSharingAResourceTakeTurns) {
  auto limiter = std::make_shared<RateLimiter>(std::vector<ServerResource>{});
  TimelineExecutor::Timeline timeline;
  std::mutex gate_mutex;
  std::condition_variable gate_cv;
  bool open = false;
  auto hold_a = [&](char) {  // model a's execution lasts until the test opens the gate
    std::unique_lock<std::mutex> lock(gate_mutex);
    EXPECT_TRUE(gate_cv.wait_for(lock, kWaitLimit, [&] { return open; }));
  };
  auto a = MakeScheduler("a", limiter, Asks({{"R", false, 1}}),
                         std::make_shared<TimelineExecutor>('a', timeline, hold_a));
  auto b = MakeScheduler("b", limiter, Asks({{"R", false, 1}}),
                         std::make_shared<TimelineExecutor>('b', timeline), Policy::kDynamic, 2);
  auto c = MakeScheduler("c", limiter, Asks({{"R", false, 1}}),
                         std::make_shared<TimelineExecutor>('c', timeline), Policy::kSequence, 2);
  ASSERT_TRUE(a && b && c);

  Submit(*a, 1);
  ASSERT_TRUE(timeline.Wait([&] { return timeline.running == 1; }));
  Submit(*b, 2);
  // b's instance has its request and waits for the resource a holds.
  ASSERT_TRUE(WaitFor([&] { return limiter->WaitingCount() == 1; }));
  EXPECT_EQ(b->PendingCount(), 1u);  // waiting for resources is queue time
  {
    std::lock_guard<std::mutex> lock(gate_mutex);
    open = true;
    gate_cv.notify_all();
  }
  ASSERT_TRUE(timeline.Wait([&] { return timeline.order.size() == 2 && timeline.running == 0; }));
  for (uint64_t i = 3; i < 300; ++i) {
    Scheduler& model = i % 3 == 0 ? *a : i % 3 == 1 ? *b : *c;
    Submit(model, i, &model == c.get());
  }
  a->Stop();
  b->Stop();
  c->Stop();
  EXPECT_EQ(timeline.requests, 299u);
  EXPECT_EQ(timeline.most_running, 1);
  EXPECT_EQ(limiter->WaitingCount(), 0u);
}

// A model whose Stop timed out while its instance waited for resources answers that batch when
// the resources come, without running it.
TEST(RateLimiterScheduler, AnAbandonedModelAnswersTheBatchThatWaitedForResources) {
  auto limiter = std::make_shared<RateLimiter>(std::vector<ServerResource>{});
  TimelineExecutor::Timeline timeline;
  Event gate;
  auto a = MakeScheduler("a", limiter, Asks({{"R", false, 1}}),
                         std::make_shared<TimelineExecutor>('a', timeline, [&](char) {
                           EXPECT_TRUE(gate.Wait());
                         }));
  auto b = MakeScheduler("b", limiter, Asks({{"R", false, 1}}),
                         std::make_shared<TimelineExecutor>('b', timeline));
  ASSERT_TRUE(a && b);
  Submit(*a, 1);
  ASSERT_TRUE(timeline.Wait([&] { return timeline.running == 1; }));
  Submit(*b, 2);
  ASSERT_TRUE(WaitFor([&] { return limiter->WaitingCount() == 1; }));
  EXPECT_FALSE(b->Stop(0.01));  // b's worker still waits: given up
  gate.Set();
  ASSERT_TRUE(timeline.Wait([&] { return timeline.refusals.size() == 1; }));
  EXPECT_EQ(timeline.refusals[0],
            "model 'b' was stopped while an instance was still executing (stop timeout)");
  EXPECT_EQ(timeline.order, std::vector<char>{'a'});  // b's request never ran
  a->Stop();
  b.release();  // abandoned: its detached worker may still be returning
}

// With two units (--rate-limit-resource=R:2), both run at once: a holds until b has started.
TEST(RateLimiterScheduler, EnoughResourcesLetBothRun) {
  auto limiter = std::make_shared<RateLimiter>(std::vector<ServerResource>{{"R", 2, -1}});
  TimelineExecutor::Timeline timeline;
  auto hold_a = [&](char) {
    EXPECT_TRUE(timeline.Wait([&] { return timeline.order.size() == 2; }))
        << "b never ran while a held one unit";
  };
  auto a = MakeScheduler("a", limiter, Asks({{"R", false, 1}}),
                         std::make_shared<TimelineExecutor>('a', timeline, hold_a));
  auto b = MakeScheduler("b", limiter, Asks({{"R", false, 1}}),
                         std::make_shared<TimelineExecutor>('b', timeline));
  ASSERT_TRUE(a && b);
  Submit(*a, 1);
  ASSERT_TRUE(timeline.Wait([&] { return timeline.running == 1; }));
  Submit(*b, 2);
  a->Stop();
  b->Stop();
  EXPECT_EQ(timeline.most_running, 2);
}

// Lower priority values run proportionally more: with both instances always having work, one
// of priority 1 gets two turns for each turn of one of priority 2 (executions times priority
// orders the line; a tie goes to the one that waited longer).
TEST(RateLimiterScheduler, LowerPriorityValueRunsMore) {
  auto limiter = std::make_shared<RateLimiter>(std::vector<ServerResource>{});
  TimelineExecutor::Timeline timeline;
  constexpr size_t kEach = 30;
  std::atomic<bool> submitted{false};
  // The first execution lasts until every request is queued and the other instance waits.
  auto first_holds = [&](char) {
    {
      std::lock_guard<std::mutex> lock(timeline.mutex);
      if (timeline.order.size() > 1) return;
    }
    EXPECT_TRUE(WaitFor([&] { return submitted && limiter->WaitingCount() == 1; }));
  };
  auto a = MakeScheduler("a", limiter, Asks({{"R", true, 1}}, 1),
                         std::make_shared<TimelineExecutor>('a', timeline, first_holds));
  auto b = MakeScheduler("b", limiter, Asks({{"R", true, 1}}, 2),
                         std::make_shared<TimelineExecutor>('b', timeline, first_holds));
  ASSERT_TRUE(a && b);
  Submit(*a, 0);
  ASSERT_TRUE(timeline.Wait([&] { return timeline.running == 1; }));
  for (uint64_t i = 1; i < 2 * kEach; ++i) Submit(i % 2 ? *b : *a, i);
  submitted = true;
  a->Stop();
  b->Stop();
  ASSERT_EQ(timeline.order.size(), 2 * kEach);
  // a, then b (executions 0 each), then a b, then a a b for as long as both have work.
  const std::string first(timeline.order.begin(), timeline.order.begin() + kEach);
  EXPECT_EQ(first, "abab" "aabaabaabaabaabaabaabaab" "aa");
  EXPECT_EQ(std::count(first.begin(), first.end(), 'a'), 20);
  EXPECT_EQ(timeline.most_running, 1);
}

// Records which instance ran each batch.
class InstanceRecorder : public Executor {
 public:
  Status Execute(Batch& batch) override {
    std::lock_guard<std::mutex> lock(mutex_);
    order_.push_back(batch.instance);
    changed_.notify_all();
    return Status::OK();
  }
  void Reject(const std::vector<InferRequest*>&, const Status&) override {}
  // Waits until `count` batches have run; their instances in order.
  std::vector<int> WaitFor(size_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait_for(lock, kWaitLimit, [&] { return order_.size() >= count; });
    return order_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<int> order_;
};

// A model's idle instances take work by executions times priority, as Triton's limiter stages
// the available instance of lowest scaled priority: with requests one at a time (both
// instances idle at each), instance 1 (priority 1) runs twice for each run of instance 0
// (priority 2), whether the model batches or not, and whether the instances ask for
// resources or only give a priority.
class RateLimiterRanking : public ::testing::TestWithParam<std::tuple<Policy, bool>> {};

TEST_P(RateLimiterRanking, IdleInstancesOfOneModelTakeTurnsByPriority) {
  const auto [policy, with_resources] = GetParam();
  auto limiter = std::make_shared<RateLimiter>(std::vector<ServerResource>{});
  auto recorder = std::make_shared<InstanceRecorder>();
  SchedulerOptions options;
  options.model_name = "ranked";
  options.rate_limiter = limiter;
  options.instance_count = 2;
  std::vector<RateLimitResource> resources;
  if (with_resources) resources.push_back({"R", false, 1});
  options.instance_rate_limits = {Asks(resources, 2), Asks(resources, 1)};
  options.dynamic_batching = policy == Policy::kDynamic;
  options.batching.max_batch_size = 4;
  std::unique_ptr<Scheduler> scheduler;
  ASSERT_OK(Scheduler::Create(options, recorder, &scheduler));
  for (uint64_t i = 0; i < 9; ++i) {
    // Both instances idle, and the batcher hears so before it forms the next batch.
    ASSERT_TRUE(WaitFor([&] { return scheduler->IdleInstanceCount() == 2; }));
    Submit(*scheduler, i);
    ASSERT_EQ(recorder->WaitFor(i + 1).size(), i + 1);
  }
  ASSERT_TRUE(WaitFor([&] { return scheduler->IdleInstanceCount() == 2; }));
  scheduler->Stop();
  // executions x priority: 0|0 (tie: the first), 2|0, 2|1, 2|2 (tie), 4|2, 4|3, 4|4, ...
  EXPECT_EQ(recorder->WaitFor(9), (std::vector<int>{0, 1, 1, 0, 1, 1, 0, 1, 1}));
}

INSTANTIATE_TEST_SUITE_P(Policies, RateLimiterRanking,
                         ::testing::Combine(::testing::Values(Policy::kNone, Policy::kDynamic),
                                            ::testing::Bool()));

}  // namespace
