// The relay's blocking calls to the Python shell run here, off the event-loop threads: a
// thread starts whenever none is free, up to `max_threads`, and retires after idling for
// `idle_timeout`, so a slow shell call (a model load) never holds up another request.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

namespace pyserve::httpfront {

class ElasticPool {
 public:
  ElasticPool(size_t max_threads, std::chrono::seconds idle_timeout)
      : max_threads_(std::max<size_t>(1, max_threads)), idle_timeout_(idle_timeout) {}
  ~ElasticPool() { Shutdown(); }

  void Enqueue(std::function<void()> task) {
    std::vector<std::thread> retired;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      tasks_.push_back(std::move(task));
      if (idle_ < tasks_.size() && threads_.size() < max_threads_) {
        std::thread thread([this] { Work(); });
        threads_.emplace(thread.get_id(), std::move(thread));
      }
      retired.swap(retired_);
      cv_.notify_one();
    }
    for (std::thread& t : retired) t.join();
  }

  // Runs the tasks queued, then joins every thread.
  void Shutdown() {
    std::map<std::thread::id, std::thread> threads;
    std::vector<std::thread> retired;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      cv_.notify_all();
      threads.swap(threads_);
      retired.swap(retired_);
    }
    for (auto& [id, t] : threads) t.join();
    for (std::thread& t : retired) t.join();
  }

 private:
  void Work() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      ++idle_;
      const bool woken = cv_.wait_for(lock, idle_timeout_, [this] { return stopping_ || !tasks_.empty(); });
      --idle_;
      if (tasks_.empty()) {
        if (stopping_) return;  // shutdown() joins it
        if (!woken) {           // idle too long: hand its std::thread over to be joined
          auto self = threads_.find(std::this_thread::get_id());
          if (self != threads_.end()) {
            retired_.push_back(std::move(self->second));
            threads_.erase(self);
            return;
          }
        }
        continue;
      }
      std::function<void()> task = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      task();
      lock.lock();
    }
  }

  const size_t max_threads_;
  const std::chrono::seconds idle_timeout_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::map<std::thread::id, std::thread> threads_;
  std::vector<std::thread> retired_;  // exited after idling; joined by the next enqueue
  size_t idle_ = 0;
  bool stopping_ = false;
};

}  // namespace pyserve::httpfront
