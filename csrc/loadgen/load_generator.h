// pyserve bench's load generator: native threads that send pre-encoded requests and time
// them, so that no request of a benchmark waits for Python's GIL (perf_analyzer's design).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace pyserve::loadgen {

// Sends request i of the payload list and waits for its answer; true when it succeeded.
// One per thread: each owns its connection (or stream) and is never shared.
class Sender {
 public:
  virtual ~Sender() = default;
  virtual bool Send(size_t i) = 0;
};

using SenderFactory = std::function<std::unique_ptr<Sender>(size_t thread)>;

struct Record {
  double end;      // CLOCK_MONOTONIC seconds (Python's time.monotonic)
  double latency;  // seconds, from the send (or the scheduled time, in request-rate mode)
  bool ok;
};

// Closed loop (`concurrency` threads, each sending its next request when the last is
// answered) or open loop (requests due at fixed intervals, taken by a pool of `threads`
// senders; latency counts from the due time, so a saturated pool shows as latency). In the
// pool the most recently idle sender takes the next request and a sender connects on its
// first request, so only as many connections open as requests were ever in flight at once:
// servers with a thread per connection keep threads for everyone else.
class LoadGenerator {
 public:
  LoadGenerator(SenderFactory factory, size_t payload_count, size_t threads,
                double request_rate);
  ~LoadGenerator();

  void Start();
  // Stops sending and joins the threads (each finishes the request it has in flight).
  void Stop();
  // The records completed since the last call.
  std::vector<Record> Take();

 private:
  void ClosedLoop(size_t thread);
  void PoolLoop(size_t thread);
  void Dispatch();
  void Add(const Record& record);

  SenderFactory factory_;
  size_t payload_count_;
  size_t threads_;
  double request_rate_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> workers_;

  std::mutex records_mutex_;
  std::vector<Record> records_;

  // open loop: requests (index, due time) waiting for a sender, and the idle senders
  using Job = std::pair<size_t, double>;
  struct PoolSlot {
    std::condition_variable cv;
    bool has_job = false;
    Job job;
  };
  std::mutex due_mutex_;
  std::deque<Job> due_;
  std::vector<std::unique_ptr<PoolSlot>> slots_;
  std::vector<PoolSlot*> idle_;  // a stack: the most recently idle sender on top
};

double MonotonicNow();

}  // namespace pyserve::loadgen
