// CUDA paths of the core: pinned host pool, per-instance streams and device copies. Skipped
// (GTEST_SKIP, ctest's "Skipped") on machines without a usable CUDA runtime and GPU.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "cuda_runtime.h"
#include "host_memory.h"
#include "scheduler.h"
#include "status_matchers.h"

using namespace pyserve;

namespace {

class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    const CudaRuntime* cuda = CudaRuntime::Get();
    if (cuda == nullptr) GTEST_SKIP() << "no CUDA runtime with a GPU here";
    std::printf("CUDA runtime: %s, %d GPU(s)\n", cuda->library().c_str(), cuda->device_count());
  }
};

// Copies each batch input back from the device and checks it against the host bytes (on the
// instance's worker thread: EXPECT_*, and a failed batch where the next checks cannot run).
class DeviceChecker : public Executor {
 public:
  Status Execute(Batch& batch) override {
    const CudaRuntime* cuda = CudaRuntime::Get();
    const Status failed(StatusCode::kInternal, "device check failed");
    EXPECT_EQ(batch.device, 0);
    EXPECT_NE(batch.stream, nullptr);
    EXPECT_EQ(batch.device_inputs.size(), batch.inputs.size());
    if (batch.stream == nullptr || batch.device_inputs.size() != batch.inputs.size()) return failed;
    for (size_t i = 0; i < batch.inputs.size(); ++i) {
      std::vector<uint8_t> back(batch.inputs[i].byte_size);
      const bool copied = cuda->CopyToHostAsync(back.data(), batch.device_inputs[i].data,
                                                back.size(), batch.stream);
      EXPECT_TRUE(copied) << "input " << i;
      const bool synchronized = cuda->Synchronize(batch.stream);
      EXPECT_TRUE(synchronized) << "input " << i;
      if (!copied || !synchronized) return failed;
      EXPECT_EQ(std::memcmp(back.data(), batch.inputs[i].data, back.size()), 0) << "input " << i;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    streams_.push_back(batch.stream);
    checked_ += batch.requests.size();
    return Status::OK();
  }
  void Reject(const std::vector<InferRequest*>&, const Status&) override {}
  std::mutex mutex_;
  std::vector<void*> streams_;
  size_t checked_ = 0;
};

}  // namespace

TEST_F(Cuda, PinnedPoolAllocatesThroughCuda) {
  HostMemoryPool pool(1 << 20);
  EXPECT_TRUE(pool.pinned());
  auto buffer = pool.Acquire(1 << 16);
  ASSERT_NE(buffer.get(), nullptr);
  std::memset(buffer.get(), 3, 1 << 16);
}

TEST_F(Cuda, GpuInstancesCopyInputsOnTheirOwnStreams) {
  auto executor = std::make_shared<DeviceChecker>();
  SchedulerOptions options;
  options.model_name = "gpu";
  options.instance_count = 2;
  options.instance_devices = {0, 0};
  options.device_inputs = true;
  options.dynamic_batching = true;
  options.batching.max_batch_size = 4;
  std::unique_ptr<Scheduler> scheduler;
  ASSERT_OK(Scheduler::Create(options, executor, &scheduler));
  std::vector<std::vector<float>> data;
  for (int i = 0; i < 64; ++i) data.emplace_back(256, float(i));
  for (int i = 0; i < 64; ++i) {
    auto request = std::make_unique<InferRequest>();
    request->id = i;
    TensorView t;
    t.name = "X";
    t.dtype = DataType::kFp32;
    t.shape = {1, 256};
    t.data = reinterpret_cast<const uint8_t*>(data[i].data());
    t.byte_size = 256 * sizeof(float);
    request->inputs.push_back(t);
    ASSERT_OK(scheduler->Enqueue(request)) << "request " << i;
  }
  scheduler->Stop();
  EXPECT_EQ(executor->checked_, 64u);
}
