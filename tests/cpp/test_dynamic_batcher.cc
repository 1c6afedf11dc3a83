// Triton's batching rules, decided without threads or clocks.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "dynamic_batcher.h"

using namespace pyserve;

namespace {

constexpr uint64_t kUs = 1000;

struct Requests {
  std::vector<std::unique_ptr<InferRequest>> owned;
  InferRequest* Make(uint64_t id, uint32_t batch_size, uint64_t enqueue_ns,
                     std::vector<int64_t> dims = {4}) {
    auto r = std::make_unique<InferRequest>();
    r->id = id;
    r->batch_size = batch_size;
    r->enqueue_ns = enqueue_ns;
    TensorView t;
    t.name = "X";
    t.shape = {int64_t(batch_size)};
    t.shape.insert(t.shape.end(), dims.begin(), dims.end());
    r->inputs.push_back(t);
    owned.push_back(std::move(r));
    return owned.back().get();
  }
};

void Add(DynamicBatcher& b, InferRequest* r) {
  r->priority_level = b.LevelOf(r->priority);
  r->deadline_ns = b.DeadlineOf(*r, r->enqueue_ns);
  b.Add(r);
}

std::vector<uint64_t> Ids(const std::vector<InferRequest*>& requests) {
  std::vector<uint64_t> ids;
  for (auto* r : requests) ids.push_back(r->id);
  return ids;
}

}  // namespace

TEST(DynamicBatcher, PreferredSizeIsSentAtOnce) {
  BatchingOptions o;
  o.max_batch_size = 8;
  o.preferred_batch_sizes = {2, 4};
  o.max_queue_delay_us = 10000;
  DynamicBatcher b(o);
  Requests rq;
  for (int i = 0; i < 5; ++i) Add(b, rq.Make(i, 1, 0));
  DynamicBatcher::Decision d;
  b.Form(1 * kUs, false, 1, &d);
  EXPECT_EQ(Ids(d.batch), (std::vector<uint64_t>{0, 1, 2, 3}));  // largest preferred reachable
  DynamicBatcher::Decision rest;
  b.Form(2 * kUs, false, 1, &rest);
  EXPECT_TRUE(rest.batch.empty());  // 1 is not preferred: wait out the delay
  EXPECT_EQ(rest.wait_ns, 10000 * kUs - 2 * kUs);
  b.Form(10000 * kUs, false, 1, &rest);
  EXPECT_EQ(Ids(rest.batch), (std::vector<uint64_t>{4}));
  EXPECT_EQ(b.QueuedCount(), 0u);
}

TEST(DynamicBatcher, ZeroDelaySendsEverythingUpToMax) {
  BatchingOptions o;
  o.max_batch_size = 4;  // preferred defaults to {4}
  DynamicBatcher b(o);
  Requests rq;
  for (int i = 0; i < 6; ++i) Add(b, rq.Make(i, 1, 0));
  DynamicBatcher::Decision d;
  b.Form(0, false, 1, &d);
  EXPECT_EQ(d.batch.size(), 4u);
  DynamicBatcher::Decision d2;
  b.Form(0, false, 1, &d2);
  EXPECT_EQ(d2.batch.size(), 2u);
}

TEST(DynamicBatcher, DelayThenSendWhatIsPending) {
  BatchingOptions o;
  o.max_batch_size = 8;
  o.max_queue_delay_us = 500;
  DynamicBatcher b(o);
  Requests rq;
  Add(b, rq.Make(1, 1, 100 * kUs));
  Add(b, rq.Make(2, 2, 300 * kUs));
  DynamicBatcher::Decision d;
  b.Form(400 * kUs, false, 1, &d);
  EXPECT_TRUE(d.batch.empty());
  EXPECT_EQ(d.wait_ns, 200 * kUs);  // the oldest waited 300 of 500 us
  b.Form(600 * kUs, false, 1, &d);
  EXPECT_EQ(Ids(d.batch), (std::vector<uint64_t>{1, 2}));
}

TEST(DynamicBatcher, NeverExceedsMaxOrSplitsARequest) {
  BatchingOptions o;
  o.max_batch_size = 8;
  o.max_queue_delay_us = 1000;
  DynamicBatcher b(o);
  Requests rq;
  Add(b, rq.Make(1, 3, 0));
  Add(b, rq.Make(2, 3, 0));
  Add(b, rq.Make(3, 3, 0));
  DynamicBatcher::Decision d;
  b.Form(1 * kUs, false, 1, &d);
  EXPECT_EQ(Ids(d.batch), (std::vector<uint64_t>{1, 2}));  // 9 would exceed 8
  DynamicBatcher::Decision d2;
  b.Form(2 * kUs, false, 1, &d2);
  EXPECT_TRUE(d2.batch.empty());
  b.Form(2 * kUs, true, 1, &d2);  // flush (stopping) sends what is left
  EXPECT_EQ(Ids(d2.batch), (std::vector<uint64_t>{3}));
}

// What the scheduler may sleep through: arrivals short of the next preferred size, while the
// delay runs; any arrival where one could go ahead of the queue (priorities) or time out.
TEST(DynamicBatcher, SaysHowManyUnitsCanChangeAWait) {
  BatchingOptions o;
  o.max_batch_size = 8;
  o.preferred_batch_sizes = {4, 6};
  o.max_queue_delay_us = 1000;
  DynamicBatcher b(o);
  Requests rq;
  Add(b, rq.Make(1, 1, 0));
  DynamicBatcher::Decision d;
  b.Form(1 * kUs, false, 1, &d);
  EXPECT_TRUE(d.batch.empty());
  EXPECT_EQ(b.UnitsThatMatter(), 3u);  // to 4
  Add(b, rq.Make(2, 4, 0));
  b.Form(1 * kUs, false, 1, &d);
  EXPECT_TRUE(d.batch.empty());
  EXPECT_EQ(b.UnitsThatMatter(), 1u);  // 5: one more makes 6
  b.Purge(1 * kUs, &d);
  EXPECT_EQ(b.UnitsThatMatter(), UINT64_MAX);  // no instance is idle: no arrival matters

  for (auto change : {0, 1}) {
    BatchingOptions p = o;
    if (change == 0) p.priority_levels = 2;
    if (change == 1) p.default_policy.default_timeout_us = 500;
    DynamicBatcher c(p);
    Add(c, rq.Make(3, 1, 0));
    DynamicBatcher::Decision e;
    c.Form(1 * kUs, false, 1, &e);
    EXPECT_TRUE(e.batch.empty());
    EXPECT_EQ(c.UnitsThatMatter(), 1u) << (change == 0 ? "priority levels" : "timeouts");
  }
}

TEST(DynamicBatcher, DifferentShapesAreNotBatchedUnlessRagged) {
  for (bool ragged : {false, true}) {
    SCOPED_TRACE(ragged ? "ragged" : "equal shapes");
    BatchingOptions o;
    o.max_batch_size = 8;
    if (!ragged) o.equal_shape_inputs = {"X"};
    DynamicBatcher b(o);
    Requests rq;
    Add(b, rq.Make(1, 1, 0, {4}));
    Add(b, rq.Make(2, 1, 0, {5}));
    Add(b, rq.Make(3, 1, 0, {5}));
    DynamicBatcher::Decision d;
    b.Form(0, false, 1, &d);
    if (ragged) {
      EXPECT_EQ(d.batch.size(), 3u);
    } else {
      EXPECT_EQ(Ids(d.batch), (std::vector<uint64_t>{1}));
      DynamicBatcher::Decision d2;
      b.Form(0, false, 1, &d2);
      EXPECT_EQ(Ids(d2.batch), (std::vector<uint64_t>{2, 3}));
    }
  }
}

TEST(DynamicBatcher, HigherPriorityGoesFirst) {
  BatchingOptions o;
  o.max_batch_size = 2;
  o.priority_levels = 3;
  o.default_priority_level = 3;
  DynamicBatcher b(o);
  EXPECT_EQ(b.LevelOf(0), 2u);
  EXPECT_EQ(b.LevelOf(9), 2u);
  EXPECT_EQ(b.LevelOf(1), 0u);
  Requests rq;
  auto* low = rq.Make(1, 1, 0);
  auto* mid = rq.Make(2, 1, 1);
  mid->priority = 2;
  auto* high = rq.Make(3, 1, 2);
  high->priority = 1;
  Add(b, low);
  Add(b, mid);
  Add(b, high);
  DynamicBatcher::Decision d;
  b.Form(3, false, 1, &d);
  EXPECT_EQ(Ids(d.batch), (std::vector<uint64_t>{3, 2}));
  DynamicBatcher::Decision d2;
  b.Form(3, false, 1, &d2);
  EXPECT_EQ(Ids(d2.batch), (std::vector<uint64_t>{1}));
}

TEST(DynamicBatcher, TimeoutsRejectOrDelay) {
  BatchingOptions o;
  o.max_batch_size = 4;
  o.max_queue_delay_us = 100000;
  o.priority_levels = 2;
  o.default_priority_level = 1;
  o.default_policy.default_timeout_us = 1000;
  QueuePolicy delay;
  delay.delay_on_timeout = true;
  delay.default_timeout_us = 1000;
  o.level_policies[2] = delay;
  DynamicBatcher b(o);
  Requests rq;
  auto* rejected = rq.Make(1, 1, 0);
  auto* delayed = rq.Make(2, 1, 0);
  delayed->priority = 2;
  auto* fresh = rq.Make(3, 1, 0);
  fresh->priority = 2;
  fresh->timeout_us = 50;  // no override allowed: keeps the default
  Add(b, rejected);
  Add(b, delayed);
  DynamicBatcher::Decision d;
  b.Form(500 * kUs, false, 1, &d);
  EXPECT_TRUE(d.batch.empty());
  EXPECT_TRUE(d.rejected.empty());
  EXPECT_EQ(d.wait_ns, 500 * kUs);  // closest deadline
  b.Form(1500 * kUs, false, 1, &d);
  EXPECT_EQ(Ids(d.rejected), (std::vector<uint64_t>{1}));
  EXPECT_TRUE(d.batch.empty());
  fresh->enqueue_ns = 1500 * kUs;
  Add(b, fresh);
  DynamicBatcher::Decision d2;
  b.Form(1600 * kUs, true, 1, &d2);
  EXPECT_EQ(Ids(d2.batch), (std::vector<uint64_t>{3, 2}));  // the delayed one is served last
}

TEST(DynamicBatcher, TimeoutOverrideOnlyShortens) {
  BatchingOptions o;
  o.default_policy.allow_timeout_override = true;
  o.default_policy.default_timeout_us = 1000;
  DynamicBatcher b(o);
  InferRequest r;
  r.timeout_us = 10;
  EXPECT_EQ(b.DeadlineOf(r, 0), 10 * kUs);
  r.timeout_us = 5000;
  EXPECT_EQ(b.DeadlineOf(r, 0), 1000 * kUs);
  r.timeout_us = 0;
  EXPECT_EQ(b.DeadlineOf(r, 0), 1000 * kUs);
}

TEST(DynamicBatcher, CancelledRequestsLeaveTheQueue) {
  BatchingOptions o;
  o.max_batch_size = 4;
  o.max_queue_delay_us = 1000;
  DynamicBatcher b(o);
  Requests rq;
  std::atomic<bool> gone{true};
  InferRequest* a = rq.Make(0, 1, 0);
  InferRequest* cancelled = rq.Make(1, 1, 0);
  cancelled->cancelled = &gone;
  InferRequest* c = rq.Make(2, 1, 0);
  Add(b, a);
  Add(b, cancelled);
  Add(b, c);
  DynamicBatcher::Decision d;
  b.Form(2000 * kUs, false, 1, &d);
  EXPECT_EQ(Ids(d.cancelled), (std::vector<uint64_t>{1}));
  EXPECT_EQ(Ids(d.batch), (std::vector<uint64_t>{0, 2}));
  EXPECT_EQ(b.QueuedCount(), 0u);
}
