#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "mpmc_queue.h"
#include "notifier.h"

using pyserve::MpmcQueue;
using pyserve::Notifier;

TEST(MpmcQueue, FifoAndBounds) {
  MpmcQueue<int> q(3);  // rounds up to 4
  ASSERT_EQ(q.capacity(), 4u);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(q.TryPush(i)) << "item " << i;
  int extra = 99;
  EXPECT_FALSE(q.TryPush(extra));
  EXPECT_EQ(extra, 99);
  for (int i = 0; i < 4; ++i) {
    int v = -1;
    ASSERT_TRUE(q.TryPop(v)) << "item " << i;
    EXPECT_EQ(v, i);
  }
  int v = -1;
  EXPECT_FALSE(q.TryPop(v));
}

// Many producers and consumers: every item is seen exactly once, and each producer's items
// come out in the order it pushed them (per-producer FIFO).
TEST(MpmcQueue, EveryItemExactlyOnce) {
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
  // Every item once; on failure, how many were not and the first of them.
  size_t wrong = 0, first_wrong = 0;
  for (size_t i = 0; i < seen.size(); ++i) {
    if (seen[i].load() != 1 && wrong++ == 0) first_wrong = i;
  }
  EXPECT_EQ(wrong, 0u) << "first: producer " << first_wrong / kPerProducer << "'s item "
                       << first_wrong % kPerProducer << ", seen " << seen[first_wrong].load()
                       << " times";
  EXPECT_TRUE(order_ok.load()) << "a producer's items came out of order";
}
