// The Tracer: Triton's sampling rules (rate, count, a traceparent forcing a sample in
// OpenTelemetry mode), records handed over when their last holder lets go, and the core's
// stamps of a request that runs through a scheduler.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "scheduler.h"
#include "status_matchers.h"
#include "trace.h"

using namespace pyserve;

namespace {

constexpr char kParent[] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

class NoopExecutor : public Executor {
 public:
  Status Execute(Batch&) override { return Status::OK(); }
  void Reject(const std::vector<InferRequest*>&, const Status&) override {}
};

// Each test starts from tracing off and an empty queue of finished records.
class TracerTest : public ::testing::Test {
 protected:
  void SetUp() override { Reset(); }
  void TearDown() override { Reset(); }
  static void Reset() {
    Tracer::Get().Configure("", TraceSampling{});
    Tracer::Get().Forget("m");
    Tracer::Get().Drain(0);
  }
  static int SampledOf(const std::string& model, int requests, std::string_view parent = {}) {
    int sampled = 0;
    for (int i = 0; i < requests; ++i) sampled += Tracer::Get().Sample(model, 1, "", parent) != nullptr;
    return sampled;
  }
};

TEST_F(TracerTest, OffSamplesNothingAndIsInactive) {
  EXPECT_FALSE(Tracer::Active());
  EXPECT_EQ(SampledOf("m", 100), 0);
}

TEST_F(TracerTest, RateSamplesOneOfEveryRateAndCountLimits) {
  Tracer::Get().Configure("", TraceSampling{1, true, 10, -1, false});
  EXPECT_TRUE(Tracer::Active());
  EXPECT_EQ(SampledOf("m", 100), 10);
  Tracer::Get().Configure("", TraceSampling{2, true, 1, 3, false});
  EXPECT_EQ(SampledOf("m", 100), 3);
  EXPECT_EQ(Tracer::Get().Count(""), 0);
}

TEST_F(TracerTest, ModelSettingsOverrideTheGlobalOne) {
  Tracer::Get().Configure("m", TraceSampling{3, true, 1, -1, false});
  EXPECT_TRUE(Tracer::Active());
  EXPECT_EQ(SampledOf("m", 5), 5);
  EXPECT_EQ(SampledOf("other", 5), 0);
  Tracer::Get().Forget("m");
  EXPECT_FALSE(Tracer::Active());
  EXPECT_EQ(SampledOf("m", 5), 0);
}

TEST_F(TracerTest, RateZeroTracesOnlyPropagatedContextsInOpenTelemetryMode) {
  Tracer::Get().Configure("", TraceSampling{4, true, 0, -1, true});
  EXPECT_EQ(SampledOf("m", 10), 0);
  EXPECT_EQ(SampledOf("m", 10, kParent), 10);
  EXPECT_EQ(SampledOf("m", 10, "00-00000000000000000000000000000000-b7ad6b7169203331-01"), 0);
  Tracer::Get().Configure("", TraceSampling{5, true, 0, -1, false});  // Triton mode
  EXPECT_EQ(SampledOf("m", 10, kParent), 0);
}

TEST_F(TracerTest, RecordsAreDrainedOnceReleased) {
  Tracer::Get().Configure("", TraceSampling{6, true, 1, -1, true});
  auto record = Tracer::Get().Sample("m", 2, "req", kParent);
  ASSERT_NE(record, nullptr);
  record->Stamp("REQUEST_START", 10);
  EXPECT_TRUE(Tracer::Get().Drain(0).empty());  // still held
  const uint64_t id = record->id;
  record.reset();
  auto drained = Tracer::Get().Drain(0);
  ASSERT_EQ(drained.size(), 1u);
  EXPECT_EQ(drained[0]->id, id);
  EXPECT_EQ(drained[0]->setting, 6u);
  EXPECT_EQ(drained[0]->model_version, 2);
  EXPECT_EQ(drained[0]->request_id, "req");
  EXPECT_EQ(drained[0]->traceparent, kParent);
  EXPECT_EQ(drained[0]->Timestamps().size(), 1u);
}

TEST_F(TracerTest, TheSchedulerStampsTheBatchInOrder) {
  Tracer::Get().Configure("", TraceSampling{7, true, 1, -1, false, true});
  SchedulerOptions options;
  options.model_name = "m";
  std::unique_ptr<Scheduler> s;
  ASSERT_OK(Scheduler::Create(options, std::make_shared<NoopExecutor>(), &s));
  const int32_t data[2] = {7, 8};
  auto request = std::make_unique<InferRequest>();
  request->inputs.push_back({"INPUT0", DataType::kInt32, {1, 2},
                             reinterpret_cast<const uint8_t*>(data), sizeof(data)});
  request->trace = Tracer::Get().Sample("m", 1, "");
  ASSERT_NE(request->trace, nullptr);
  request->trace->Stamp("REQUEST_START", SteadyNowNs());
  ASSERT_OK(s->Enqueue(request));
  std::vector<std::unique_ptr<TraceRecord>> drained;
  for (int i = 0; i < 300 && drained.empty(); ++i) drained = Tracer::Get().Drain(100);
  s->Stop();
  ASSERT_EQ(drained.size(), 1u);
  std::vector<std::string> names;
  uint64_t previous = 0;
  for (const auto& [name, ns] : drained[0]->Timestamps()) {
    names.push_back(name);
    EXPECT_GE(ns, previous) << name;
    previous = ns;
  }
  EXPECT_EQ(names, (std::vector<std::string>{"REQUEST_START", "QUEUE_START", "COMPUTE_START",
                                              "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
                                              "COMPUTE_END", "REQUEST_END"}));
  // TENSORS level: the input as queued and as the backend got it, copied.
  const auto tensors = drained[0]->Tensors();
  ASSERT_EQ(tensors.size(), 2u);
  EXPECT_STREQ(tensors[0].activity, "TENSOR_QUEUE_INPUT");
  EXPECT_STREQ(tensors[1].activity, "TENSOR_BACKEND_INPUT");
  EXPECT_EQ(tensors[1].name, "INPUT0");
  EXPECT_EQ(tensors[1].shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(tensors[1].data, std::string(reinterpret_cast<const char*>(data), sizeof(data)));
}

TEST(Traceparent, W3CFormatOnly) {
  EXPECT_TRUE(ValidTraceparent(kParent));
  EXPECT_FALSE(ValidTraceparent(""));
  EXPECT_FALSE(ValidTraceparent("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"));
  EXPECT_FALSE(ValidTraceparent("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
  EXPECT_FALSE(ValidTraceparent("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"));
  EXPECT_FALSE(ValidTraceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x"));
}

}  // namespace
