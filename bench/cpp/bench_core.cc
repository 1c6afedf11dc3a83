// Core microbenchmarks, each printed as a ratio against its baseline measured in the same run:
//   queue     the lock-free MPMC queue vs a mutex + condition variable queue (2 producers,
//             1 consumer, consumer sleeps when empty)
//   gather    batch assembly (8 requests x 64 KiB into a pooled buffer) vs plain memcpy of the
//             same bytes into a preallocated buffer
//   overhead  enqueue -> completion of one request at a time through the Scheduler with a
//             no-op C++ executor (p50 and p99 in microseconds)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "host_memory.h"
#include "mpmc_queue.h"
#include "notifier.h"
#include "scheduler.h"

using namespace pyserve;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

class MutexQueue {
 public:
  void Push(uint64_t v) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      items_.push_back(v);
    }
    cv_.notify_one();
  }
  uint64_t Pop() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return !items_.empty(); });
    uint64_t v = items_.front();
    items_.pop_front();
    return v;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<uint64_t> items_;
};

constexpr int kProducers = 2;
constexpr uint64_t kItems = 2'000'000;  // per producer

double QueueLockFree() {
  MpmcQueue<uint64_t> queue(4096);
  Notifier not_empty;
  auto start = Clock::now();
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&] {
      for (uint64_t i = 0; i < kItems; ++i) {
        uint64_t v = i;
        while (!queue.TryPush(v)) std::this_thread::yield();
        not_empty.NotifyOne();
      }
    });
  }
  uint64_t sum = 0;
  for (uint64_t n = 0; n < kProducers * kItems;) {
    uint64_t v;
    if (queue.TryPop(v) || SpinBriefly([&] { return queue.TryPop(v); })) {
      sum += v;
      ++n;
      continue;
    }
    uint64_t key = not_empty.PrepareWait();
    if (queue.TryPop(v)) {
      not_empty.CancelWait();
      sum += v;
      ++n;
    } else {
      not_empty.Wait(key);
    }
  }
  for (auto& t : producers) t.join();
  auto end = Clock::now();
  if (sum != kProducers * (kItems * (kItems - 1) / 2)) std::abort();
  return kProducers * kItems / Seconds(start, end);
}

double QueueMutex() {
  MutexQueue queue;
  auto start = Clock::now();
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&] {
      for (uint64_t i = 0; i < kItems; ++i) queue.Push(i);
    });
  }
  uint64_t sum = 0;
  for (uint64_t n = 0; n < kProducers * kItems; ++n) sum += queue.Pop();
  for (auto& t : producers) t.join();
  auto end = Clock::now();
  if (sum != kProducers * (kItems * (kItems - 1) / 2)) std::abort();
  return kProducers * kItems / Seconds(start, end);
}

constexpr size_t kRequests = 8;
constexpr size_t kBytesPerRequest = 64 * 1024;
constexpr int kRounds = 20000;

double GatherBandwidth(HostMemoryPool& pool, std::vector<std::vector<uint8_t>>& sources) {
  Batch batch;
  for (size_t i = 0; i < kRequests; ++i) {
    auto r = std::make_unique<InferRequest>();
    TensorView t;
    t.name = "INPUT0";
    t.dtype = DataType::kFp32;
    t.shape = {1, int64_t(kBytesPerRequest / 4)};
    t.data = sources[i].data();
    t.byte_size = kBytesPerRequest;
    r->inputs.push_back(std::move(t));
    batch.requests.push_back(std::move(r));
  }
  auto start = Clock::now();
  for (int round = 0; round < kRounds; ++round) {
    batch.inputs.clear();
    batch.buffers.clear();  // the gathered buffer goes back to the pool, as after a batch
    if (!GatherBatch(batch, pool)) std::abort();
  }
  auto end = Clock::now();
  return double(kRounds) * kRequests * kBytesPerRequest / Seconds(start, end);
}

double MemcpyBandwidth(std::vector<std::vector<uint8_t>>& sources) {
  std::vector<uint8_t> destination(kRequests * kBytesPerRequest);
  auto start = Clock::now();
  for (int round = 0; round < kRounds; ++round) {
    for (size_t i = 0; i < kRequests; ++i) {
      std::memcpy(destination.data() + i * kBytesPerRequest, sources[i].data(), kBytesPerRequest);
    }
    asm volatile("" : : "r"(destination.data()) : "memory");
  }
  auto end = Clock::now();
  return double(kRounds) * kRequests * kBytesPerRequest / Seconds(start, end);
}

class NoopExecutor : public Executor {
 public:
  Status Execute(Batch& batch) override {
    done.store(batch.requests.front()->id, std::memory_order_release);
    return Status::OK();
  }
  void Reject(const std::vector<InferRequest*>&, const Status&) override {}
  std::atomic<uint64_t> done{0};
};

std::vector<double> OverheadUs(int requests) {
  auto executor = std::make_shared<NoopExecutor>();
  SchedulerOptions options;
  options.model_name = "noop";
  std::unique_ptr<Scheduler> scheduler;
  if (!Scheduler::Create(options, executor, &scheduler).ok()) std::abort();
  int32_t data[16] = {};
  std::vector<double> latencies;
  for (int i = 1; i <= requests; ++i) {
    auto request = std::make_unique<InferRequest>();
    request->id = i;
    TensorView t;
    t.name = "INPUT0";
    t.dtype = DataType::kInt32;
    t.shape = {1, 16};
    t.data = reinterpret_cast<const uint8_t*>(data);
    t.byte_size = sizeof(data);
    request->inputs.push_back(t);
    auto start = Clock::now();
    if (!scheduler->Enqueue(request).ok()) std::abort();
    while (executor->done.load(std::memory_order_acquire) != uint64_t(i)) {
    }
    latencies.push_back(Seconds(start, Clock::now()) * 1e6);
  }
  scheduler->Stop();
  std::sort(latencies.begin(), latencies.end());
  return latencies;
}

}  // namespace

int main() {
  double lock_free = 0, mutex = 0;
  for (int i = 0; i < 3; ++i) {  // best of three for each, interleaved
    lock_free = std::max(lock_free, QueueLockFree());
    mutex = std::max(mutex, QueueMutex());
  }
  std::printf("queue     lock-free %.2f M items/s, mutex+condvar %.2f M items/s, ratio %.2fx "
              "(bar >= 2.0x)\n", lock_free / 1e6, mutex / 1e6, lock_free / mutex);

  HostMemoryPool pool(size_t{1} << 28, /*try_pinned=*/false);
  std::vector<std::vector<uint8_t>> sources(kRequests, std::vector<uint8_t>(kBytesPerRequest, 7));
  double gather = 0, copy = 0;
  for (int i = 0; i < 3; ++i) {
    gather = std::max(gather, GatherBandwidth(pool, sources));
    copy = std::max(copy, MemcpyBandwidth(sources));
  }
  std::printf("gather    %.2f GB/s, memcpy %.2f GB/s, ratio %.2fx (bar >= 0.8x)\n", gather / 1e9,
              copy / 1e9, gather / copy);

  std::vector<double> latencies = OverheadUs(20000);
  std::printf("overhead  C++ no-op executor: p50 %.1f us, p99 %.1f us (bar p50 <= 20 us)\n",
              latencies[latencies.size() / 2], latencies[latencies.size() * 99 / 100]);
  return 0;
}
