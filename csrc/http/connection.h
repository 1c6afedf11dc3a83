// A request waiting on its connection's thread for the core's answer, and the connection's
// client, who may leave meanwhile.
#pragma once

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "response.h"

namespace pyserve::httpfront {

// What a waiting request shares with the sink that answers it: the InferRequest's `owner`
// (as a shared_ptr<Awaited>, which derived requests convert to) and its `cancelled` flag.
struct Awaited {
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  InferResponse response;
  std::atomic<bool> cancelled{false};  // the client left, or the wait gave up
};

// A sink's Deliver: each completion to its Awaited, whose thread wakes up.
void DeliverAwaited(std::vector<Completion>& completions);

// Whether the client has closed (or reset) the connection. cpp-httplib (0.11) does not hand a
// handler its socket, so it is found among the process's descriptors by its two ends'
// addresses, once, by the first request that waits long enough to be worth cancelling.
class ClientWatch {
 public:
  explicit ClientWatch(const httplib::Request& req) : req_(req) {}
  bool Gone();

 private:
  const httplib::Request& req_;
  int fd_ = -2;  // not looked for yet; -1: not found
};

enum class Waited { kReady, kDeadline, kGone };

// Waits on `awaited.cv` (its mutex held by `lock`) until `ready()`, `deadline()` (read again
// at each wake-up: it may move) or `gone()`, which is asked at growing intervals, 20 ms to
// 200 ms.
template <typename Ready, typename Deadline, typename Gone>
Waited Await(Awaited& awaited, std::unique_lock<std::mutex>& lock, Ready ready, Deadline deadline,
             Gone gone) {
  auto interval = std::chrono::milliseconds(20);
  while (!ready()) {
    const auto now = std::chrono::steady_clock::now(), until = deadline();
    if (now >= until) return Waited::kDeadline;
    if (awaited.cv.wait_until(lock, std::min(until, now + interval), ready)) break;
    if (gone()) return Waited::kGone;
    interval = std::min(interval * 2, std::chrono::milliseconds(200));
  }
  return Waited::kReady;
}

// cpp-httplib's own entries among a request's headers (the two ends' addresses), in their
// exact case: a client's own `remote_addr` header is the client's, and passes.
bool PseudoHeader(const std::string& name);

}  // namespace pyserve::httpfront
