// Triton's sequence batching rules (direct and oldest), decided without threads or clocks.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "sequence_batcher.h"
#include "status_matchers.h"

using namespace pyserve;

namespace {

constexpr uint64_t kMs = 1000 * 1000;

struct Requests {
  std::vector<std::unique_ptr<InferRequest>> owned;
  float value = 0;
  InferRequest* Make(uint64_t corrid, uint32_t flags, uint64_t enqueue_ns) {
    auto r = std::make_unique<InferRequest>();
    r->id = owned.size();
    r->correlation_id.number = corrid;
    r->flags = flags;
    r->enqueue_ns = enqueue_ns;
    TensorView t;
    t.name = "INPUT";
    t.dtype = DataType::kInt32;
    t.shape = {1, 1};
    t.data = reinterpret_cast<const uint8_t*>(&value);
    t.byte_size = 4;
    r->inputs.push_back(t);
    owned.push_back(std::move(r));
    return owned.back().get();
  }
};

SequenceControl Control(const std::string& name, SequenceControl::Kind kind, DataType dtype,
                        double false_value = 0, double true_value = 1) {
  SequenceControl c;
  c.name = name;
  c.kind = kind;
  c.dtype = dtype;
  c.false_value = false_value;
  c.true_value = true_value;
  return c;
}

SequenceBatchingOptions Direct(uint32_t slots, int instances = 1) {
  SequenceBatchingOptions o;
  o.max_batch_size = slots;
  o.instance_count = instances;
  o.controls = {Control("START", SequenceControl::Kind::kStart, DataType::kInt32),
                Control("READY", SequenceControl::Kind::kReady, DataType::kInt32),
                Control("END", SequenceControl::Kind::kEnd, DataType::kInt32),
                Control("CORRID", SequenceControl::Kind::kCorrId, DataType::kUint64)};
  return o;
}

const TensorView* Input(const InferRequest& r, const std::string& name) {
  for (const auto& t : r.inputs) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

int32_t Int32(const InferRequest& r, const std::string& name) {
  const TensorView* t = Input(r, name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return -1;
  int32_t v;
  std::memcpy(&v, t->data, 4);
  return v;
}

uint64_t Corrid(const InferRequest& r) {
  const TensorView* t = Input(r, "CORRID");
  uint64_t v = 0;
  std::memcpy(&v, t->data, t->byte_size);
  return v;
}

// What a batch's rows are: the correlation ID of each, 0 for padding.
std::vector<uint64_t> Rows(const BatchPolicy::Decision& d) {
  std::vector<uint64_t> rows;
  for (auto* r : d.batch) rows.push_back(r->padding ? 0 : r->correlation_id.number);
  return rows;
}

// Padding belongs to the batch (the scheduler frees it with the batch).
void FreePadding(BatchPolicy::Decision& d) {
  for (auto* r : d.batch) {
    if (r->padding) delete r;
  }
}

void ExpectStatus(const Status& status, StatusCode code, const std::string& message) {
  EXPECT_EQ(status.code(), code);
  EXPECT_EQ(status.message(), message);
}

BatchPolicy::Decision Form(SequenceBatcher& b, uint64_t now_ns, bool flush = false) {
  BatchPolicy::Decision d;
  b.Form(now_ns, flush, 1, &d);
  return d;
}

}  // namespace

TEST(SequenceBatcher, AdmitRefusesWhatTritonRefuses) {
  SequenceBatcher b("m", Direct(4));
  Requests rq;
  InferRequest* none = rq.Make(0, kSequenceStart, 0);
  ExpectStatus(b.Admit(*none, 0), StatusCode::kInvalidArg,
                     "inference request to model 'm' must specify a non-zero or non-empty "
                     "correlation ID");
  InferRequest* two = rq.Make(5, kSequenceStart, 0);
  two->batch_size = 2;
  ExpectStatus(b.Admit(*two, 0), StatusCode::kInvalidArg,
                     "inference request to model 'm' must specify batch-size 1 due to "
                     "requirements of sequence batcher");
  InferRequest* text = rq.Make(0, kSequenceStart, 0);
  text->correlation_id.is_text = true;
  text->correlation_id.text = "abc";
  text->request_id = "r1";
  ExpectStatus(b.Admit(*text, 0), StatusCode::kInvalidArg,
                     "[request id: r1] sequence batching control 'CORRID' data-type is 'BYTES', "
                     "but model 'm' expects 'UINT64'");
  EXPECT_OK(b.Admit(*rq.Make(5, kSequenceStart, 0), 0));
}

TEST(SequenceBatcher, DirectGivesEachSequenceASlotAndPadsEmptySlotsBelowTheHighest) {
  SequenceBatcher b("m", Direct(4));
  Requests rq;
  b.Add(rq.Make(11, kSequenceStart, 0));  // slot 0
  b.Add(rq.Make(22, kSequenceStart, 0));  // slot 1
  auto d = Form(b, 1);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{11, 22}));
  EXPECT_EQ(d.instance, 0);
  EXPECT_EQ(Int32(*d.batch[0], "START"), 1);
  EXPECT_EQ(Int32(*d.batch[0], "READY"), 1);
  EXPECT_EQ(Int32(*d.batch[0], "END"), 0);
  EXPECT_EQ(Corrid(*d.batch[1]), 22u);
  EXPECT_EQ(Input(*d.batch[0], "START")->shape, (std::vector<int64_t>{1, 1}));

  // The instance is busy until the scheduler says otherwise.
  b.Add(rq.Make(22, kSequenceEnd, 2));
  EXPECT_TRUE(Form(b, 3).batch.empty());
  b.InstanceDone(0);
  d = Form(b, 4);
  ASSERT_EQ(Rows(d), (std::vector<uint64_t>{0, 22}));  // slot 0 padded: READY false
  EXPECT_EQ(Int32(*d.batch[0], "READY"), 0);
  EXPECT_EQ(Int32(*d.batch[0], "START"), 0);
  EXPECT_EQ(Corrid(*d.batch[0]), 0u);
  EXPECT_EQ(d.batch[0]->inputs[0].shape, (std::vector<int64_t>{1, 1}));  // the client's input
  EXPECT_TRUE(d.batch[0]->answered.load());
  EXPECT_EQ(Int32(*d.batch[1], "END"), 1);
  EXPECT_EQ(Int32(*d.batch[1], "START"), 0);
  FreePadding(d);
  b.InstanceDone(0);

  // Slot 1 is free again; the next sequence takes the lowest free slot.
  b.Add(rq.Make(33, kSequenceStart, 5));
  b.Add(rq.Make(44, kSequenceStart, 5));
  b.Add(rq.Make(11, kSequenceEnd, 5));
  d = Form(b, 6);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{11, 33, 44}));
  EXPECT_EQ(b.QueuedCount(), 0u);
}

TEST(SequenceBatcher, DirectBindsSequencesToInstances) {
  SequenceBatcher b("m", Direct(2, 2));
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart, 0));  // instance 0, slot 0
  b.Add(rq.Make(2, kSequenceStart, 0));  // instance 1, slot 0
  b.Add(rq.Make(3, kSequenceStart, 0));  // instance 0, slot 1
  auto first = Form(b, 1);
  EXPECT_EQ(first.instance, 0);
  EXPECT_EQ(Rows(first), (std::vector<uint64_t>{1, 3}));
  auto second = Form(b, 1);
  EXPECT_EQ(second.instance, 1);
  EXPECT_EQ(Rows(second), (std::vector<uint64_t>{2}));
  // Sequence 2's next request waits for instance 1, however idle instance 0 is.
  b.InstanceDone(0);
  b.Add(rq.Make(2, 0, 2));
  EXPECT_TRUE(Form(b, 3).batch.empty());
  b.InstanceDone(1);
  auto third = Form(b, 4);
  EXPECT_EQ(third.instance, 1);
  EXPECT_EQ(Rows(third), (std::vector<uint64_t>{2}));
}

TEST(SequenceBatcher, BacklogTakesTheSlotWhenItsSequenceEnds) {
  SequenceBatcher b("m", Direct(1));
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart, 0));
  b.Add(rq.Make(2, kSequenceStart, 0));  // every slot taken: backlog
  b.Add(rq.Make(2, kSequenceEnd, 0));
  b.Add(rq.Make(3, kSequenceStart | kSequenceEnd, 0));  // a whole sequence in the backlog
  EXPECT_EQ(b.BacklogCount(), 2u);
  EXPECT_EQ(Rows(Form(b, 1)), (std::vector<uint64_t>{1}));
  b.InstanceDone(0);
  b.Add(rq.Make(1, kSequenceEnd, 2));
  EXPECT_EQ(Rows(Form(b, 3)), (std::vector<uint64_t>{1}));  // ends: 2 takes the slot
  EXPECT_EQ(b.BacklogCount(), 1u);
  b.InstanceDone(0);
  auto d = Form(b, 4);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{2}));
  EXPECT_EQ(Int32(*d.batch[0], "START"), 1);
  b.InstanceDone(0);
  EXPECT_EQ(Rows(Form(b, 5)), (std::vector<uint64_t>{2}));
  b.InstanceDone(0);
  d = Form(b, 6);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{3}));
  EXPECT_EQ(Int32(*d.batch[0], "START"), 1);
  EXPECT_EQ(Int32(*d.batch[0], "END"), 1);
  EXPECT_EQ(b.QueuedCount(), 0u);
  EXPECT_EQ(b.ActiveCount(), 0u);
}

TEST(SequenceBatcher, ARequestOfNoKnownSequenceIsRefused) {
  SequenceBatcher b("m", Direct(2));
  Requests rq;
  InferRequest* stray = rq.Make(7, 0, 0);
  b.Add(stray);
  EXPECT_EQ(b.QueuedCount(), 1u);  // until the next decision answers it
  auto d = Form(b, 1);
  ASSERT_EQ(d.refused.size(), 1u);
  EXPECT_EQ(d.refused[0].first, stray);
  ExpectStatus(d.refused[0].second, StatusCode::kInvalidArg,
                     "inference request for sequence 7 to model 'm' must specify the START flag "
                     "on the first request of the sequence");
  EXPECT_EQ(b.QueuedCount(), 0u);
}

TEST(SequenceBatcher, AStartInProgressEndsTheOldSequenceInItsSlot) {
  SequenceBatcher b("m", Direct(2));
  Requests rq;
  b.Add(rq.Make(5, kSequenceStart, 0));
  b.Add(rq.Make(5, kSequenceStart, 0));  // a conflict: logged, the same slot goes on
  auto d = Form(b, 1);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{5}));
  b.InstanceDone(0);
  d = Form(b, 2);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{5}));
  EXPECT_EQ(Int32(*d.batch[0], "START"), 1);
  EXPECT_EQ(b.ActiveCount(), 1u);
}

TEST(SequenceBatcher, AnIdleSequenceLosesItsSlot) {
  SequenceBatchingOptions o = Direct(1);
  o.max_sequence_idle_us = 1000;  // 1 ms
  SequenceBatcher b("m", o);
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart, 0));
  b.Add(rq.Make(2, kSequenceStart, 0));  // backlog
  auto d = Form(b, 1);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{1}));
  b.InstanceDone(0);
  d = Form(b, 2);
  EXPECT_TRUE(d.batch.empty());
  EXPECT_EQ(d.wait_ns, 1 * kMs - 2);  // woken when sequence 1 has been idle long enough
  BatchPolicy::Decision purged;
  b.Purge(1 * kMs, &purged);  // released; the backlog's sequence takes the slot
  EXPECT_EQ(b.BacklogCount(), 0u);
  d = Form(b, 1 * kMs + 1);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{2}));
  b.InstanceDone(0);
  b.Add(rq.Make(1, 0, 1 * kMs + 2));  // too late: sequence 1 is over
  d = Form(b, 1 * kMs + 3);
  ASSERT_EQ(d.refused.size(), 1u);
  EXPECT_EQ(d.refused[0].second.code(), StatusCode::kInvalidArg);
}

TEST(SequenceBatcher, MinimumSlotUtilizationWaitsForTheDelay) {
  SequenceBatchingOptions o = Direct(4);
  o.max_queue_delay_us = 100;
  o.minimum_slot_utilization = 0.5;
  SequenceBatcher b("m", o);
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart, 0));
  auto d = Form(b, 10 * 1000);
  EXPECT_TRUE(d.batch.empty());
  EXPECT_EQ(d.wait_ns, 90 * 1000 + 1);
  b.Add(rq.Make(2, kSequenceStart, 20 * 1000));  // 2 of 4 slots: enough
  EXPECT_EQ(Rows(Form(b, 20 * 1000)), (std::vector<uint64_t>{1, 2}));
  b.InstanceDone(0);
  b.Add(rq.Make(1, 0, 30 * 1000));
  EXPECT_TRUE(Form(b, 30 * 1000).batch.empty());
  EXPECT_EQ(Rows(Form(b, 130 * 1000 + 1)), (std::vector<uint64_t>{1}));  // the delay passed
}

TEST(SequenceBatcher, OldestBatchesTheOldestSequencesOneRequestEach) {
  SequenceBatchingOptions o = Direct(2);
  o.oldest = true;
  o.max_candidate_sequences = 4;
  o.preferred_batch_sizes = {2};
  o.max_queue_delay_us = 100;
  SequenceBatcher b("m", o);
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart, 30));
  b.Add(rq.Make(2, kSequenceStart, 10));
  b.Add(rq.Make(2, 0, 15));  // the same sequence: not in the same batch
  b.Add(rq.Make(3, kSequenceStart, 20));
  auto d = Form(b, 40);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{2, 3}));  // oldest first, preferred size 2
  b.InstanceDone(0);
  d = Form(b, 50);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{2, 1}));
  EXPECT_EQ(Int32(*d.batch[0], "START"), 0);
  b.InstanceDone(0);
  b.Add(rq.Make(3, kSequenceEnd, 60));
  d = Form(b, 70);
  EXPECT_TRUE(d.batch.empty());  // one is not preferred: wait for the delay
  EXPECT_EQ(d.wait_ns, 100 * 1000 - 10);
  d = Form(b, 60 + 100 * 1000);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{3}));
  EXPECT_EQ(Int32(*d.batch[0], "END"), 1);
  EXPECT_EQ(b.ActiveCount(), 2u);  // 3 ended; 1 and 2 go on
}

TEST(SequenceBatcher, CancelledRequestsEndTheirSequence) {
  SequenceBatcher b("m", Direct(1));
  Requests rq;
  std::atomic<bool> gone{false};
  InferRequest* first = rq.Make(1, kSequenceStart, 0);
  first->cancelled = &gone;
  b.Add(first);
  b.Add(rq.Make(2, kSequenceStart, 0));  // backlog
  gone = true;
  BatchPolicy::Decision d;
  b.Purge(1, &d);
  EXPECT_EQ(d.cancelled, std::vector<InferRequest*>{first});
  EXPECT_EQ(Rows(Form(b, 2)), (std::vector<uint64_t>{2}));  // the slot went to the backlog
}

TEST(SequenceBatcher, StoppingLetsTheBacklogThrough) {
  SequenceBatcher b("m", Direct(1));
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart, 0));
  b.Add(rq.Make(2, kSequenceStart, 0));
  EXPECT_EQ(Rows(Form(b, 1, true)), (std::vector<uint64_t>{1}));
  b.InstanceDone(0);
  EXPECT_EQ(Rows(Form(b, 2, true)), (std::vector<uint64_t>{2}));
  EXPECT_EQ(b.QueuedCount(), 0u);
}

TEST(SequenceBatcher, TakeAllEmptiesSlotsBacklogAndRefusals) {
  SequenceBatcher b("m", Direct(1));
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart, 0));
  b.Add(rq.Make(2, kSequenceStart, 0));
  b.Add(rq.Make(9, 0, 0));
  std::vector<InferRequest*> all;
  b.TakeAll(&all);
  EXPECT_EQ(all.size(), 3u);
  EXPECT_EQ(b.QueuedCount(), 0u);
}

TEST(SequenceBatcher, IterativeSequencesRunUntilTheBackendReleasesThem) {
  SequenceBatchingOptions options = Direct(1);
  options.iterative = true;
  SequenceBatcher b("m", options);
  Requests rq;
  // No correlation ID: each request starts a sequence of its own, as Triton numbers them.
  InferRequest* first = rq.Make(0, 0, 0);
  InferRequest* second = rq.Make(0, 0, 0);
  ASSERT_OK(b.Admit(*first, 0));
  ASSERT_OK(b.Admit(*second, 0));
  EXPECT_EQ(first->correlation_id.number, 1u);
  EXPECT_EQ(second->correlation_id.number, 2u);
  EXPECT_EQ(first->flags, uint32_t{kSequenceStart});
  b.Add(first);
  b.Add(second);  // one slot: waits in the backlog
  auto d = Form(b, 1);
  ASSERT_EQ(Rows(d), (std::vector<uint64_t>{1}));
  EXPECT_EQ(Int32(*d.batch[0], "START"), 1);
  b.InstanceDone(0);
  // Rescheduled: queued again in its slot, its control inputs made anew (START now false).
  first->flags = 0;
  first->rescheduled = true;
  b.Add(first);
  d = Form(b, 2);
  ASSERT_EQ(Rows(d), (std::vector<uint64_t>{1}));
  EXPECT_EQ(first->inputs.size(), 1u + options.controls.size());
  EXPECT_EQ(Int32(*d.batch[0], "START"), 0);
  EXPECT_EQ(Int32(*d.batch[0], "READY"), 1);
  b.InstanceDone(0);
  EXPECT_EQ(b.BacklogCount(), 1u);
  // Released without RESCHEDULE: its sequence ends and the backlog takes the slot.
  b.SequenceEnded(first->correlation_id, 3);
  EXPECT_EQ(b.BacklogCount(), 0u);
  d = Form(b, 4);
  ASSERT_EQ(Rows(d), (std::vector<uint64_t>{2}));
  b.InstanceDone(0);
  b.SequenceEnded(second->correlation_id, 5);
  EXPECT_EQ(b.ActiveCount(), 0u);
}

TEST(SequenceBatcher, DelayHooksCountSlotsAndBacklogAsTritonDoes) {
  SequenceBatchingOptions options = Direct(1);
  options.backlog_delay_count = 1;
  SequenceBatcher b("m", options);
  Requests rq;
  EXPECT_TRUE(b.Holding(1));
  b.Add(rq.Make(1, kSequenceStart, 0));
  EXPECT_TRUE(b.Holding(1));  // a request in a slot, none in the backlog yet
  b.Add(rq.Make(2, kSequenceStart, 0));
  EXPECT_FALSE(b.Holding(1));  // one in a slot, one in the backlog
  EXPECT_TRUE(b.Holding(2));   // the backlog does not count as queued in slots
  b.Add(rq.Make(1, kSequenceEnd, 0));
  EXPECT_FALSE(b.Holding(2));
  BatchPolicy::Decision d;
  b.TakeAll(&d.batch);
}

TEST(SequenceControls, EveryKindIsEncodedAsConfigured) {
  std::vector<SequenceControl> controls = {
      Control("S", SequenceControl::Kind::kStart, DataType::kFp32, 0.5, 2.5),
      Control("E", SequenceControl::Kind::kEnd, DataType::kBool, 0, 1),
      Control("R", SequenceControl::Kind::kReady, DataType::kInt32, -1, 7),
      Control("C32", SequenceControl::Kind::kCorrId, DataType::kInt32),
  };
  InferRequest r;
  r.correlation_id.number = (uint64_t{1} << 32) + 9;
  r.flags = kSequenceStart;
  AddControlInputs(controls, false, &r);
  ASSERT_EQ(r.inputs.size(), 4u);
  float s;
  std::memcpy(&s, r.inputs[0].data, 4);
  EXPECT_EQ(s, 2.5f);
  EXPECT_EQ(r.inputs[1].byte_size, 1u);
  EXPECT_EQ(r.inputs[1].data[0], 0);
  EXPECT_EQ(Int32(r, "R"), 7);
  EXPECT_EQ(Int32(r, "C32"), 9);  // the low 32 bits, as Triton
  EXPECT_EQ(r.inputs[3].shape, (std::vector<int64_t>{1}));

  std::vector<SequenceControl> text = {
      Control("C", SequenceControl::Kind::kCorrId, DataType::kBytes)};
  InferRequest t;
  t.correlation_id.is_text = true;
  t.correlation_id.text = "seq-a";
  AddControlInputs(text, true, &t);
  ASSERT_EQ(t.inputs.size(), 1u);
  EXPECT_EQ(t.inputs[0].byte_size, 4u + 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(t.inputs[0].data) + 4, 5), "seq-a");
  EXPECT_EQ(t.inputs[0].shape, (std::vector<int64_t>{1, 1}));
}

TEST(SequenceBatcher, FreedSlotsAreReusedLowestFirst) {
  SequenceBatcher b("m", Direct(8));
  Requests rq;
  for (uint64_t id = 1; id <= 8; ++id) b.Add(rq.Make(id, kSequenceStart, 0));
  EXPECT_EQ(Rows(Form(b, 1)), (std::vector<uint64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  b.InstanceDone(0);
  for (uint64_t id : {2, 7, 5}) b.Add(rq.Make(id, kSequenceEnd, 2));
  auto d = Form(b, 3);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{0, 2, 0, 0, 5, 0, 7}));
  FreePadding(d);
  b.InstanceDone(0);
  EXPECT_EQ(b.ActiveCount(), 5u);
  for (uint64_t id : {9, 10}) b.Add(rq.Make(id, kSequenceStart, 4));  // slots 1 and 4
  b.Add(rq.Make(8, 0, 4));
  d = Form(b, 5);
  EXPECT_EQ(Rows(d), (std::vector<uint64_t>{0, 9, 0, 0, 10, 0, 0, 8}));
  FreePadding(d);
}
