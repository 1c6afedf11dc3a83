// ModelTable: resolving a request's model, and the hand-over when a reload retires the version
// a frontend found before it submitted; the gRPC probes answered from it; and a Model whose
// sink fails.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "model.h"
#include "model_table.h"
#include "probes.h"
#include "status_matchers.h"

using namespace pyserve;

namespace {

// Answers every batch with no outputs (the models below declare none).
class NoOutputs : public BatchCompute {
 public:
  Status Compute(Batch&, BatchOutputs*) override { return Status::OK(); }
};

// Counts the responses it is handed, by status.
class CountingSink : public ResponseSink {
 public:
  void Deliver(std::vector<Completion>& completions) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Completion& c : completions) (c.response.status.ok() ? ok_ : failed_) += 1;
    cv_.notify_all();
  }
  // True once `count` responses have come, all OK.
  bool WaitForOk(int count) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_for(lock, std::chrono::seconds(30), [&] { return ok_ + failed_ >= count; });
    return ok_ == count && failed_ == 0;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int ok_ = 0, failed_ = 0;
};

std::shared_ptr<Model> Version(int64_t version) {
  ModelSpec spec;
  spec.name = "m";
  spec.version = version;
  SchedulerOptions options;
  options.model_name = "m";
  std::shared_ptr<Model> model;
  EXPECT_OK(Model::Create(spec, options, std::make_shared<NoOutputs>(), &model));
  return model;
}

std::unique_ptr<InferRequest> Request(ResponseSink* sink) {
  auto request = std::make_unique<InferRequest>();
  request->sink = sink;
  return request;
}

}  // namespace

TEST(ModelTable, FindsPublishedVersions) {
  ModelTable table;
  auto one = Version(1), two = Version(2);
  table.Publish("m", {one, two});
  EXPECT_EQ(table.Find("m", ""), two);  // the latest
  EXPECT_EQ(table.Find("m", "1"), one);
  EXPECT_EQ(table.Find("m", "3"), nullptr);
  EXPECT_EQ(table.Find("m", "x"), nullptr);
  EXPECT_EQ(table.Find("m", "0"), nullptr);  // not a version (the shell words the refusal)
  EXPECT_EQ(table.Find("other", ""), nullptr);
  table.Publish("m", {});
  EXPECT_EQ(table.Find("m", ""), nullptr);
}

// --model-namespacing: a namespace's models are found within it only, never by a request's
// bare name (the shell publishes that only while one namespace holds the name); the empty
// namespace is the bare name's.
TEST(ModelTable, NamespacesAreSeparateFromRequestNames) {
  ModelTable table;
  auto in_a = Version(1), in_b = Version(1), bare = Version(2);
  table.PublishIn("/repo/a", "m", {in_a});
  table.PublishIn("/repo/b", "m", {in_b});
  EXPECT_EQ(table.Find("m", ""), nullptr);
  EXPECT_EQ(table.FindIn("/repo/a", "m", ""), in_a);
  EXPECT_EQ(table.FindIn("/repo/b", "m", "1"), in_b);
  EXPECT_EQ(table.FindIn("/repo/c", "m", ""), nullptr);
  EXPECT_EQ(table.FindIn("/repo/a", "other", ""), nullptr);

  table.PublishIn("", "m", {bare});
  EXPECT_EQ(table.Find("m", ""), bare);
  EXPECT_EQ(table.FindIn("", "m", ""), bare);
  EXPECT_EQ(table.FindIn("/repo/a", "m", ""), in_a);

  table.PublishIn("/repo/a", "m", {});
  EXPECT_EQ(table.FindIn("/repo/a", "m", ""), nullptr);
  EXPECT_EQ(table.FindIn("/repo/b", "m", ""), in_b);
}

// An ensemble's step resolved in a namespace follows a reload of its model there.
TEST(ModelTable, SubmitInHandsARetiredVersionsRequestToItsSuccessorInItsNamespace) {
  ModelTable table;
  CountingSink sink;
  auto old_version = Version(1), new_version = Version(1), other = Version(1);
  table.PublishIn("/repo/a", "m", {old_version});
  table.PublishIn("/repo/b", "m", {other});
  std::shared_ptr<Model> found = table.FindIn("/repo/a", "m", "");
  ASSERT_EQ(found, old_version);

  table.PublishIn("/repo/a", "m", {new_version});
  old_version->Stop();
  auto request = Request(&sink);
  EXPECT_OK(table.SubmitIn("/repo/a", "m", "", &found, request));
  EXPECT_EQ(found, new_version);
  EXPECT_TRUE(sink.WaitForOk(1));
  EXPECT_EQ(new_version->Counts().success, 1u);
  EXPECT_EQ(other->Counts().success, 0u);
}

// A frontend found version 1; a reload then published version 2 and stopped version 1 before
// the frontend submitted. The request goes to version 2 instead of failing UNAVAILABLE.
TEST(ModelTable, SubmitHandsARetiredVersionsRequestToItsSuccessor) {
  ModelTable table;
  CountingSink sink;
  auto old_version = Version(1), new_version = Version(2);
  table.Publish("m", {old_version});
  std::shared_ptr<Model> found = table.Find("m", "");
  ASSERT_EQ(found, old_version);

  table.Publish("m", {new_version});
  old_version->Stop();
  auto request = Request(&sink);
  EXPECT_OK(table.Submit("m", "", &found, request));
  EXPECT_EQ(found, new_version);
  EXPECT_TRUE(sink.WaitForOk(1));
  EXPECT_EQ(new_version->Counts().success, 1u);
}

// Unloaded, not replaced: the retired version's refusal stands, and the request stays with
// the caller.
TEST(ModelTable, SubmitToAnUnloadedModelIsRefused) {
  ModelTable table;
  CountingSink sink;
  auto only = Version(1);
  table.Publish("m", {only});
  std::shared_ptr<Model> found = table.Find("m", "");
  table.Publish("m", {});
  only->Stop();
  auto request = Request(&sink);
  const Status status = table.Submit("m", "", &found, request);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.message();
  EXPECT_NE(request, nullptr);
  EXPECT_EQ(found, only);
}

namespace {

// A sink that fails to deliver: it throws, as an encoder that cannot allocate would.
class ThrowingSink : public ResponseSink {
 public:
  void Deliver(std::vector<Completion>&) override { throw std::length_error("response too large"); }
};

}  // namespace

// A sink's error stays on the model's worker thread: the model goes on answering others (an
// exception escaping a native thread ended the process).
TEST(Model, ASinkThatThrowsDoesNotStopTheModel) {
  auto model = Version(1);
  ThrowingSink throwing;
  CountingSink counting;
  for (int i = 0; i < 3; ++i) {
    auto failing = Request(&throwing);
    ASSERT_OK(model->Submit(failing));
    auto request = Request(&counting);
    ASSERT_OK(model->Submit(request));
  }
  EXPECT_TRUE(counting.WaitForOk(3));
  model->Stop();
}

// Liveness and readiness answered from the table (the native gRPC frontend's probes).
TEST(ModelTable, AnswersProbes) {
  using grpcfront::ProbeResponse;
  const std::string yes("\x08\x01", 2), no;
  const std::string service = "/inference.GRPCInferenceService/";
  ModelTable table;
  table.Publish("m", {Version(2)});
  EXPECT_EQ(ProbeResponse(service + "ServerLive", "", table), yes);
  EXPECT_EQ(ProbeResponse(service + "ServerReady", "", table), no);  // until the shell says
  EXPECT_EQ(ProbeResponse("/grpc.health.v1.Health/Check", "", table), std::string("\x08\x02", 2));
  table.SetServerReady(true);
  EXPECT_EQ(ProbeResponse(service + "ServerReady", "", table), yes);
  EXPECT_EQ(ProbeResponse("/grpc.health.v1.Health/Check", "", table), yes);

  // ModelReadyRequest: name = 1, version = 2.
  auto ready = [&](const std::string& request) {
    return ProbeResponse(service + "ModelReady", request, table);
  };
  EXPECT_EQ(ready(std::string("\x0a\x01m", 3)), yes);                    // the latest
  EXPECT_EQ(ready(std::string("\x0a\x01m\x12\x01" "2", 6)), yes);        // version 2
  EXPECT_EQ(ready(std::string("\x0a\x01m\x12\x02" "02", 7)), yes);       // as int("02")
  EXPECT_EQ(ready(std::string("\x0a\x01m\x12\x01" "1", 6)), no);
  EXPECT_EQ(ready(std::string("\x0a\x01x", 3)), no);
  EXPECT_EQ(ready(std::string("\x0a\x01m\x12\x02+2", 7)), std::nullopt);  // the shell reads it
  EXPECT_EQ(ready(std::string("\x0a\x05m", 3)), std::nullopt);           // does not parse
  EXPECT_EQ(ready(std::string("\x0a\x01\xff", 3)), std::nullopt);         // not UTF-8
  EXPECT_EQ(ProbeResponse(service + "ModelMetadata", "", table), std::nullopt);
  table.Publish("m", {});
  EXPECT_EQ(ready(std::string("\x0a\x01m", 3)), no);
}
