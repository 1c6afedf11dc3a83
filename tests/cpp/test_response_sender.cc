// Decoupled models: a backend answers through ResponseSenders, any number of responses per
// request from any thread after the batch has ended, then exactly one final completion; the
// request stays in flight until then, and Stop waits for it (or, past its timeout, ends it).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model.h"
#include "response_sender.h"
#include "sequence_state.h"
#include "status_matchers.h"

using namespace pyserve;

namespace {

// Keeps each batch's senders for the test to answer through.
class KeepSenders : public BatchCompute {
 public:
  Status Compute(Batch& batch, BatchOutputs*) override {
    std::lock_guard<std::mutex> lock(mutex_);
    senders_.insert(senders_.end(), batch.senders.begin(), batch.senders.end());
    cv_.notify_all();
    return fail_ ? Status(StatusCode::kInternal, "execute failed") : Status::OK();
  }
  std::shared_ptr<ResponseSender> Take() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_for(lock, std::chrono::seconds(30), [&] { return !senders_.empty(); });
    if (senders_.empty()) return nullptr;
    auto sender = senders_.front();
    senders_.erase(senders_.begin());
    return sender;
  }
  std::atomic<bool> fail_{false};

 protected:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<ResponseSender>> senders_;
};

class RecordingSink : public ResponseSink {
 public:
  void Deliver(std::vector<Completion>& completions) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Completion& c : completions) completions_.push_back(std::move(c));
    cv_.notify_all();
  }
  std::vector<Completion> WaitFor(size_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_for(lock, std::chrono::seconds(30), [&] { return completions_.size() >= count; });
    return completions_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Completion> completions_;
};

OutputTensor Int32(const std::string& name, int32_t value) {
  auto memory = std::make_shared<int32_t>(value);
  OutputTensor t;
  t.name = name;
  t.dtype = DataType::kInt32;
  t.shape = {1};
  t.data = reinterpret_cast<const uint8_t*>(memory.get());
  t.byte_size = 4;
  t.memory = memory;
  return t;
}

int32_t ValueOf(const OutputTensor& t) {
  int32_t v = 0;
  std::memcpy(&v, t.data, 4);
  return v;
}

std::shared_ptr<Model> Decoupled(std::shared_ptr<BatchCompute> compute) {
  ModelSpec spec;
  spec.name = "d";
  spec.version = 1;
  spec.decoupled = true;
  spec.outputs = {{"A", DataType::kInt32, {1}}, {"B", DataType::kInt32, {1}}};
  SchedulerOptions options;
  options.model_name = "d";
  std::shared_ptr<Model> model;
  EXPECT_OK(Model::Create(spec, options, std::move(compute), &model));
  return model;
}

std::unique_ptr<InferRequest> Request(ResponseSink* sink, uint64_t tag,
                                      std::vector<RequestedOutput> outputs = {}) {
  auto request = std::make_unique<InferRequest>();
  request->sink = sink;
  request->id = tag;
  request->outputs = std::move(outputs);
  return request;
}

// Submits one request and takes the sender its batch got.
std::shared_ptr<ResponseSender> SubmitOne(Model& model, KeepSenders& compute, ResponseSink* sink,
                                          uint64_t tag) {
  auto request = Request(sink, tag);
  EXPECT_OK(model.Submit(request));
  auto sender = compute.Take();
  EXPECT_NE(sender, nullptr);
  return sender;
}

}  // namespace

TEST(ResponseSender, ResponsesFromAnotherThreadThenOneFinal) {
  auto compute = std::make_shared<KeepSenders>();
  auto model = Decoupled(compute);
  RecordingSink sink;
  auto request = Request(&sink, 7, {{"B", 0, nullptr}});
  ASSERT_OK(model->Submit(request));
  auto sender = compute->Take();
  ASSERT_NE(sender, nullptr);
  std::thread([sender] {
    for (int i = 0; i < 3; ++i) {
      std::vector<OutputTensor> outputs{Int32("A", -i), Int32("B", i)};
      EXPECT_OK(sender->Send(&outputs, Status::OK(), false));
    }
    EXPECT_OK(sender->Send(nullptr, Status::OK(), true));
  }).join();
  auto completions = sink.WaitFor(4);
  ASSERT_EQ(completions.size(), 4u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(completions[i].tag, 7u);
    EXPECT_FALSE(completions[i].final);
    ASSERT_EQ(completions[i].response.outputs.size(), 1u);  // only what the request asked for
    EXPECT_EQ(completions[i].response.outputs[0].name, "B");
    EXPECT_EQ(ValueOf(completions[i].response.outputs[0]), i);
  }
  EXPECT_TRUE(completions[3].final && completions[3].empty);
  EXPECT_TRUE(model->Stop(5));  // the batch's execute may still be returning
  EXPECT_EQ(model->InflightCount(), 0u);
  EXPECT_EQ(model->Counts().success, 1u);
  // Closed: nothing more goes out.
  std::vector<OutputTensor> late{Int32("A", 0), Int32("B", 0)};
  EXPECT_EQ(sender->Send(&late, Status::OK(), true).message(),
            "Unable to send response. Response sender has been closed.");
  EXPECT_EQ(sink.WaitFor(4).size(), 4u);
}

TEST(ResponseSender, TheRequestIsInFlightUntilItsFinalResponse) {
  auto compute = std::make_shared<KeepSenders>();
  auto model = Decoupled(compute);
  RecordingSink sink;
  auto sender = SubmitOne(*model, *compute, &sink, 1);
  ASSERT_NE(sender, nullptr);
  // 2 until the batch's execute returns: the scheduler and the open sender both count it.
  EXPECT_GE(model->InflightCount(), 1u);
  std::thread stopper([&] { model->Stop(); });  // waits for the final response
  std::vector<OutputTensor> outputs{Int32("A", 1), Int32("B", 2)};
  EXPECT_OK(sender->Send(&outputs, Status::OK(), true));
  stopper.join();
  auto completions = sink.WaitFor(1);
  ASSERT_EQ(completions.size(), 1u);
  EXPECT_TRUE(completions[0].final && !completions[0].empty);
  EXPECT_EQ(completions[0].response.outputs.size(), 2u);  // every output, in config order
}

TEST(ResponseSender, StopPastItsTimeoutEndsOpenRequests) {
  auto compute = std::make_shared<KeepSenders>();
  auto model = Decoupled(compute);
  RecordingSink sink;
  auto sender = SubmitOne(*model, *compute, &sink, 1);
  ASSERT_NE(sender, nullptr);
  EXPECT_TRUE(model->Stop(0.05));
  auto completions = sink.WaitFor(1);
  ASSERT_EQ(completions.size(), 1u);
  EXPECT_TRUE(completions[0].final);
  EXPECT_EQ(completions[0].response.status.code(), StatusCode::kUnavailable);
  EXPECT_TRUE(sender->IsClosed());
}

TEST(ResponseSender, AFailedExecuteOrADroppedSenderEndsTheRequest) {
  auto compute = std::make_shared<KeepSenders>();
  compute->fail_ = true;
  auto model = Decoupled(compute);
  RecordingSink sink;
  auto failed = Request(&sink, 1);
  ASSERT_OK(model->Submit(failed));
  auto completions = sink.WaitFor(1);
  ASSERT_EQ(completions.size(), 1u);
  EXPECT_TRUE(completions[0].final);
  EXPECT_EQ(completions[0].response.status.message(), "execute failed");
  compute->Take().reset();  // the batch's sender, closed already

  compute->fail_ = false;
  auto dropped = Request(&sink, 2);
  ASSERT_OK(model->Submit(dropped));
  compute->Take().reset();  // the backend lets go of it without a final response
  completions = sink.WaitFor(2);
  ASSERT_EQ(completions.size(), 2u);
  EXPECT_EQ(completions[1].tag, 2u);
  EXPECT_TRUE(completions[1].final);
  EXPECT_EQ(completions[1].response.status.code(), StatusCode::kInternal);
  EXPECT_EQ(model->Counts().success, 0u);
}

namespace {

// Keeps each request's sender with the INT32 state the request came with.
class KeepStatefulSenders : public KeepSenders {
 public:
  Status Compute(Batch& batch, BatchOutputs*) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool reschedule = reschedules_ > 0;
    reschedules_ -= reschedule ? 1 : 0;
    batch.reschedule.assign(batch.requests.size(), reschedule);
    for (size_t i = 0; i < batch.requests.size(); ++i) {
      for (const TensorView& t : batch.requests[i]->inputs) {
        if (t.name == "INPUT_STATE" && t.byte_size == 4) {
          int32_t v;
          std::memcpy(&v, t.data, 4);
          seen_.push_back(v);
        }
      }
      if (reschedule) {
        std::vector<OutputTensor> state{Int32("A", 0), Int32("OUTPUT_STATE", state_in_execute_)};
        EXPECT_OK(batch.senders[i]->Send(&state, Status::OK(), false));
      }
      senders_.push_back(batch.senders[i]);
    }
    cv_.notify_all();
    return Status::OK();
  }
  std::vector<int32_t> Seen() {
    std::lock_guard<std::mutex> lock(mutex_);
    return seen_;
  }
  // The next `reschedules_` batches: the backend sends `state_in_execute_` from execute, then
  // releases the requests for RESCHEDULE. Set before the first request.
  int reschedules_ = 0;
  int32_t state_in_execute_ = 0;

 private:
  std::vector<int32_t> seen_;
};

}  // namespace

// Implicit state on a decoupled model: the responses, sent from another thread after the
// batch, carry the state; each request of the sequence, all queued at once, sees what the
// last state-carrying response of the one before it left, sent before its final response.
// A decoupled model with sequence batching and one INT32 state (initially 0).
std::shared_ptr<Model> DecoupledWithState(std::shared_ptr<BatchCompute> compute,
                                          bool iterative = false) {
  ModelSpec spec;
  spec.name = "d";
  spec.version = 1;
  spec.decoupled = true;
  spec.outputs = {{"A", DataType::kInt32, {1}}};
  spec.state_outputs = {{"OUTPUT_STATE", DataType::kInt32, {1}}};
  SchedulerOptions options;
  options.model_name = "d";
  options.sequence_batching = true;
  options.sequence.iterative = iterative;
  StateSpec state;
  state.input_name = "INPUT_STATE";
  state.output_name = "OUTPUT_STATE";
  state.dtype = DataType::kInt32;
  state.initial_shape = {1};
  state.initial = std::make_shared<const std::string>(4, '\0');
  options.sequence.states.push_back(state);
  std::shared_ptr<Model> model;
  EXPECT_OK(Model::Create(spec, options, std::move(compute), &model));
  return model;
}

TEST(ResponseSender, ADecoupledSequenceGoesOnWithTheStateItsResponsesSent) {
  auto compute = std::make_shared<KeepStatefulSenders>();
  auto model = DecoupledWithState(compute);
  ASSERT_NE(model, nullptr);
  RecordingSink sink;
  constexpr int kSteps = 4;
  for (int step = 0; step < kSteps; ++step) {
    auto request = Request(&sink, step);
    request->correlation_id.number = 9;
    request->flags = (step == 0 ? kSequenceStart : 0) | (step == kSteps - 1 ? kSequenceEnd : 0);
    ASSERT_OK(model->Submit(request));
  }
  std::thread answering([&] {
    for (int step = 0; step < kSteps; ++step) {
      auto sender = compute->Take();
      ASSERT_NE(sender, nullptr);
      // A stale state first, then the one that counts, then the final flag alone.
      std::vector<OutputTensor> stale{Int32("A", step), Int32("OUTPUT_STATE", -1)};
      EXPECT_OK(sender->Send(&stale, Status::OK(), false));
      std::vector<OutputTensor> next{Int32("A", step), Int32("OUTPUT_STATE", 10 * (step + 1))};
      EXPECT_OK(sender->Send(&next, Status::OK(), false));
      EXPECT_OK(sender->Send(nullptr, Status::OK(), true));
    }
  });
  answering.join();
  EXPECT_EQ(sink.WaitFor(3 * kSteps).size(), 3u * kSteps);
  EXPECT_EQ(compute->Seen(), (std::vector<int32_t>{0, 10, 20, 30}));
  EXPECT_TRUE(model->Stop(5));
  EXPECT_EQ(model->Counts().success, static_cast<uint64_t>(kSteps));
}

// An iterative sequence on a decoupled model: released for RESCHEDULE, the request's next
// iteration gets the state its responses sent so far, without its final response.
TEST(ResponseSender, AnIterationReleasedForRescheduleHandsOnItsState) {
  auto compute = std::make_shared<KeepStatefulSenders>();
  compute->reschedules_ = 1;
  compute->state_in_execute_ = 5;
  auto model = DecoupledWithState(compute, /*iterative=*/true);
  ASSERT_NE(model, nullptr);
  RecordingSink sink;
  auto request = Request(&sink, 1);  // no correlation ID: the iterative batcher gives one
  ASSERT_OK(model->Submit(request));
  auto sender = compute->Take();
  ASSERT_NE(sender, nullptr);
  auto again = compute->Take();  // the next iteration, through the same sender
  ASSERT_EQ(again, sender);
  EXPECT_OK(sender->Send(nullptr, Status::OK(), true));
  EXPECT_EQ(sink.WaitFor(2).size(), 2u);  // the state response, the final one
  EXPECT_EQ(compute->Seen(), (std::vector<int32_t>{0, 5}));
  EXPECT_TRUE(model->Stop(5));
}
