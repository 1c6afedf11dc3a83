// CUDA paths of the core: pinned host pool, per-instance streams and device copies. Exits with
// 77 (ctest's "skipped") on machines without a usable CUDA runtime and GPU.
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "check.h"
#include "cuda_runtime.h"
#include "host_memory.h"
#include "scheduler.h"

using namespace pyserve;

namespace {

void PinnedPoolAllocatesThroughCuda() {
  HostMemoryPool pool(1 << 20);
  CHECK(pool.pinned());
  auto buffer = pool.Acquire(1 << 16);
  CHECK(buffer != nullptr);
  std::memset(buffer.get(), 3, 1 << 16);
}

// Copies each batch input back from the device and checks it against the host bytes.
class DeviceChecker : public Executor {
 public:
  Status Execute(Batch& batch) override {
    const CudaRuntime* cuda = CudaRuntime::Get();
    CHECK(batch.device == 0 && batch.stream != nullptr);
    CHECK(batch.device_inputs.size() == batch.inputs.size());
    for (size_t i = 0; i < batch.inputs.size(); ++i) {
      std::vector<uint8_t> back(batch.inputs[i].byte_size);
      CHECK(cuda->CopyToHostAsync(back.data(), batch.device_inputs[i].data, back.size(),
                                  batch.stream));
      CHECK(cuda->Synchronize(batch.stream));
      CHECK(std::memcmp(back.data(), batch.inputs[i].data, back.size()) == 0);
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

void GpuInstancesCopyInputsOnTheirOwnStreams() {
  auto executor = std::make_shared<DeviceChecker>();
  SchedulerOptions options;
  options.model_name = "gpu";
  options.instance_count = 2;
  options.instance_devices = {0, 0};
  options.device_inputs = true;
  options.dynamic_batching = true;
  options.batching.max_batch_size = 4;
  std::unique_ptr<Scheduler> scheduler;
  CHECK(Scheduler::Create(options, executor, &scheduler).ok());
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
    CHECK(scheduler->Enqueue(request).ok());
  }
  scheduler->Stop();
  CHECK(executor->checked_ == 64);
}

}  // namespace

int main() {
  if (CudaRuntime::Get() == nullptr) {
    std::printf("no CUDA runtime with a GPU here: skipped\n");
    return 77;
  }
  std::printf("CUDA runtime: %s, %d GPU(s)\n", CudaRuntime::Get()->library().c_str(),
              CudaRuntime::Get()->device_count());
  RUN(PinnedPoolAllocatesThroughCuda);
  RUN(GpuInstancesCopyInputsOnTheirOwnStreams);
  return 0;
}
