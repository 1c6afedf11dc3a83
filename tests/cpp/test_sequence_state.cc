// Implicit state (sequence_batching.state) as the sequence batcher keeps it: each request of a
// sequence gets the state its previous request produced, START begins from the initial state,
// and the state is dropped with the sequence's slot. Decided without threads or clocks: the
// tests play the worker's part with UpdateSequenceStates.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "scheduler.h"
#include "sequence_batcher.h"
#include "sequence_state.h"
#include "status_matchers.h"

using namespace pyserve;

namespace {

constexpr uint64_t kMs = 1000 * 1000;

struct Requests {
  std::vector<std::unique_ptr<InferRequest>> owned;
  int32_t value = 0;
  InferRequest* Make(uint64_t corrid, uint32_t flags, uint64_t enqueue_ns = 0) {
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

std::string Int32Bytes(std::vector<int32_t> values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4);
}

// A model that batches (max_batch_size `slots`) with one INT32 state of one element, whose
// initial value is `initial`.
SequenceBatchingOptions WithState(uint32_t slots, int32_t initial = 0) {
  SequenceBatchingOptions o;
  o.max_batch_size = slots;
  StateSpec state;
  state.input_name = "INPUT_STATE";
  state.output_name = "OUTPUT_STATE";
  state.dtype = DataType::kInt32;
  state.initial_shape = {1, 1};
  state.initial = std::make_shared<const std::string>(Int32Bytes({initial}));
  o.states.push_back(std::move(state));
  return o;
}

const TensorView* Input(const InferRequest& r, const std::string& name) {
  for (const auto& t : r.inputs) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

int32_t StateIn(const InferRequest& r) {
  const TensorView* t = Input(r, "INPUT_STATE");
  EXPECT_NE(t, nullptr);
  if (t == nullptr || t->byte_size != 4) return -1;
  int32_t v;
  std::memcpy(&v, t->data, 4);
  return v;
}

BatchPolicy::Decision Form(SequenceBatcher& b, uint64_t now_ns = 0) {
  BatchPolicy::Decision d;
  b.Form(now_ns, false, 1, &d);
  return d;
}

// The worker's part: the model answered OUTPUT_STATE = `rows` for the batch `d` (one row per
// request), and the instance is done.
Status RunBatch(SequenceBatcher& b, BatchPolicy::Decision& d, const std::vector<int32_t>& rows,
                bool per_request = false) {
  Batch batch;
  for (InferRequest* r : d.batch) batch.requests.emplace_back(r);
  auto bytes = std::make_shared<std::string>(Int32Bytes(rows));
  BatchOutputs outputs;
  OutputTensor out;
  out.name = "OUTPUT_STATE";
  out.dtype = DataType::kInt32;
  out.memory = bytes;
  if (per_request) {
    outputs.per_request = true;
    for (size_t i = 0; i < rows.size(); ++i) {
      out.shape = {1, 1};
      out.data = reinterpret_cast<const uint8_t*>(bytes->data()) + 4 * i;
      out.byte_size = 4;
      outputs.requests.push_back({out});
      outputs.request_status.push_back(Status::OK());
    }
  } else if (!rows.empty()) {
    out.shape = {static_cast<int64_t>(rows.size()), 1};
    out.data = reinterpret_cast<const uint8_t*>(bytes->data());
    out.byte_size = bytes->size();
    outputs.batch.push_back(out);
  }
  Status status = UpdateSequenceStates("m", batch, outputs);
  for (auto& r : batch.requests) {  // the requests stay with the test; padding goes
    InferRequest* raw = r.release();
    if (raw->padding) delete raw;
  }
  b.InstanceDone(0);
  return status;
}

}  // namespace

TEST(SequenceState, EachRequestGetsThePreviousOutputAndStartGetsTheInitialState) {
  SequenceBatcher b("m", WithState(1, 7));
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart));
  auto d = Form(b);
  ASSERT_EQ(d.batch.size(), 1u);
  EXPECT_EQ(StateIn(*d.batch[0]), 7);
  const TensorView* state = Input(*d.batch[0], "INPUT_STATE");
  EXPECT_EQ(state->shape, (std::vector<int64_t>{1, 1}));
  EXPECT_NE(d.batch[0]->sequence_state, nullptr);
  ASSERT_TRUE(RunBatch(b, d, {10}).ok());

  b.Add(rq.Make(1, 0));
  d = Form(b);
  EXPECT_EQ(StateIn(*d.batch[0]), 10);
  ASSERT_TRUE(RunBatch(b, d, {25}).ok());

  // A new START of the same correlation ID begins again from the initial state.
  b.Add(rq.Make(1, kSequenceStart));
  d = Form(b);
  EXPECT_EQ(StateIn(*d.batch[0]), 7);
  ASSERT_TRUE(RunBatch(b, d, {3}).ok());
  b.Add(rq.Make(1, kSequenceEnd));
  d = Form(b);
  EXPECT_EQ(StateIn(*d.batch[0]), 3);
  EXPECT_EQ(b.StateCount(), 0u);  // released with the slot at END
  ASSERT_TRUE(RunBatch(b, d, {4}).ok());
}

TEST(SequenceState, InterleavedSequencesKeepTheirOwnStateAcrossBatchRows) {
  SequenceBatcher b("m", WithState(2));
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart));
  b.Add(rq.Make(2, kSequenceStart));
  auto d = Form(b);
  ASSERT_EQ(d.batch.size(), 2u);
  ASSERT_TRUE(RunBatch(b, d, {100, 200}).ok());  // row i of the batch output is request i's
  b.Add(rq.Make(2, 0));
  b.Add(rq.Make(1, 0));
  d = Form(b);
  ASSERT_EQ(d.batch.size(), 2u);
  EXPECT_EQ(d.batch[0]->correlation_id.number, 1u);
  EXPECT_EQ(StateIn(*d.batch[0]), 100);
  EXPECT_EQ(StateIn(*d.batch[1]), 200);
  ASSERT_TRUE(RunBatch(b, d, {101, 201}, /*per_request=*/true).ok());
  b.Add(rq.Make(1, 0));
  b.Add(rq.Make(2, 0));
  d = Form(b);
  EXPECT_EQ(StateIn(*d.batch[0]), 101);
  EXPECT_EQ(StateIn(*d.batch[1]), 201);
  EXPECT_EQ(b.StateCount(), 2u);
  ASSERT_TRUE(RunBatch(b, d, {1, 2}).ok());
}

TEST(SequenceState, PaddingRowsGetTheInitialStateAndKeepNone) {
  SequenceBatcher b("m", WithState(2, 5));
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart));
  b.Add(rq.Make(2, kSequenceStart));
  auto d = Form(b);
  ASSERT_TRUE(RunBatch(b, d, {11, 22}).ok());
  b.Add(rq.Make(2, 0));  // slot 0 has nothing: its row is padding
  d = Form(b);
  ASSERT_EQ(d.batch.size(), 2u);
  ASSERT_TRUE(d.batch[0]->padding);
  EXPECT_EQ(StateIn(*d.batch[0]), 5);
  EXPECT_EQ(d.batch[0]->sequence_state, nullptr);
  EXPECT_EQ(StateIn(*d.batch[1]), 22);
  ASSERT_TRUE(RunBatch(b, d, {0, 23}).ok());
  b.Add(rq.Make(1, 0));
  d = Form(b);
  EXPECT_EQ(StateIn(*d.batch[0]), 11);  // the padding row's output did not touch it
  ASSERT_TRUE(RunBatch(b, d, {12}).ok());
}

TEST(SequenceState, AStateTheModelDidNotProduceStaysAsItWas) {
  SequenceBatcher b("m", WithState(1));
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart));
  auto d = Form(b);
  ASSERT_TRUE(RunBatch(b, d, {9}).ok());
  b.Add(rq.Make(1, 0));
  d = Form(b);
  ASSERT_TRUE(RunBatch(b, d, {}).ok());
  b.Add(rq.Make(1, 0));
  d = Form(b);
  EXPECT_EQ(StateIn(*d.batch[0]), 9);
  ASSERT_TRUE(RunBatch(b, d, {9}).ok());
}

TEST(SequenceState, ABatchOutputWithTheWrongRowsIsAnError) {
  SequenceBatcher b("m", WithState(2));
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart));
  b.Add(rq.Make(2, kSequenceStart));
  auto d = Form(b);
  Status status = RunBatch(b, d, {1, 2, 3});
  EXPECT_EQ(status.code(), StatusCode::kInternal);
  EXPECT_EQ(status.message(),
            "model 'm' returned state output 'OUTPUT_STATE' that cannot be split into 2 requests");
}

TEST(SequenceState, IdleTimeoutAndStopDropTheState) {
  SequenceBatchingOptions o = WithState(2);
  o.max_sequence_idle_us = 1000;
  SequenceBatcher b("m", o);
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart));
  auto d = Form(b);
  ASSERT_TRUE(RunBatch(b, d, {1}).ok());
  EXPECT_EQ(b.StateCount(), 1u);
  BatchPolicy::Decision purge;
  b.Purge(2 * kMs, &purge);  // idle for longer than max_sequence_idle_microseconds
  EXPECT_EQ(b.StateCount(), 0u);

  b.Add(rq.Make(2, kSequenceStart, 3 * kMs));
  d = Form(b, 3 * kMs);
  ASSERT_TRUE(RunBatch(b, d, {1}).ok());
  b.Add(rq.Make(2, 0, 3 * kMs));  // queued when the model stops
  EXPECT_EQ(b.StateCount(), 1u);
  std::vector<InferRequest*> left;
  b.TakeAll(&left);
  EXPECT_EQ(left.size(), 1u);
  EXPECT_EQ(b.StateCount(), 0u);
}

// A decoupled model's request: its sender takes the state from its responses after the batch
// (here played by the test) and settles it with the final one; until then the sequence's next
// request waits, other sequences do not, and a START begins anew.
TEST(SequenceState, ADecoupledRequestHoldsItsSequenceUntilItsFinalResponse) {
  int wakes = 0;
  auto waker = std::make_shared<StateWaker>([&] { ++wakes; });
  SequenceBatcher b("m", WithState(2), waker);
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart));
  auto d = Form(b);
  std::shared_ptr<SequenceState> state = d.batch[0]->sequence_state;
  ASSERT_NE(state, nullptr);
  state->Await();  // the sender has it: the batch ends, its responses are still to come
  ASSERT_TRUE(RunBatch(b, d, {}).ok());
  b.Add(rq.Make(1, 0));
  b.Add(rq.Make(2, kSequenceStart));
  d = Form(b);  // sequence 1 waits; sequence 2 runs beside a padding row
  ASSERT_EQ(d.batch.size(), 2u);
  EXPECT_TRUE(d.batch[0]->padding);
  EXPECT_EQ(d.batch[1]->correlation_id.number, 2u);
  ASSERT_TRUE(RunBatch(b, d, {0, 0}).ok());
  EXPECT_TRUE(Form(b).batch.empty());

  // Two responses carry the state; the last one before the final is what the next sees.
  for (int32_t value : {5, 7}) {
    auto bytes = std::make_shared<std::string>(Int32Bytes({value}));
    OutputTensor out;
    out.name = "OUTPUT_STATE";
    out.dtype = DataType::kInt32;
    out.shape = {1, 1};
    out.memory = bytes;
    out.data = reinterpret_cast<const uint8_t*>(bytes->data());
    out.byte_size = 4;
    state->UpdateFrom({out});
  }
  EXPECT_EQ(wakes, 0);
  state->Settle();  // the final response
  EXPECT_EQ(wakes, 1);
  d = Form(b);
  ASSERT_EQ(d.batch.size(), 1u);
  EXPECT_EQ(StateIn(*d.batch[0]), 7);
  ASSERT_TRUE(RunBatch(b, d, {7}).ok());

  // A START of the sequence does not wait for the request before it.
  d.batch[0]->sequence_state->Await();
  b.Add(rq.Make(1, kSequenceStart));
  d = Form(b);
  ASSERT_EQ(d.batch.size(), 1u);
  EXPECT_EQ(StateIn(*d.batch[0]), 0);
  ASSERT_TRUE(RunBatch(b, d, {0}).ok());
  waker->Cut();  // what settles after the scheduler has gone wakes nothing
  state->Settle();
  EXPECT_EQ(wakes, 1);
}

TEST(SequenceState, AnInFlightRequestKeepsItsStateAfterTheSlotIsReleased) {
  SequenceBatcher b("m", WithState(1, 1));
  Requests rq;
  b.Add(rq.Make(1, kSequenceStart | kSequenceEnd));
  auto d = Form(b);
  std::shared_ptr<SequenceState> held = d.batch[0]->sequence_state;
  ASSERT_NE(held, nullptr);
  EXPECT_EQ(b.StateCount(), 0u);  // the slot let go at END; the request still holds it
  b.Add(rq.Make(2, kSequenceStart));  // takes the slot while the first request runs
  ASSERT_TRUE(RunBatch(b, d, {50}).ok());
  d = Form(b);
  EXPECT_EQ(StateIn(*d.batch[0]), 1);  // the new sequence starts fresh
  ASSERT_TRUE(RunBatch(b, d, {2}).ok());
}

namespace {

// An accumulator run by a real scheduler's threads: OUTPUT_STATE = INPUT + INPUT_STATE per
// row, taken back as the Model does; what each sequence's requests saw, in order.
class Accumulator : public Executor {
 public:
  Status Execute(Batch& batch) override {
    const TensorView* value = nullptr;
    const TensorView* state = nullptr;
    for (const TensorView& t : batch.inputs) {
      if (t.name == "INPUT") value = &t;
      if (t.name == "INPUT_STATE") state = &t;
    }
    if (value == nullptr || state == nullptr || value->byte_size != state->byte_size) {
      return Status(StatusCode::kInternal, "missing or mismatched inputs");
    }
    const size_t rows = value->byte_size / 4;
    std::vector<int32_t> sums(rows);
    for (size_t i = 0; i < rows; ++i) {
      int32_t a, b;
      std::memcpy(&a, value->data + 4 * i, 4);
      std::memcpy(&b, state->data + 4 * i, 4);
      sums[i] = a + b;
    }
    auto bytes = std::make_shared<std::string>(Int32Bytes(sums));
    BatchOutputs outputs;
    OutputTensor out;
    out.name = "OUTPUT_STATE";
    out.dtype = DataType::kInt32;
    out.shape = {static_cast<int64_t>(rows), 1};
    out.memory = bytes;
    out.data = reinterpret_cast<const uint8_t*>(bytes->data());
    out.byte_size = bytes->size();
    outputs.batch.push_back(out);
    Status status = UpdateSequenceStates("m", batch, outputs);
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < rows; ++i) {
      const InferRequest& r = *batch.requests[i];
      if (!r.padding) seen_[r.correlation_id.number].push_back(sums[i]);
    }
    return status;
  }
  void Reject(const std::vector<InferRequest*>& requests, const Status&) override {
    std::lock_guard<std::mutex> lock(mutex_);
    rejected_ += requests.size();
  }
  std::mutex mutex_;
  std::map<uint64_t, std::vector<int32_t>> seen_;
  size_t rejected_ = 0;
};

}  // namespace

TEST(SequenceState, SequencesOnTheSchedulersThreadsEachGetTheirRunningSum) {
  auto executor = std::make_shared<Accumulator>();
  SchedulerOptions options;
  options.model_name = "m";
  options.sequence_batching = true;
  options.sequence = WithState(4);
  std::unique_ptr<Scheduler> s;
  ASSERT_OK(Scheduler::Create(options, executor, &s));
  constexpr int kSequences = 6, kSteps = 40;  // more sequences than slots: some wait
  std::vector<int32_t> values(kSequences * kSteps);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<int32_t>(i % 7 + 1);
  std::vector<std::thread> clients;
  for (int k = 0; k < kSequences; ++k) {
    clients.emplace_back([&, k] {
      for (int step = 0; step < kSteps; ++step) {
        auto r = std::make_unique<InferRequest>();
        r->correlation_id.number = k + 1;
        r->flags = (step == 0 ? kSequenceStart : 0) | (step == kSteps - 1 ? kSequenceEnd : 0);
        TensorView t;
        t.name = "INPUT";
        t.dtype = DataType::kInt32;
        t.shape = {1, 1};
        t.data = reinterpret_cast<const uint8_t*>(&values[k * kSteps + step]);
        t.byte_size = 4;
        r->inputs.push_back(t);
        EXPECT_OK(s->Enqueue(r));
      }
    });
  }
  for (auto& t : clients) t.join();
  s->Stop();
  EXPECT_EQ(executor->rejected_, 0u);
  for (int k = 0; k < kSequences; ++k) {
    std::vector<int32_t> expected;
    int32_t sum = 0;
    for (int step = 0; step < kSteps; ++step) expected.push_back(sum += values[k * kSteps + step]);
    EXPECT_EQ(executor->seen_[k + 1], expected) << "sequence " << k + 1;
  }
}

TEST(SequenceState, BytesStatesAreSplitByElement) {
  auto specs = std::make_shared<std::vector<StateSpec>>(1);
  (*specs)[0].input_name = "IN";
  (*specs)[0].output_name = "OUT";
  (*specs)[0].dtype = DataType::kBytes;
  (*specs)[0].initial_shape = {1, 1};
  (*specs)[0].initial = std::make_shared<const std::string>(4, '\0');  // one empty string
  Batch batch;
  for (int i = 0; i < 2; ++i) {
    batch.requests.push_back(std::make_unique<InferRequest>());
    batch.requests.back()->sequence_state = std::make_shared<SequenceState>(specs);
  }
  auto element = [](const std::string& text) {
    const uint32_t length = static_cast<uint32_t>(text.size());
    return std::string(reinterpret_cast<const char*>(&length), 4) + text;
  };
  auto bytes = std::make_shared<std::string>(element("ab") + element("cde"));
  BatchOutputs outputs;
  OutputTensor out;
  out.name = "OUT";
  out.dtype = DataType::kBytes;
  out.shape = {2, 1};
  out.memory = bytes;
  out.data = reinterpret_cast<const uint8_t*>(bytes->data());
  out.byte_size = bytes->size();
  outputs.batch.push_back(out);
  ASSERT_TRUE(UpdateSequenceStates("m", batch, outputs).ok());
  const char* expected[] = {"ab", "cde"};
  for (int i = 0; i < 2; ++i) {
    InferRequest next;
    batch.requests[i]->sequence_state->AddInputs(&next);
    ASSERT_EQ(next.inputs.size(), 1u);
    EXPECT_EQ(next.inputs[0].shape, (std::vector<int64_t>{1, 1}));
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(next.inputs[0].data),
                          next.inputs[0].byte_size),
              element(expected[i]));
  }
  out.shape = {2, 1000000};  // more elements than bytes: refused, not walked
  outputs.batch = {out};
  EXPECT_FALSE(UpdateSequenceStates("m", batch, outputs).ok());
}
