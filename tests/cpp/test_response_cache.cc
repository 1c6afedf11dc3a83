// The response cache: keys as Triton keys requests (and what they leave out), least recently
// used eviction within the byte size, and a Model that answers a repeated request from it
// without computing.
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
#include "response_cache.h"
#include "status_matchers.h"

using namespace pyserve;

namespace {

// An FP32 input "x" of `values`, shape [n], viewing `values`.
std::unique_ptr<InferRequest> Request(const std::vector<float>& values, ResponseSink* sink = nullptr) {
  auto request = std::make_unique<InferRequest>();
  request->sink = sink;
  TensorView x;
  x.name = "x";
  x.dtype = DataType::kFp32;
  x.shape = {static_cast<int64_t>(values.size())};
  x.data = reinterpret_cast<const uint8_t*>(values.data());
  x.byte_size = values.size() * sizeof(float);
  request->inputs.push_back(x);
  return request;
}

std::vector<OutputTensor> Outputs(size_t byte_size, uint8_t fill) {
  auto memory = std::make_shared<std::vector<uint8_t>>(byte_size, fill);
  OutputTensor y;
  y.name = "y";
  y.dtype = DataType::kUint8;
  y.shape = {static_cast<int64_t>(byte_size)};
  y.memory = memory;
  y.data = memory->data();
  y.byte_size = byte_size;
  return {y};
}

TEST(ResponseCacheKey, CoversModelVersionAndEveryInputsNameDatatypeShapeAndBytes) {
  const std::vector<float> values = {1, 2, 3, 4};
  auto base = Request(values);
  const std::string key = ResponseCache::Key("m", 1, *base);
  EXPECT_EQ(key, ResponseCache::Key("m", 1, *Request(values)));
  EXPECT_NE(key, ResponseCache::Key("other", 1, *base));
  EXPECT_NE(key, ResponseCache::Key("m", 2, *base));
  EXPECT_NE(key, ResponseCache::Key("m", 1, *base, 7));  // another load of the version

  auto renamed = Request(values);
  renamed->inputs[0].name = "z";
  EXPECT_NE(key, ResponseCache::Key("m", 1, *renamed));
  auto retyped = Request(values);
  retyped->inputs[0].dtype = DataType::kInt32;  // the same bytes
  EXPECT_NE(key, ResponseCache::Key("m", 1, *retyped));
  auto reshaped = Request(values);
  reshaped->inputs[0].shape = {2, 2};  // the same bytes
  EXPECT_NE(key, ResponseCache::Key("m", 1, *reshaped));
  const std::vector<float> other = {1, 2, 3, 5};
  EXPECT_NE(key, ResponseCache::Key("m", 1, *Request(other)));
  auto asked = Request(values);
  asked->outputs.push_back(RequestedOutput{"y", 0, nullptr});
  EXPECT_NE(key, ResponseCache::Key("m", 1, *asked));
}

TEST(ResponseCacheKey, LeavesOutParametersAndInputOrder) {
  const std::vector<float> a = {1, 2}, b = {3};
  auto one = Request(a);
  auto two_x = Request(b);
  one->inputs.push_back(two_x->inputs[0]);
  one->inputs.back().name = "w";
  auto swapped = Request(a);
  swapped->inputs.insert(swapped->inputs.begin(), one->inputs.back());
  swapped->parameters.push_back(Parameter{"p", Parameter::Kind::kInt, false, 7, 0, ""});
  swapped->request_id = "another id";
  EXPECT_EQ(ResponseCache::Key("m", 1, *one), ResponseCache::Key("m", 1, *swapped));
}

TEST(ResponseCache, StoredOutputsOutliveTheirSourceAndTheirEviction) {
  ResponseCache cache(1000);
  std::vector<OutputTensor> source = Outputs(10, 7);
  ASSERT_EQ(ResponseCache::Inserted::kStored, cache.Insert("k", source));
  source.clear();  // the entry holds a copy
  std::vector<OutputTensor> found;
  ASSERT_TRUE(cache.Lookup("k", &found));
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].name, "y");
  EXPECT_EQ(found[0].byte_size, 10u);
  ASSERT_EQ(ResponseCache::Inserted::kStored, cache.Insert("evicts k", Outputs(990 - 8, 1)));
  EXPECT_FALSE(cache.Lookup("k", &source));
  EXPECT_EQ(found[0].data[9], 7);  // still readable: the response shares the entry's memory
}

TEST(ResponseCache, EvictsTheLeastRecentlyUsedWithinItsSize) {
  ResponseCache cache(300);  // three entries of 1-byte keys and 99 bytes of outputs
  ASSERT_EQ(ResponseCache::Inserted::kStored, cache.Insert("a", Outputs(99, 1)));
  ASSERT_EQ(ResponseCache::Inserted::kStored, cache.Insert("b", Outputs(99, 2)));
  ASSERT_EQ(ResponseCache::Inserted::kStored, cache.Insert("c", Outputs(99, 3)));
  std::vector<OutputTensor> found;
  ASSERT_TRUE(cache.Lookup("a", &found));  // b is now the least recently used
  ASSERT_EQ(ResponseCache::Inserted::kStored, cache.Insert("d", Outputs(99, 4)));
  EXPECT_FALSE(cache.Lookup("b", &found));
  EXPECT_TRUE(cache.Lookup("a", &found));
  EXPECT_TRUE(cache.Lookup("c", &found));
  EXPECT_TRUE(cache.Lookup("d", &found));
  const ResponseCache::Usage usage = cache.usage();
  EXPECT_EQ(usage.entries, 3u);
  EXPECT_EQ(usage.used, 300u);
  EXPECT_EQ(usage.evictions, 1u);
  EXPECT_EQ(usage.hits, 4u);
  EXPECT_EQ(usage.misses, 1u);
}

TEST(ResponseCache, RefusesAnEntryLargerThanItselfAndKeepsTheOthers) {
  ResponseCache cache(100);
  ASSERT_EQ(ResponseCache::Inserted::kStored, cache.Insert("a", Outputs(50, 1)));
  EXPECT_EQ(ResponseCache::Inserted::kTooLarge, cache.Insert("b", Outputs(100, 2)));  // 101 B
  std::vector<OutputTensor> found;
  EXPECT_TRUE(cache.Lookup("a", &found));
  EXPECT_EQ(ResponseCache::Inserted::kAlreadyStored, cache.Insert("a", Outputs(10, 3)));
  EXPECT_EQ(cache.usage().entries, 1u);
}

// Threads looking up and storing overlapping keys in a cache that holds a few of them: the
// size bound holds, and every hit gives back what was stored under its key.
TEST(ResponseCache, ConcurrentLookupsAndInsertsKeepTheBound) {
  ResponseCache cache(4 * 101);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<OutputTensor> found;
      for (int i = 0; i < 2000; ++i) {
        const uint8_t k = static_cast<uint8_t>((i * 7 + t) % 10);
        const std::string key(1, static_cast<char>('a' + k));
        if (cache.Lookup(key, &found)) {
          if (found.at(0).data[99] != k) wrong.fetch_add(1);
        } else {
          cache.Insert(key, Outputs(100, k));
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
  const ResponseCache::Usage usage = cache.usage();
  EXPECT_LE(usage.used, usage.capacity);
  EXPECT_EQ(usage.entries, 4u);
  EXPECT_EQ(usage.hits + usage.misses, 8000u);
}

// Echoes input "x" as output "y" (FP32), counting its runs.
class Echo : public BatchCompute {
 public:
  std::atomic<int> runs{0};
  Status Compute(Batch& batch, BatchOutputs* outputs) override {
    runs.fetch_add(1);
    const TensorView& x = batch.inputs[0];
    auto memory = std::make_shared<std::vector<uint8_t>>(x.data, x.data + x.byte_size);
    OutputTensor y;
    y.name = "y";
    y.dtype = DataType::kFp32;
    y.shape = x.shape;
    y.memory = memory;
    y.data = memory->data();
    y.byte_size = memory->size();
    outputs->batch.push_back(y);
    return Status::OK();
  }
};

// Keeps the first output's values of every response.
class CollectingSink : public ResponseSink {
 public:
  void Deliver(std::vector<Completion>& completions) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Completion& c : completions) {
      EXPECT_OK(c.response.status);
      const OutputTensor& y = c.response.outputs.at(0);
      std::vector<float> values(y.byte_size / sizeof(float));
      std::memcpy(values.data(), y.data, y.byte_size);
      responses_.push_back(values);
    }
    cv_.notify_all();
  }
  std::vector<std::vector<float>> WaitFor(size_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_for(lock, std::chrono::seconds(30), [&] { return responses_.size() >= count; });
    return responses_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::vector<float>> responses_;
};

TEST(ModelWithCache, AnswersARepeatedRequestWithoutComputing) {
  ModelSpec spec;
  spec.name = "echo";
  spec.version = 1;
  spec.inputs.push_back(TensorSpec{"x", DataType::kFp32, {-1}, false, false, {}});
  spec.outputs.push_back(TensorSpec{"y", DataType::kFp32, {-1}, false, false, {}});
  SchedulerOptions options;
  options.model_name = "echo";
  auto echo = std::make_shared<Echo>();
  std::shared_ptr<Model> model;
  ASSERT_OK(Model::Create(spec, options, echo, &model));
  model->EnableCache(std::make_shared<ResponseCache>(1 << 20));

  CollectingSink sink;
  const std::vector<float> values = {1.5, 2.5}, other = {3.5};
  auto first = Request(values, &sink);
  ASSERT_OK(model->Submit(first));
  ASSERT_EQ(sink.WaitFor(1).size(), 1u);
  auto second = Request(values, &sink);
  ASSERT_OK(model->Submit(second));
  auto third = Request(other, &sink);
  ASSERT_OK(model->Submit(third));
  const auto responses = sink.WaitFor(3);
  ASSERT_EQ(responses.size(), 3u);
  EXPECT_EQ(responses[1], values);  // answered from the cache, at Submit
  EXPECT_EQ(responses[2], other);
  EXPECT_EQ(echo->runs.load(), 2);

  model->Stop();
  const ModelStats stats = model->Statistics();
  EXPECT_EQ(stats.cache_hit.count, 1u);
  EXPECT_EQ(stats.cache_miss.count, 2u);
  EXPECT_EQ(stats.success.count, 3u);
  EXPECT_EQ(stats.execution_count, 2u);
  EXPECT_EQ(model->Counts().success, 3u);
}

}  // namespace
