#include "load_generator.h"

#include <pthread.h>

#include <chrono>
#include <ctime>

namespace pyserve::loadgen {

double MonotonicNow() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return double(now.tv_sec) + double(now.tv_nsec) * 1e-9;
}

LoadGenerator::LoadGenerator(SenderFactory factory, size_t payload_count, size_t threads,
                             double request_rate)
    : factory_(std::move(factory)),
      payload_count_(payload_count ? payload_count : 1),
      threads_(threads ? threads : 1),
      request_rate_(request_rate) {}

LoadGenerator::~LoadGenerator() { Stop(); }

void LoadGenerator::Start() {
  if (request_rate_ > 0) {
    for (size_t t = 0; t < threads_; ++t) slots_.push_back(std::make_unique<PoolSlot>());
  }
  for (size_t t = 0; t < threads_; ++t) {
    workers_.emplace_back([this, t] {
      pthread_setname_np(pthread_self(), "ps-loadgen");
      if (request_rate_ > 0) {
        PoolLoop(t);
      } else {
        ClosedLoop(t);
      }
    });
  }
  if (request_rate_ > 0) workers_.emplace_back([this] { Dispatch(); });
}

void LoadGenerator::Stop() {
  {
    std::lock_guard<std::mutex> lock(due_mutex_);
    stop_.store(true);
  }
  for (auto& slot : slots_) slot->cv.notify_all();
  for (auto& worker : workers_) worker.join();
  workers_.clear();
}

std::vector<Record> LoadGenerator::Take() {
  std::vector<Record> taken;
  std::lock_guard<std::mutex> lock(records_mutex_);
  taken.swap(records_);
  return taken;
}

void LoadGenerator::Add(const Record& record) {
  std::lock_guard<std::mutex> lock(records_mutex_);
  records_.push_back(record);
}

void LoadGenerator::ClosedLoop(size_t thread) {
  std::unique_ptr<Sender> sender = factory_(thread);
  for (size_t i = thread; !stop_.load(std::memory_order_relaxed); ++i) {
    double begin = MonotonicNow();
    bool ok = sender->Send(i % payload_count_);
    double end = MonotonicNow();
    Add({end, end - begin, ok});
  }
}

void LoadGenerator::PoolLoop(size_t thread) {
  PoolSlot& slot = *slots_[thread];
  std::unique_ptr<Sender> sender;  // connects on its first request
  while (true) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(due_mutex_);
      if (stop_.load()) return;
      if (!due_.empty()) {
        job = due_.front();
        due_.pop_front();
      } else {
        idle_.push_back(&slot);
        slot.cv.wait(lock, [&] { return stop_.load() || slot.has_job; });
        if (!slot.has_job) return;
        job = slot.job;
        slot.has_job = false;
      }
    }
    if (!sender) sender = factory_(thread);
    bool ok = sender->Send(job.first % payload_count_);
    double end = MonotonicNow();
    Add({end, end - job.second, ok});
  }
}

void LoadGenerator::Dispatch() {
  const double interval = 1.0 / request_rate_;
  const double first = MonotonicNow();
  for (size_t i = 0; !stop_.load(); ++i) {
    double due = first + double(i) * interval;
    double delay = due - MonotonicNow();
    if (delay > 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
    std::lock_guard<std::mutex> lock(due_mutex_);
    if (idle_.empty()) {
      due_.emplace_back(i, due);  // every sender is busy: the first one free takes it
      continue;
    }
    PoolSlot* slot = idle_.back();
    idle_.pop_back();
    slot->job = {i, due};
    slot->has_job = true;
    slot->cv.notify_one();
  }
}

}  // namespace pyserve::loadgen
