// Notifier: lets consumers of a lock-free queue sleep when it is empty without spinning and
// without putting a lock on the producer's fast path (an "eventcount"). Producers pay one
// atomic increment and one load; the mutex is touched only when somebody is asleep.
//
// Consumer protocol:   auto key = n.PrepareWait();
//                      if (queue.TryPop(x)) { n.CancelWait(); ... }
//                      else n.Wait(key, deadline);
// Producer protocol:   queue.TryPush(x); n.NotifyOne();
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace pyserve {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Retries `attempt` for about a microsecond before the caller goes to sleep: an item that is
// mid-push in another thread usually lands within that, and a sleep and wake-up cost far
// more. Bounded, so an idle consumer still sleeps almost at once.
template <typename Attempt>
bool SpinBriefly(Attempt&& attempt) {
  for (int i = 0; i < 64; ++i) {
    CpuRelax();
    if (attempt()) return true;
  }
  return false;
}

class Notifier {
 public:
  using Clock = std::chrono::steady_clock;

  uint64_t PrepareWait() {
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    return epoch_.load(std::memory_order_seq_cst);
  }

  void CancelWait() { waiters_.fetch_sub(1, std::memory_order_seq_cst); }

  // Sleeps until a notification newer than `key`, or the deadline. Returns false on timeout.
  bool Wait(uint64_t key, Clock::time_point deadline = Clock::time_point::max()) {
    bool notified = true;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      auto changed = [&] { return epoch_.load(std::memory_order_seq_cst) != key; };
      if (deadline == Clock::time_point::max()) {
        cv_.wait(lock, changed);
      } else {
        notified = cv_.wait_until(lock, deadline, changed);
      }
    }
    waiters_.fetch_sub(1, std::memory_order_seq_cst);
    return notified;
  }

  void NotifyOne() { Notify(false); }
  void NotifyAll() { Notify(true); }

 private:
  void Notify(bool all) {
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    if (waiters_.load(std::memory_order_seq_cst) == 0) return;
    // Taking the lock orders this notify after a sleeper's check of the epoch.
    { std::lock_guard<std::mutex> lock(mutex_); }
    if (all) {
      cv_.notify_all();
    } else {
      cv_.notify_one();
    }
  }

  std::atomic<uint64_t> epoch_{0};
  std::atomic<int> waiters_{0};
  std::mutex mutex_;
  std::condition_variable cv_;
};

}  // namespace pyserve
