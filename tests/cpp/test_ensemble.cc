// EnsembleScheduler: steps handed to the composing models found in the ModelTable, outputs
// passed on without copies, what a request carries (sequence, parameters) seen by every step,
// step errors with Triton's prefix, and statistics.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "ensemble.h"
#include "host_memory.h"
#include "model.h"
#include "model_table.h"
#include "status_matchers.h"

using namespace pyserve;

namespace {

TensorSpec Fp32(const std::string& name) {
  TensorSpec t;
  t.name = name;
  t.dtype = DataType::kFp32;
  t.dims = {4};
  return t;
}

// Y = X + 1, recording what each request carried and where its input lay; X[0] < 0 fails the
// batch, X[0] == 99 answers without Y.
class AddOne : public BatchCompute {
 public:
  Status Compute(Batch& batch, BatchOutputs* outputs) override {
    const auto& request = *batch.requests[0];
    const float* x = reinterpret_cast<const float*>(batch.inputs[0].data);
    {
      std::lock_guard<std::mutex> lock(mutex);
      inputs_seen.push_back(batch.inputs[0].data);
      correlation_ids.push_back(request.correlation_id.text);
      flags.push_back(request.flags);
      parameters.push_back(request.parameters.empty() ? "" : request.parameters[0].string_value);
    }
    if (x[0] < 0) return Status(StatusCode::kInternal, "negative input");
    if (x[0] == 99) return Status::OK();
    OutputTensor y;
    y.name = "Y";
    y.dtype = DataType::kFp32;
    y.shape = {4};
    y.byte_size = 16;
    std::shared_ptr<uint8_t> memory = HostMemoryPool::Global().Acquire(16);
    float* out = reinterpret_cast<float*>(memory.get());
    for (int i = 0; i < 4; ++i) out[i] = x[i] + 1;
    y.data = memory.get();
    y.memory = memory;
    {
      std::lock_guard<std::mutex> lock(mutex);
      outputs_made.push_back(y.data);
    }
    outputs->batch.push_back(std::move(y));
    return Status::OK();
  }

  std::mutex mutex;
  std::vector<const uint8_t*> inputs_seen, outputs_made;
  std::vector<std::string> correlation_ids, parameters;
  std::vector<uint32_t> flags;
};

class WaitingSink : public ResponseSink {
 public:
  void Deliver(std::vector<Completion>& completions) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Completion& c : completions) responses_.push_back(std::move(c.response));
    cv_.notify_all();
  }
  InferResponse Next() {
    std::unique_lock<std::mutex> lock(mutex_);
    EXPECT_TRUE(cv_.wait_for(lock, std::chrono::seconds(30), [&] { return !responses_.empty(); }));
    if (responses_.empty()) return InferResponse{Status(StatusCode::kInternal, "no response"), {}};
    InferResponse response = std::move(responses_.front());
    responses_.erase(responses_.begin());
    return response;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<InferResponse> responses_;
};

struct Fixture {
  std::shared_ptr<ModelTable> table = std::make_shared<ModelTable>();
  std::shared_ptr<AddOne> compute = std::make_shared<AddOne>();
  std::shared_ptr<Model> step_model, ensemble;

  // `model_namespace`: the step model is published in that namespace only (as with
  // --model-namespacing, its name held by several), and the steps are resolved there.
  explicit Fixture(const std::string& model_namespace = "") {
    ModelSpec spec;
    spec.name = "add_one";
    spec.version = 1;
    spec.inputs = {Fp32("X")};
    spec.outputs = {Fp32("Y")};
    SchedulerOptions options;
    options.model_name = spec.name;
    EXPECT_OK(Model::Create(spec, options, compute, &step_model));
    table->PublishIn(model_namespace, "add_one", {step_model});

    ModelSpec ensemble_spec;
    ensemble_spec.name = "twice";
    ensemble_spec.version = 1;
    ensemble_spec.inputs = {Fp32("IN")};
    ensemble_spec.outputs = {Fp32("OUT")};
    std::vector<EnsembleStep> steps = {
        {"add_one", -1, {{"X", "IN"}}, {{"Y", "mid"}}, model_namespace},
        {"add_one", 1, {{"X", "mid"}}, {{"Y", "OUT"}}, model_namespace}};
    std::weak_ptr<const ModelTable> models = table;
    EXPECT_OK(Model::Create(
        ensemble_spec,
        [&](std::shared_ptr<ModelResponder> responder, std::unique_ptr<RequestScheduler>* out) {
          return EnsembleScheduler::Create(ensemble_spec, steps, models, responder, out);
        },
        &ensemble));
  }

  ~Fixture() {
    ensemble->Stop();
    step_model->Stop();
  }

  Status Send(WaitingSink& sink, const float (&values)[4]) {
    auto request = std::make_unique<InferRequest>();
    request->sink = &sink;
    request->correlation_id.is_text = true;
    request->correlation_id.text = "seq-7";
    request->flags = kSequenceStart | kSequenceEnd;
    Parameter p;
    p.key = "note";
    p.string_value = "kept";
    request->parameters.push_back(p);
    request->inputs.push_back(TensorView{"IN", DataType::kFp32, {4},
                                         reinterpret_cast<const uint8_t*>(values), 16});
    return ensemble->Submit(request);
  }
};

}  // namespace

TEST(Ensemble, RunsItsStepsAndPassesOutputsOnWithoutCopies) {
  Fixture f;
  WaitingSink sink;
  const float values[4] = {1, 2, 3, 4};
  ASSERT_OK(f.Send(sink, values));
  InferResponse response = sink.Next();
  ASSERT_OK(response.status);
  ASSERT_EQ(response.outputs.size(), 1u);
  EXPECT_EQ(response.outputs[0].name, "OUT");
  const float* out = reinterpret_cast<const float*>(response.outputs[0].data);
  EXPECT_EQ(std::vector<float>(out, out + 4), (std::vector<float>{3, 4, 5, 6}));

  std::lock_guard<std::mutex> lock(f.compute->mutex);
  ASSERT_EQ(f.compute->inputs_seen.size(), 2u);
  // The first step read the request's bytes, the second the first step's output memory, and
  // the ensemble answered with the second step's output memory.
  EXPECT_EQ(f.compute->inputs_seen[0], reinterpret_cast<const uint8_t*>(values));
  EXPECT_EQ(f.compute->inputs_seen[1], f.compute->outputs_made[0]);
  EXPECT_EQ(response.outputs[0].data, f.compute->outputs_made[1]);
  // Each step carried the request's sequence and parameters.
  EXPECT_EQ(f.compute->correlation_ids, (std::vector<std::string>{"seq-7", "seq-7"}));
  EXPECT_EQ(f.compute->flags, (std::vector<uint32_t>{3, 3}));
  EXPECT_EQ(f.compute->parameters, (std::vector<std::string>{"kept", "kept"}));
}

// --model-namespacing: steps resolved in a namespace find their model there, though requests
// by its bare name would not.
TEST(Ensemble, StepsResolvedInANamespaceFindTheirModelThere) {
  Fixture f("/repo/a");
  ASSERT_EQ(f.table->Find("add_one", ""), nullptr);
  WaitingSink sink;
  const float values[4] = {1, 2, 3, 4};
  ASSERT_OK(f.Send(sink, values));
  InferResponse response = sink.Next();
  ASSERT_OK(response.status);
  const float* out = reinterpret_cast<const float*>(response.outputs[0].data);
  EXPECT_EQ(std::vector<float>(out, out + 4), (std::vector<float>{3, 4, 5, 6}));

  f.table->PublishIn("/repo/a", "add_one", {});  // unloaded there: the step fails
  ASSERT_OK(f.Send(sink, values));
  EXPECT_EQ(sink.Next().status.code(), StatusCode::kUnavailable);
}

TEST(Ensemble, StepErrorsCarryTheEnsemblesName) {
  Fixture f;
  WaitingSink sink;
  const float values[4] = {-5, 0, 0, 0};
  ASSERT_OK(f.Send(sink, values));
  InferResponse response = sink.Next();
  EXPECT_EQ(response.status.code(), StatusCode::kInternal);
  EXPECT_EQ(response.status.message(), "in ensemble 'twice', negative input");
}

TEST(Ensemble, AStepMissingAnOutputFailsTheEnsemble) {
  Fixture f;
  WaitingSink sink;
  const float values[4] = {98, 0, 0, 0};  // the second step sees 99 and answers without Y
  ASSERT_OK(f.Send(sink, values));
  InferResponse response = sink.Next();
  EXPECT_EQ(response.status.code(), StatusCode::kInternal);
  EXPECT_EQ(response.status.message(),
            "in ensemble 'twice', model 'add_one' did not produce output(s) ['Y']");
}

TEST(Ensemble, AnUnloadedStepModelFailsTheRequest) {
  Fixture f;
  f.table->Publish("add_one", {});
  WaitingSink sink;
  const float values[4] = {1, 2, 3, 4};
  ASSERT_OK(f.Send(sink, values));
  InferResponse response = sink.Next();
  EXPECT_EQ(response.status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(response.status.message(),
            "in ensemble 'twice', Request for unknown model: 'add_one' has no available versions");
}

TEST(Ensemble, StatisticsCountEnsembleRequestsAndSumTheirSteps) {
  Fixture f;
  WaitingSink sink;
  const float values[4] = {1, 2, 3, 4};
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK(f.Send(sink, values));
    ASSERT_OK(sink.Next().status);
  }
  const ModelStats stats = f.ensemble->scheduler().Statistics();
  EXPECT_EQ(stats.success.count, 3u);
  EXPECT_EQ(stats.inference_count, 3u);
  EXPECT_EQ(stats.execution_count, 3u);
  EXPECT_EQ(stats.compute_infer.count, 3u);
  EXPECT_EQ(f.ensemble->Counts().success, 3u);
  EXPECT_TRUE(f.ensemble->Stop());
  EXPECT_EQ(f.ensemble->scheduler().InflightCount(), 0u);
}

TEST(Ensemble, RefusesRequestsOnceStopped) {
  Fixture f;
  EXPECT_TRUE(f.ensemble->Stop());
  WaitingSink sink;
  const float values[4] = {1, 2, 3, 4};
  const Status status = f.Send(sink, values);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(status.message(), "model 'twice' is not accepting requests");
  EXPECT_EQ(f.ensemble->scheduler().InflightCount(), 0u);
}

namespace {

// A decoupled step: three responses per request, Y = X + 10 i, sent from a thread of its own
// after execute has returned, then the final flag alone.
class FanOut : public BatchCompute {
 public:
  Status Compute(Batch& batch, BatchOutputs*) override {
    for (size_t r = 0; r < batch.requests.size(); ++r) {
      const float* x = reinterpret_cast<const float*>(batch.requests[r]->inputs[0].data);
      std::vector<float> base(x, x + 4);
      threads.emplace_back([sender = batch.senders[r], base] {
        for (int i = 0; i < 3; ++i) {
          auto memory = std::shared_ptr<float>(new float[4], std::default_delete<float[]>());
          for (int k = 0; k < 4; ++k) memory.get()[k] = base[k] + 10 * i;
          OutputTensor y{"Y", DataType::kFp32, {4}, memory,
                         reinterpret_cast<const uint8_t*>(memory.get()), 16, false};
          std::vector<OutputTensor> outputs{y};
          EXPECT_OK(sender->Send(&outputs, Status::OK(), false));
        }
        EXPECT_OK(sender->Send(nullptr, Status::OK(), true));
      });
    }
    return Status::OK();
  }
  ~FanOut() override {
    for (auto& t : threads) t.join();
  }
  std::vector<std::thread> threads;
};

class CompletionSink : public ResponseSink {
 public:
  void Deliver(std::vector<Completion>& completions) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Completion& c : completions) completions_.push_back(std::move(c));
    cv_.notify_all();
  }
  std::vector<Completion> UntilFinal() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_for(lock, std::chrono::seconds(30), [&] {
      return !completions_.empty() && completions_.back().final;
    });
    return std::move(completions_);
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Completion> completions_;
};

}  // namespace

TEST(Ensemble, ADecoupledStepsResponsesEachRunTheStepsAfterIt) {
  auto table = std::make_shared<ModelTable>();
  std::shared_ptr<Model> fan, add_one, ensemble;
  ModelSpec fan_spec;
  fan_spec.name = "fan";
  fan_spec.version = 1;
  fan_spec.inputs = {Fp32("X")};
  fan_spec.outputs = {Fp32("Y")};
  fan_spec.decoupled = true;
  SchedulerOptions options;
  options.model_name = "fan";
  auto fan_compute = std::make_shared<FanOut>();
  ASSERT_OK(Model::Create(fan_spec, options, fan_compute, &fan));
  ModelSpec add_spec = fan_spec;
  add_spec.name = options.model_name = "add_one";
  add_spec.decoupled = false;
  ASSERT_OK(Model::Create(add_spec, options, std::make_shared<AddOne>(), &add_one));
  table->Publish("fan", {fan});
  table->Publish("add_one", {add_one});
  ModelSpec spec;
  spec.name = "fan_then_add";
  spec.version = 1;
  spec.inputs = {Fp32("IN")};
  spec.outputs = {Fp32("OUT")};
  spec.decoupled = true;  // as the shell marks an ensemble with a decoupled step
  std::vector<EnsembleStep> steps = {{"fan", -1, {{"X", "IN"}}, {{"Y", "mid"}}},
                                     {"add_one", -1, {{"X", "mid"}}, {{"Y", "OUT"}}}};
  std::weak_ptr<const ModelTable> models = table;
  ASSERT_OK(Model::Create(
      spec,
      [&](std::shared_ptr<ModelResponder> responder, std::unique_ptr<RequestScheduler>* out) {
        return EnsembleScheduler::Create(spec, steps, models, responder, out);
      },
      &ensemble));

  CompletionSink sink;
  const float values[4] = {1, 2, 3, 4};
  auto request = std::make_unique<InferRequest>();
  request->sink = &sink;
  request->inputs.push_back(TensorView{"IN", DataType::kFp32, {4},
                                       reinterpret_cast<const uint8_t*>(values), 16});
  ASSERT_OK(ensemble->Submit(request));
  std::vector<Completion> completions = sink.UntilFinal();
  ASSERT_EQ(completions.size(), 4u);  // one response per fanned-out value, then the final flag
  std::vector<float> firsts;
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_OK(completions[i].response.status);
    EXPECT_FALSE(completions[i].final);
    ASSERT_EQ(completions[i].response.outputs.size(), 1u);
    const float* out = reinterpret_cast<const float*>(completions[i].response.outputs[0].data);
    EXPECT_EQ(out[3] - out[0], 3);
    firsts.push_back(out[0]);
  }
  std::sort(firsts.begin(), firsts.end());
  EXPECT_EQ(firsts, (std::vector<float>{2, 12, 22}));  // X + 10 i + 1
  EXPECT_TRUE(completions[3].final && completions[3].empty);
  ensemble->Stop();
  fan->Stop();
  add_one->Stop();
  EXPECT_EQ(ensemble->Counts().success, 1u);
}
