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
// senders; latency counts from the due time, so a saturated pool shows as latency).
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

  // open loop: due times waiting for a sender
  std::mutex due_mutex_;
  std::condition_variable due_cv_;
  std::deque<std::pair<size_t, double>> due_;
};

double MonotonicNow();

}  // namespace pyserve::loadgen
