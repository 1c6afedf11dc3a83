// RateLimiter: Triton's rate limiter (--rate-limit=execution_count), one per server, shared
// by the schedulers of every model. An instance whose instance group declares resources
// (`rate_limiter.resources`) executes a batch only while it holds them: its worker asks
// (Acquire, blocking), runs, and gives them back (Release). Waiting instances are served in
// the order of their scaled priority, executions so far times `priority` (at least 1), so
// that an instance of priority 1 runs about twice as often as one of priority 2; the first in
// that order is served first, the others wait behind it (as in Triton). Which of a model's
// idle instances takes a batch is the scheduler's choice, by the same executions times
// priority (Scheduler::PreferredIdleInstance).
//
// A resource is per device (each device has its own count) unless `global`. Its count on the
// server is the largest any registered instance asks, unless --rate-limit-resource gives it
// (then an instance asking more is refused at load, with Triton's text).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "status.h"

namespace pyserve {

// One `resources` entry of an instance group's rate_limiter.
struct RateLimitResource {
  std::string name;
  bool global = false;
  uint64_t count = 0;
};

// What one instance asks: its group's resources and priority, and the device it runs on
// (Triton's device id: the GPU, 0 for a CPU instance).
struct InstanceRateLimit {
  std::vector<RateLimitResource> resources;
  uint32_t priority = 0;
  int device = 0;
};

// A --rate-limit-resource=NAME:COUNT[:DEVICE] flag; device -1: every device.
struct ServerResource {
  std::string name;
  uint64_t count = 0;
  int device = -1;
};

class RateLimiter {
 public:
  // `server_resources`: the flags; a name given twice for one device keeps the smaller count
  // (as Triton does).
  explicit RateLimiter(const std::vector<ServerResource>& server_resources);

  // Adds a model's instances, all or none: refused (Triton's texts) when a resource count
  // given on the command line is below what one of them asks, or when a resource is both
  // global and per device. `ids` gets one id per instance, 0 for an instance that asks for
  // nothing (it never waits here).
  Status Register(const std::vector<InstanceRateLimit>& instances, std::vector<uint64_t>* ids);
  // Removes instances whose workers have stopped, giving back anything they were granted.
  void Unregister(const std::vector<uint64_t>& ids);

  // Blocks until the instance holds its resources.
  void Acquire(uint64_t id);
  // Gives them back and serves whoever waits; `stay_in_line`: the instance waits again at once
  // (it has more work), and its next Acquire takes what it is granted.
  void Release(uint64_t id, bool stay_in_line = false);
  // The instance has no work after all: out of the line, anything granted given back.
  void Withdraw(uint64_t id);

  // Instances in line: waiting in Acquire, or staying in line after Release.
  size_t WaitingCount() const;

  // The count of a resource on a device (kGlobal for a global one): 0 when unknown.
  static constexpr int kGlobal = -2;
  uint64_t Capacity(const std::string& name, int device) const;

 private:
  using Key = std::pair<int, std::string>;  // device (kGlobal: global), name
  using Counts = std::map<Key, uint64_t>;
  using Place = std::tuple<uint64_t, uint64_t, uint64_t>;  // scaled priority, arrival, id
  enum class State { kIdle, kWaiting, kGranted, kHolding };
  struct Entry {
    Counts asks;
    uint32_t priority = 1;
    uint64_t executions = 0;
    State state = State::kIdle;
    Place place;  // in waiting_, while kWaiting
    std::condition_variable granted_cv;
  };

  // Under mutex_: the counts the server has with entries_ registered, or Triton's refusal.
  Status Capacities(Counts* capacities) const;
  bool Fits(const Entry& entry) const;
  void Line(uint64_t id, Entry& entry);  // under mutex_: into waiting_
  void GiveBack(Entry& entry);           // under mutex_
  void Serve();  // under mutex_: grants to the waiting instances first in order while they fit

  std::map<Key, uint64_t> explicit_;  // device -1: every device
  mutable std::mutex mutex_;
  std::map<uint64_t, std::unique_ptr<Entry>> entries_;
  Counts capacities_;
  Counts allocated_;
  std::set<Place> waiting_;
  uint64_t next_id_ = 1;
  uint64_t arrivals_ = 0;
};

}  // namespace pyserve
