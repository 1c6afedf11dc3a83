#include <atomic>
#include <thread>
#include <vector>

#include "check.h"
#include "mpmc_queue.h"
#include "notifier.h"

using pyserve::MpmcQueue;
using pyserve::Notifier;

static void FifoAndBounds() {
  MpmcQueue<int> q(3);  // rounds up to 4
  CHECK(q.capacity() == 4);
  for (int i = 0; i < 4; ++i) CHECK(q.TryPush(i));
  int extra = 99;
  CHECK(!q.TryPush(extra));
  CHECK(extra == 99);
  for (int i = 0; i < 4; ++i) {
    int v = -1;
    CHECK(q.TryPop(v));
    CHECK(v == i);
  }
  int v = -1;
  CHECK(!q.TryPop(v));
}

// Many producers and consumers: every item is seen exactly once, and each producer's items
// come out in the order it pushed them (per-producer FIFO).
static void EveryItemExactlyOnce() {
  constexpr int kProducers = 4, kConsumers = 4, kPerProducer = 50000;
  MpmcQueue<uint64_t> q(64);
  Notifier not_empty;
  std::vector<std::atomic<int>> seen(kProducers * kPerProducer);
  std::vector<std::vector<int>> last(kConsumers, std::vector<int>(kProducers, -1));
  std::atomic<int> remaining{kProducers * kPerProducer};
  std::atomic<bool> order_ok{true};

  std::vector<std::thread> threads;
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        uint64_t item = (uint64_t(p) << 32) | uint64_t(i);
        while (!q.TryPush(item)) std::this_thread::yield();
        not_empty.NotifyOne();
      }
    });
  }
  for (int c = 0; c < kConsumers; ++c) {
    threads.emplace_back([&, c] {
      while (remaining.load() > 0) {
        uint64_t item;
        if (!q.TryPop(item)) {
          uint64_t key = not_empty.PrepareWait();
          if (q.TryPop(item)) {
            not_empty.CancelWait();
          } else {
            not_empty.Wait(key, Notifier::Clock::now() + std::chrono::milliseconds(5));
            continue;
          }
        }
        int p = int(item >> 32), i = int(item & 0xffffffff);
        if (i <= last[c][p]) order_ok = false;
        last[c][p] = i;
        seen[p * kPerProducer + i].fetch_add(1);
        remaining.fetch_sub(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& s : seen) CHECK(s.load() == 1);
  CHECK(order_ok.load());
}

int main() {
  RUN(FifoAndBounds);
  RUN(EveryItemExactlyOnce);
  return 0;
}
