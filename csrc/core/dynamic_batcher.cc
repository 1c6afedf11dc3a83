#include "dynamic_batcher.h"

#include <algorithm>

namespace pyserve {

DynamicBatcher::DynamicBatcher(BatchingOptions options) : options_(std::move(options)) {
  options_.max_batch_size = std::max<uint32_t>(options_.max_batch_size, 1);
  preferred_ = options_.preferred_batch_sizes;
  if (preferred_.empty()) preferred_.push_back(options_.max_batch_size);
  std::sort(preferred_.begin(), preferred_.end());
  max_preferred_ = preferred_.back();
  delay_ns_ = options_.max_queue_delay_us * 1000;

  const uint32_t count = std::max<uint32_t>(options_.priority_levels, 1);
  levels_.resize(count);
  for (uint32_t i = 0; i < count; ++i) {
    auto it = options_.level_policies.find(i + 1);
    levels_[i].policy = it != options_.level_policies.end() ? it->second : options_.default_policy;
  }
  admitted_.reset(new std::atomic<uint32_t>[count]);
  for (uint32_t i = 0; i < count; ++i) admitted_[i].store(0);
  arrivals_only_grow_ = count == 1 && options_.equal_shape_inputs.empty() &&
                        !options_.equal_input_sets && !HasTimeouts(options_);
}

bool HasTimeouts(const BatchingOptions& options) {
  auto times_out = [](const QueuePolicy& p) {
    return p.default_timeout_us != 0 || p.allow_timeout_override;
  };
  return times_out(options.default_policy) ||
         std::any_of(options.level_policies.begin(), options.level_policies.end(),
                     [&](const auto& level) { return times_out(level.second); });
}

Status DynamicBatcher::Admit(InferRequest& request, uint64_t now_ns) {
  request.priority_level = LevelOf(request.priority);
  request.deadline_ns = DeadlineOf(request, now_ns);
  std::atomic<uint32_t>& count = admitted_[request.priority_level];
  const uint32_t limit = levels_[request.priority_level].policy.max_queue_size;
  uint32_t queued = count.load(std::memory_order_relaxed);
  do {
    if (limit != 0 && queued >= limit) {
      return Status(StatusCode::kUnavailable, "Exceeds maximum queue size");
    }
  } while (!count.compare_exchange_weak(queued, queued + 1));
  return Status::OK();
}

void DynamicBatcher::Withdraw(const InferRequest& request) {
  admitted_[request.priority_level].fetch_sub(1, std::memory_order_relaxed);
}

void DynamicBatcher::Departed(const std::vector<InferRequest*>& requests) {
  for (const InferRequest* r : requests) Withdraw(*r);
}

uint32_t DynamicBatcher::LevelOf(uint64_t priority) const {
  const uint64_t count = levels_.size();
  if (priority == 0 || priority > count) {
    const uint64_t fallback = options_.default_priority_level;
    priority = (fallback >= 1 && fallback <= count) ? fallback : 1;
  }
  return static_cast<uint32_t>(priority - 1);
}

uint64_t DynamicBatcher::DeadlineOf(const InferRequest& request, uint64_t now_ns) const {
  const QueuePolicy& policy = levels_[request.priority_level].policy;
  uint64_t timeout_us = policy.default_timeout_us;
  // An override may only shorten the timeout; with no default, any timeout is shorter.
  if (policy.allow_timeout_override && request.timeout_us != 0 &&
      (timeout_us == 0 || request.timeout_us < timeout_us)) {
    timeout_us = request.timeout_us;
  }
  return timeout_us == 0 ? 0 : now_ns + timeout_us * 1000;
}

void DynamicBatcher::Add(InferRequest* request) {
  levels_[request->priority_level].queue.push_back(request);
  ++queued_;
}

bool DynamicBatcher::SameShapes(const InferRequest& a, const InferRequest& b) const {
  auto find = [](const InferRequest& r, const std::string& name) -> const TensorView* {
    for (const auto& t : r.inputs) {
      if (t.name == name) return &t;
    }
    return nullptr;
  };
  for (const auto& name : options_.equal_shape_inputs) {
    const TensorView* x = find(a, name);
    const TensorView* y = find(b, name);
    if ((x == nullptr) != (y == nullptr)) return false;
    if (x == nullptr) continue;
    // The batch dimension may differ; everything after it must not.
    if (x->shape.size() != y->shape.size() ||
        !std::equal(x->shape.begin() + (x->shape.empty() ? 0 : 1), x->shape.end(),
                    y->shape.begin() + (y->shape.empty() ? 0 : 1))) {
      return false;
    }
  }
  if (options_.equal_input_sets) {
    if (a.inputs.size() != b.inputs.size()) return false;
    for (const auto& t : a.inputs) {
      if (find(b, t.name) == nullptr) return false;
    }
  }
  return true;
}

void DynamicBatcher::Purge(uint64_t now_ns, Decision* decision) {
  PurgeLevels(now_ns, decision);
  // No instance is idle: arrivals change nothing until one is.
  units_that_matter_ = arrivals_only_grow_ && queued_ > 0 ? UINT64_MAX : 1;
  Departed(decision->rejected);
  Departed(decision->cancelled);
}

void DynamicBatcher::PurgeLevels(uint64_t now_ns, Decision* decision) {
  for (Level& level : levels_) {
    // Delayed requests only leave when cancelled; queued ones also when past their deadline,
    // all in one pass.
    auto cancelled = std::stable_partition(level.delayed.begin(), level.delayed.end(),
                                           [](const InferRequest* r) { return !r->Cancelled(); });
    decision->cancelled.insert(decision->cancelled.end(), cancelled, level.delayed.end());
    queued_ -= level.delayed.end() - cancelled;
    level.delayed.erase(cancelled, level.delayed.end());
    std::deque<InferRequest*> kept;
    for (InferRequest* request : level.queue) {
      if (request->Cancelled()) {
        decision->cancelled.push_back(request);
        --queued_;
      } else if (request->deadline_ns == 0 || now_ns < request->deadline_ns) {
        kept.push_back(request);
      } else if (level.policy.delay_on_timeout) {
        request->deadline_ns = 0;  // delayed once; it is served, never rejected, from here
        level.delayed.push_back(request);
      } else {
        decision->rejected.push_back(request);
        --queued_;
      }
    }
    level.queue.swap(kept);
  }
  const uint64_t deadline = ClosestDeadline();
  decision->wait_ns = deadline != 0 ? deadline - now_ns : 0;
}

void DynamicBatcher::TakeAll(std::vector<InferRequest*>* requests) {
  const size_t first = requests->size();
  for (Level& level : levels_) {
    for (auto* queue : {&level.queue, &level.delayed}) {
      requests->insert(requests->end(), queue->begin(), queue->end());
      queue->clear();
    }
  }
  queued_ = 0;
  for (size_t i = first; i < requests->size(); ++i) Withdraw(*(*requests)[i]);
}

uint64_t DynamicBatcher::ClosestDeadline() const {
  uint64_t closest = 0;
  for (const Level& level : levels_) {
    for (const InferRequest* request : level.queue) {
      if (request->deadline_ns != 0 && (closest == 0 || request->deadline_ns < closest)) {
        closest = request->deadline_ns;
      }
    }
  }
  return closest;
}

void DynamicBatcher::Form(uint64_t now_ns, bool flush, int /*idle_instances*/,
                          Decision* decision) {
  FormBatch(now_ns, flush, decision);
  Departed(decision->batch);
  Departed(decision->rejected);
  Departed(decision->cancelled);
}

void DynamicBatcher::FormBatch(uint64_t now_ns, bool flush, Decision* decision) {
  units_that_matter_ = 1;
  PurgeLevels(now_ns, decision);
  if (queued_ == 0) return;

  // Walk the queued requests in service order (priority level, then arrival, delayed last
  // within a level), growing the pending batch as Triton's GetDynamicBatch does.
  std::vector<InferRequest*> order;
  order.reserve(queued_);
  for (const Level& level : levels_) {
    order.insert(order.end(), level.queue.begin(), level.queue.end());
    order.insert(order.end(), level.delayed.begin(), level.delayed.end());
  }
  uint32_t pending_size = 0;
  size_t pending_count = 0;
  size_t best_count = 0;  // the batch to send if the delay allows: a preferred size, or all
                          // that fits under the largest preferred size
  bool send_now = false;
  for (InferRequest* request : order) {
    const uint32_t size = std::max<uint32_t>(request->batch_size, 1);
    if (pending_count > 0) {
      if (pending_size + size > max_preferred_ && best_count == 0) best_count = pending_count;
      if (pending_size + size > options_.max_batch_size ||
          !SameShapes(*order.front(), *request)) {
        send_now = true;
        break;
      }
    }
    pending_size += size;
    ++pending_count;
    if (std::binary_search(preferred_.begin(), preferred_.end(), pending_size)) {
      best_count = pending_count;
    }
  }

  uint64_t oldest_ns = now_ns;
  for (size_t i = 0; i < pending_count; ++i) oldest_ns = std::min(oldest_ns, order[i]->enqueue_ns);
  const uint64_t waited_ns = now_ns - oldest_ns;
  const bool delay_exceeded = delay_ns_ != 0 && waited_ns >= delay_ns_;

  size_t send = 0;
  if (best_count != 0 && !delay_exceeded) {
    send = best_count;
  } else if (send_now || pending_size >= max_preferred_ || delay_exceeded || delay_ns_ == 0 ||
             flush) {
    send = pending_count;
  }

  if (send == 0) {
    if (arrivals_only_grow_) {  // the whole queue is pending: the next preferred size sends
      units_that_matter_ = *std::upper_bound(preferred_.begin(), preferred_.end(), pending_size) -
                           pending_size;
    }
    decision->wait_ns = delay_ns_ - waited_ns;
    const uint64_t deadline = ClosestDeadline();
    if (deadline != 0) decision->wait_ns = std::min(decision->wait_ns, deadline - now_ns);
    return;
  }
  // The batch is a prefix of the walk: take it off the fronts of the queues in walk order.
  decision->batch.assign(order.begin(), order.begin() + send);
  size_t left = send;
  for (Level& level : levels_) {
    for (auto* queue : {&level.queue, &level.delayed}) {
      while (left > 0 && !queue->empty()) {
        queue->pop_front();
        --left;
      }
    }
  }
  queued_ -= send;
}

}  // namespace pyserve
