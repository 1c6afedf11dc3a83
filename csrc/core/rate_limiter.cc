#include "rate_limiter.h"

#include <algorithm>

namespace pyserve {

namespace {
constexpr int kEveryDevice = -1;  // a --rate-limit-resource without a device
}  // namespace

RateLimiter::RateLimiter(const std::vector<ServerResource>& server_resources) {
  for (const ServerResource& r : server_resources) {
    const Key key{r.device < 0 ? kEveryDevice : r.device, r.name};
    auto [it, added] = explicit_.emplace(key, r.count);
    if (!added) it->second = std::min(it->second, r.count);
  }
}

Status RateLimiter::Capacities(Counts* capacities) const {
  Counts counts;  // the largest ask of each resource
  for (const auto& [id, entry] : entries_) {
    for (const auto& [key, count] : entry->asks) counts[key] = std::max(counts[key], count);
  }
  if (!explicit_.empty()) {  // the flags give every count; a resource they omit has none
    for (auto& [key, needed] : counts) {
      const auto& [device, name] = key;
      uint64_t available = 0;
      for (const auto& [given_key, given] : explicit_) {
        const int given_device = given_key.first;
        const bool applies = device == kGlobal || given_device == device ||
                             given_device == kEveryDevice;
        if (applies && given_key.second == name) available = std::max(available, given);
      }
      if (available < needed) {
        return Status(StatusCode::kInvalidArg,
                      "Resource count for \"" + name + "\" is limited to " +
                          std::to_string(available) +
                          " which will prevent scheduling of one or more model instances, "
                          "the minimum required count is " + std::to_string(needed));
      }
      needed = available;
    }
  }
  for (const auto& [key, count] : counts) {
    if (key.first != kGlobal) continue;
    for (const auto& [other, other_count] : counts) {
      if (other.first != kGlobal && other.second == key.second) {
        return Status(StatusCode::kInvalidArg,
                      "Resource \"" + key.second +
                          "\" is present as both global and device-specific resource in the "
                          "model configuration.");
      }
    }
  }
  *capacities = std::move(counts);
  return Status::OK();
}

Status RateLimiter::Register(const std::vector<InstanceRateLimit>& instances,
                             std::vector<uint64_t>* ids) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<uint64_t> added;
  for (const InstanceRateLimit& instance : instances) {
    auto entry = std::make_unique<Entry>();
    for (const RateLimitResource& r : instance.resources) {
      // A resource named twice in one group: the last count, as Triton's map keeps it.
      entry->asks[{r.global ? kGlobal : instance.device, r.name}] = r.count;
    }
    entry->priority = std::max<uint32_t>(instance.priority, 1);
    if (entry->asks.empty()) {
      added.push_back(0);
      continue;
    }
    added.push_back(next_id_);
    entries_.emplace(next_id_++, std::move(entry));
  }
  Counts capacities;
  Status status = Capacities(&capacities);
  if (!status.ok()) {
    for (uint64_t id : added) entries_.erase(id);
    return status;
  }
  capacities_ = std::move(capacities);
  *ids = std::move(added);
  return Status::OK();
}

void RateLimiter::Unregister(const std::vector<uint64_t>& ids) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (uint64_t id : ids) {
    auto it = entries_.find(id);
    if (it == entries_.end()) continue;
    if (it->second->state == State::kWaiting) waiting_.erase(it->second->place);
    if (it->second->state == State::kGranted || it->second->state == State::kHolding) {
      GiveBack(*it->second);
    }
    entries_.erase(it);
  }
  Counts capacities;
  // Fewer instances never make the counts invalid; the largest asks may shrink.
  if (Capacities(&capacities).ok()) capacities_ = std::move(capacities);
  Serve();
}

bool RateLimiter::Fits(const Entry& entry) const {
  for (const auto& [key, count] : entry.asks) {
    auto capacity = capacities_.find(key);
    auto taken = allocated_.find(key);
    const uint64_t in_use = taken == allocated_.end() ? 0 : taken->second;
    if (capacity == capacities_.end() || in_use + count > capacity->second) return false;
  }
  return true;
}

void RateLimiter::Serve() {
  while (!waiting_.empty()) {
    Entry& entry = *entries_.find(std::get<2>(*waiting_.begin()))->second;  // waiting: registered
    if (!Fits(entry)) return;  // the first in order waits for its resources; so do the rest
    for (const auto& [key, count] : entry.asks) allocated_[key] += count;
    waiting_.erase(waiting_.begin());
    entry.state = State::kGranted;
    entry.granted_cv.notify_one();
  }
}

void RateLimiter::Line(uint64_t id, Entry& entry) {
  entry.place = Place{entry.executions * entry.priority, arrivals_++, id};
  waiting_.insert(entry.place);
  entry.state = State::kWaiting;
}

void RateLimiter::GiveBack(Entry& entry) {
  for (const auto& [key, count] : entry.asks) allocated_[key] -= count;
  entry.state = State::kIdle;
}

void RateLimiter::Acquire(uint64_t id) {
  if (id == 0) return;  // asks for nothing
  std::unique_lock<std::mutex> lock(mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;  // never registered: nothing to wait for
  Entry& entry = *it->second;
  if (entry.state == State::kIdle) {
    Line(id, entry);
    Serve();
  }
  entry.granted_cv.wait(lock, [&entry] { return entry.state == State::kGranted; });
  entry.state = State::kHolding;
}

void RateLimiter::Release(uint64_t id, bool stay_in_line) {
  if (id == 0) return;  // asks for nothing
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second->state != State::kHolding) return;
  Entry& entry = *it->second;
  GiveBack(entry);
  ++entry.executions;
  if (stay_in_line) Line(id, entry);
  Serve();
}

void RateLimiter::Withdraw(uint64_t id) {
  if (id == 0) return;  // asks for nothing
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  Entry& entry = *it->second;
  if (entry.state == State::kWaiting) {
    waiting_.erase(entry.place);
    entry.state = State::kIdle;
  } else if (entry.state == State::kGranted) {
    GiveBack(entry);
  } else {
    return;
  }
  Serve();  // whoever waited behind it, or for what it gave back
}

size_t RateLimiter::WaitingCount() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return waiting_.size();
}

uint64_t RateLimiter::Capacity(const std::string& name, int device) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = capacities_.find({device, name});
  return it == capacities_.end() ? 0 : it->second;
}

}  // namespace pyserve
