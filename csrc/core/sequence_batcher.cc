#include "sequence_batcher.h"

#include <algorithm>
#include <cstdio>
#include <limits>

namespace pyserve {

namespace {

std::string IdText(const CorrelationId& id) {
  return id.is_text ? id.text : std::to_string(id.number);
}

uint64_t ElementCount(const std::vector<int64_t>& shape) {
  uint64_t elements = 1;
  for (int64_t dim : shape) elements *= static_cast<uint64_t>(std::max<int64_t>(dim, 0));
  return elements;
}

}  // namespace

SequenceBatcher::SequenceBatcher(std::string model_name, SequenceBatchingOptions options,
                                 std::shared_ptr<StateWaker> waker)
    : model_name_(std::move(model_name)), options_(std::move(options)), waker_(std::move(waker)) {
  options_.instance_count = std::max(options_.instance_count, 1);
  const uint32_t rows = std::max<uint32_t>(options_.max_batch_size, 1);
  slots_per_instance_ = options_.oldest && options_.max_candidate_sequences > 0
                            ? options_.max_candidate_sequences
                            : rows;
  delay_ns_ = options_.max_queue_delay_us * 1000;
  idle_ns_ = (options_.max_sequence_idle_us != 0 ? options_.max_sequence_idle_us : 1000000) * 1000;
  for (uint32_t size : options_.preferred_batch_sizes) {
    if (size >= 1 && size <= rows) preferred_.push_back(size);
  }
  if (preferred_.empty()) preferred_.push_back(rows);
  std::sort(preferred_.begin(), preferred_.end());
  if (!options_.states.empty()) {
    states_ = std::make_shared<const std::vector<StateSpec>>(std::move(options_.states));
  }

  slots_.assign(options_.instance_count, std::vector<Slot>(slots_per_instance_));
  active_.resize(options_.instance_count);
  busy_.assign(options_.instance_count, false);
  for (uint32_t slot = 0; slot < slots_per_instance_; ++slot) {
    for (int instance = 0; instance < options_.instance_count; ++instance) {
      free_.push(SlotRef{instance, slot});
    }
  }
}

SequenceBatcher::Key SequenceBatcher::KeyOf(const InferRequest& request) {
  const CorrelationId& id = request.correlation_id;
  return id.is_text ? Key{0, id.text, true} : Key{id.number, {}, false};
}

Status SequenceBatcher::Admit(InferRequest& request, uint64_t /*now_ns*/) {
  if (options_.iterative && !request.correlation_id.Present()) {  // as Triton's IterativeSequencer
    request.correlation_id = CorrelationId{};
    request.correlation_id.number = next_iterative_id_.fetch_add(1, std::memory_order_relaxed);
    request.flags = kSequenceStart;
  }
  Status status = CheckCorrelationIdType(options_.controls, model_name_, request);
  if (!status.ok()) return status;
  if (request.batch_size > 1) {
    return Status(StatusCode::kInvalidArg,
                  "inference request to model '" + model_name_ +
                      "' must specify batch-size 1 due to requirements of sequence batcher");
  }
  if (!request.correlation_id.Present()) {
    return Status(StatusCode::kInvalidArg,
                  "inference request to model '" + model_name_ +
                      "' must specify a non-zero or non-empty correlation ID");
  }
  return Status::OK();
}

void SequenceBatcher::Add(InferRequest* request) {
  if (request->rescheduled) {  // its next iteration gets control and state inputs anew
    request->inputs.resize(request->inputs.size() - options_.controls.size() -
                           (states_ ? states_->size() : 0));
  }
  const Key key = KeyOf(*request);
  const bool start = (request->flags & kSequenceStart) != 0;
  const bool end = (request->flags & kSequenceEnd) != 0;
  auto held = sequences_.find(key);
  auto waiting = backlogged_.find(key);
  const bool known = held != sequences_.end() || waiting != backlogged_.end();
  if (!start && !known) {
    refused_.emplace_back(request,
                          Status(StatusCode::kInvalidArg,
                                 "inference request for sequence " + IdText(request->correlation_id) +
                                     " to model '" + model_name_ +
                                     "' must specify the START flag on the first request of "
                                     "the sequence"));
    return;
  }
  if (start && known) {
    std::fprintf(stderr,
                 "pyserve: sequence %s for model '%s' has a conflict. The previous sequence did "
                 "not end before this sequence start. Previous sequence will be terminated "
                 "early.\n",
                 IdText(request->correlation_id).c_str(), model_name_.c_str());
  }
  ++queued_;
  if (held != sequences_.end()) {  // its slot; an END frees the key for a new sequence
    Slot& slot = At(held->second);
    slot.queue.push_back(request);
    slot.last_ns = request->enqueue_ns;
    if (end) sequences_.erase(held);
    return;
  }
  if (waiting != backlogged_.end()) {
    waiting->second->queue.push_back(request);
    if (end) {
      waiting->second->ended = true;
      backlogged_.erase(waiting);
    }
    return;
  }
  if (!free_.empty()) {
    const SlotRef ref = free_.top();
    free_.pop();
    Slot& slot = At(ref);
    Activate(ref);
    slot.key = key;
    slot.last_ns = request->enqueue_ns;
    slot.queue.push_back(request);
    if (!end) sequences_.emplace(key, ref);
    return;
  }
  backlog_.push_back(std::make_unique<Backlog>());
  Backlog& backlog = *backlog_.back();
  backlog.key = key;
  backlog.ended = end;
  backlog.queue.push_back(request);
  if (!end) backlogged_.emplace(key, &backlog);
}

// The slot's sequence has ended (or was let go): the oldest backlogged sequence takes it over.
void SequenceBatcher::Release(SlotRef ref, uint64_t now_ns) {
  Slot& slot = At(ref);
  slot.state.reset();  // a request still in flight holds it until it has run
  if (backlog_.empty()) {
    Deactivate(ref);
    free_.push(ref);
    return;
  }
  std::unique_ptr<Backlog> next = std::move(backlog_.front());
  backlog_.pop_front();
  slot.key = next->key;
  slot.last_ns = std::max(now_ns, next->queue.back()->enqueue_ns);
  slot.queue = std::move(next->queue);
  if (!next->ended) {
    backlogged_.erase(next->key);
    sequences_[next->key] = ref;
  }
}

void SequenceBatcher::Activate(SlotRef ref) {
  Slot& slot = At(ref);
  slot.position = static_cast<uint32_t>(active_[ref.instance].size());
  active_[ref.instance].push_back(ref.slot);
}

void SequenceBatcher::Deactivate(SlotRef ref) {
  Slot& slot = At(ref);
  std::vector<uint32_t>& active = active_[ref.instance];
  const uint32_t moved = active.back();  // takes the released one's place
  active[slot.position] = moved;
  slots_[ref.instance][moved].position = slot.position;
  active.pop_back();
}

void SequenceBatcher::ReapIdle(uint64_t now_ns, bool flush, Decision* decision) {
  for (auto& [request, status] : refused_) decision->refused.emplace_back(request, std::move(status));
  refused_.clear();
  // A cancelled request ends its sequence: what else the sequence has queued is cancelled too.
  for (auto it = backlog_.begin(); it != backlog_.end();) {
    auto& queue = (*it)->queue;
    if (std::none_of(queue.begin(), queue.end(), [](auto* r) { return r->Cancelled(); })) {
      ++it;
      continue;
    }
    decision->cancelled.insert(decision->cancelled.end(), queue.begin(), queue.end());
    queued_ -= queue.size();
    auto open = backlogged_.find((*it)->key);
    if (open != backlogged_.end() && open->second == it->get()) backlogged_.erase(open);
    it = backlog_.erase(it);
  }
  for (int instance = 0; instance < options_.instance_count; ++instance) {
    // Backwards: a release moves the last entry into its place, which has been seen already.
    for (size_t k = active_[instance].size(); k-- > 0;) {
      const uint32_t index = active_[instance][k];
      const SlotRef ref{instance, index};
      Slot& slot = At(ref);
      const bool cancelled =
          std::any_of(slot.queue.begin(), slot.queue.end(), [](auto* r) { return r->Cancelled(); });
      // Idle: nothing queued for max_sequence_idle_microseconds (or the scheduler is stopping,
      // and what is queued must get slots).
      const bool idle = slot.queue.empty() && (flush || now_ns - slot.last_ns >= idle_ns_);
      if (!cancelled && !idle) continue;
      decision->cancelled.insert(decision->cancelled.end(), slot.queue.begin(), slot.queue.end());
      queued_ -= slot.queue.size();
      slot.queue.clear();
      auto held = sequences_.find(slot.key);
      if (held != sequences_.end() && held->second.instance == instance &&
          held->second.slot == index) {
        sequences_.erase(held);
      }
      Release(ref, now_ns);
    }
  }
  Wake(NextIdleNs(now_ns), decision);
}

uint64_t SequenceBatcher::NextIdleNs(uint64_t now_ns) const {
  uint64_t next = 0;
  for (int instance = 0; instance < options_.instance_count; ++instance) {
    for (uint32_t index : active_[instance]) {
      const Slot& slot = slots_[instance][index];
      if (!slot.queue.empty()) continue;
      const uint64_t at = slot.last_ns + idle_ns_;
      const uint64_t wait = at > now_ns ? at - now_ns : 1;
      if (next == 0 || wait < next) next = wait;
    }
  }
  return next;
}

void SequenceBatcher::Wake(uint64_t wait_ns, Decision* decision) const {
  if (wait_ns != 0 && (decision->wait_ns == 0 || wait_ns < decision->wait_ns)) {
    decision->wait_ns = wait_ns;
  }
}

void SequenceBatcher::Purge(uint64_t now_ns, Decision* decision) {
  ReapIdle(now_ns, false, decision);
}

void SequenceBatcher::Form(uint64_t now_ns, bool flush, int /*idle_instances*/,
                           Decision* decision) {
  ReapIdle(now_ns, flush, decision);
  for (int instance = 0; instance < options_.instance_count && decision->batch.empty(); ++instance) {
    if (busy_[instance]) continue;
    if (options_.oldest) {
      FormOldest(instance, now_ns, flush, decision);
    } else {
      FormDirect(instance, now_ns, flush, decision);
    }
    if (!decision->batch.empty()) {
      decision->instance = instance;
      busy_[instance] = true;
    }
  }
}

void SequenceBatcher::InstanceDone(int instance) { busy_[instance] = false; }

size_t SequenceBatcher::StateCount() const {
  size_t count = 0;
  for (const auto& slots : slots_) {
    for (const Slot& slot : slots) count += slot.state != nullptr;
  }
  return count;
}

bool SequenceBatcher::Ready(const Slot& slot) {
  return !slot.queue.empty() && (!slot.state || slot.state->Settled() ||
                                 (slot.queue.front()->flags & kSequenceStart) != 0);
}

// The front request of a slot joins the batch, with its control inputs; its END frees the slot.
void SequenceBatcher::Take(SlotRef ref, uint64_t now_ns, Decision* decision) {
  Slot& slot = At(ref);
  InferRequest* request = slot.queue.front();
  slot.queue.pop_front();
  --queued_;
  AddControlInputs(options_.controls, options_.max_batch_size > 0, request);
  if (states_) {  // a START begins from the initial state, even where a sequence conflicted
    if (!slot.state || (request->flags & kSequenceStart) != 0) {
      slot.state = std::make_shared<SequenceState>(states_, waker_);
    }
    slot.state->AddInputs(request);
    request->sequence_state = slot.state;
  }
  decision->batch.push_back(request);
  if ((request->flags & kSequenceEnd) != 0) Release(ref, now_ns);
}

// A row for an empty slot: the first `own_inputs` inputs of `like` (their shapes and types),
// zeros, READY false. Its copies share the bytes.
std::unique_ptr<InferRequest> SequenceBatcher::Padding(const InferRequest& like,
                                                       size_t own_inputs) const {
  auto padding = std::make_unique<InferRequest>();
  padding->padding = true;
  padding->answered.store(true);
  padding->enqueue_ns = like.enqueue_ns;
  padding->inputs.assign(like.inputs.begin(), like.inputs.begin() + own_inputs);
  size_t largest = 1;
  for (TensorView& view : padding->inputs) {
    // BYTES: each element an empty string (its 4-byte length, 0).
    if (view.dtype == DataType::kBytes) view.byte_size = ElementCount(view.shape) * 4;
    largest = std::max(largest, view.byte_size);
  }
  auto zeros = std::make_shared<std::string>(largest, '\0');
  for (TensorView& view : padding->inputs) view.data = reinterpret_cast<const uint8_t*>(zeros->data());
  padding->held.push_back(std::move(zeros));
  AddControlInputs(options_.controls, options_.max_batch_size > 0, padding.get());
  if (states_) SequenceState::AddInitialInputs(*states_, padding.get());
  return padding;
}

InferRequest* SequenceBatcher::CopyOf(const InferRequest& padding) {
  auto* copy = new InferRequest();
  copy->padding = true;
  copy->answered.store(true);
  copy->enqueue_ns = padding.enqueue_ns;
  copy->inputs = padding.inputs;
  copy->held = padding.held;
  return copy;
}

void SequenceBatcher::FormDirect(int instance, uint64_t now_ns, bool flush, Decision* decision) {
  std::vector<Slot>& slots = slots_[instance];
  int highest = -1;
  uint32_t lowest = slots_per_instance_;
  size_t ready = 0;
  uint64_t earliest = std::numeric_limits<uint64_t>::max();
  for (uint32_t i : active_[instance]) {
    if (!Ready(slots[i])) continue;
    earliest = std::min(earliest, slots[i].queue.front()->enqueue_ns);
    highest = std::max(highest, static_cast<int>(i));
    lowest = std::min(lowest, i);
    ++ready;
  }
  if (highest < 0) return;
  const InferRequest* like = slots[lowest].queue.front();
  // With a delay and a minimum utilization, too few ready slots wait for the delay.
  if (delay_ns_ != 0 && options_.minimum_slot_utilization > 0 && !flush) {
    const uint64_t waited = now_ns - std::min(now_ns, earliest);
    const float utilization = static_cast<float>(ready) / std::max<uint32_t>(options_.max_batch_size, 1);
    if (waited <= delay_ns_ && utilization < options_.minimum_slot_utilization) {
      Wake(delay_ns_ - waited + 1, decision);
      return;
    }
  }
  // Padding copies the first ready request's own inputs (counted before it gets its controls).
  const size_t like_inputs = like->inputs.size();
  std::unique_ptr<InferRequest> padding;
  for (int i = 0; i <= highest; ++i) {
    if (!Ready(slots[i])) {
      if (!padding) padding = Padding(*like, like_inputs);
      decision->batch.push_back(CopyOf(*padding));
    } else {
      Take(SlotRef{instance, static_cast<uint32_t>(i)}, now_ns, decision);
    }
  }
}

void SequenceBatcher::FormOldest(int instance, uint64_t now_ns, bool flush, Decision* decision) {
  std::vector<Slot>& slots = slots_[instance];
  std::vector<std::pair<uint64_t, uint32_t>> ready;  // (front's arrival, slot), oldest first
  for (uint32_t i : active_[instance]) {
    if (Ready(slots[i])) ready.emplace_back(slots[i].queue.front()->enqueue_ns, i);
  }
  if (ready.empty()) return;
  std::sort(ready.begin(), ready.end());
  const size_t rows = std::max<uint32_t>(options_.max_batch_size, 1);
  const size_t count = std::min(ready.size(), rows);
  size_t best = 0;  // the largest preferred size there are requests for
  for (uint32_t size : preferred_) {
    if (size <= count) best = size;
  }
  const uint64_t waited = now_ns - std::min(now_ns, ready.front().first);
  const bool delay_exceeded = delay_ns_ != 0 && waited >= delay_ns_;
  size_t send = 0;
  if (best != 0 && !delay_exceeded) {
    send = best;
  } else if (count >= preferred_.back() || delay_exceeded || delay_ns_ == 0 || flush) {
    send = count;
  }
  if (send == 0) {
    Wake(delay_ns_ - waited, decision);
    return;
  }
  for (size_t i = 0; i < send; ++i) Take(SlotRef{instance, ready[i].second}, now_ns, decision);
}

void SequenceBatcher::TakeAll(std::vector<InferRequest*>* requests) {
  for (auto& [request, status] : refused_) requests->push_back(request);
  refused_.clear();
  for (auto& slots : slots_) {
    for (Slot& slot : slots) {
      requests->insert(requests->end(), slot.queue.begin(), slot.queue.end());
      slot.queue.clear();
      slot.state.reset();
    }
  }
  for (auto& backlog : backlog_) {
    requests->insert(requests->end(), backlog->queue.begin(), backlog->queue.end());
  }
  backlog_.clear();
  backlogged_.clear();
  queued_ = 0;
}

// The backend released the sequence's request without RESCHEDULE: its slot is free, unless
// the client has sent the sequence more requests meanwhile.
void SequenceBatcher::SequenceEnded(const CorrelationId& id, uint64_t now_ns) {
  const Key key = id.is_text ? Key{0, id.text, true} : Key{id.number, {}, false};
  auto held = sequences_.find(key);
  if (held == sequences_.end() || !At(held->second).queue.empty()) return;
  const SlotRef ref = held->second;
  sequences_.erase(held);
  Release(ref, now_ns);
}

bool SequenceBatcher::Holding(size_t delay_count) const {
  size_t backlogged = 0;
  for (const auto& backlog : backlog_) backlogged += backlog->queue.size();
  return queued_ - backlogged < delay_count || backlogged < options_.backlog_delay_count;
}

}  // namespace pyserve
