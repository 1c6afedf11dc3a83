#include "model.h"

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "latency_summary.h"
#include "outputs.h"
#include "response_cache.h"
#include "response_sender.h"
#include "sequence_state.h"
#include "trace.h"
#include "validate.h"

namespace pyserve {

namespace {

// Completions for one sink, in order.
using SinkBatch = std::pair<ResponseSink*, std::vector<Completion>>;

void AddTo(std::vector<SinkBatch>& groups, ResponseSink* sink, Completion completion) {
  for (auto& [s, completions] : groups) {
    if (s == sink) {
      completions.push_back(std::move(completion));
      return;
    }
  }
  groups.emplace_back(sink, std::vector<Completion>{});
  groups.back().second.push_back(std::move(completion));
}

// Sinks answer per completion and do not throw; should one still, the scheduler's thread
// (an instance's or the batcher's) must go on, so the error stops here.
void DeliverAll(std::vector<SinkBatch>& groups) {
  for (auto& [sink, completions] : groups) {
    try {
      sink->Deliver(completions);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pyserve: a response sink failed: %s\n", e.what());
    }
  }
}

// Refusals by the scheduler (queue full, timeouts, a stopped model) are REJECTED; what the
// backend fails, BACKEND.
FailureReason ReasonOf(const Status& status) {
  switch (status.code()) {
    case StatusCode::kCancelled: return FailureReason::kCanceled;
    case StatusCode::kUnavailable: return FailureReason::kRejected;
    default: return FailureReason::kBackend;
  }
}

// Each output once, however often it was asked for (Triton keeps a set of the names); a
// repeat's parameters replace the earlier ones'. Linear time; no allocation without repeats
// among the few outputs of most requests.
bool Repeats(const std::vector<RequestedOutput>& outputs) {
  if (outputs.size() > 16) return true;  // the hashed pass below finds out
  for (size_t i = 1; i < outputs.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (outputs[i].name == outputs[j].name) return true;
    }
  }
  return false;
}

void CollapseOutputs(std::vector<RequestedOutput>* outputs) {
  if (!Repeats(*outputs)) return;
  std::vector<RequestedOutput> unique;
  unique.reserve(outputs->size());  // never reallocated: the keys view the kept names
  std::unordered_map<std::string_view, size_t> index(outputs->size() * 2);
  for (RequestedOutput& output : *outputs) {
    auto found = index.find(output.name);
    if (found == index.end()) {
      unique.push_back(std::move(output));
      index.emplace(unique.back().name, unique.size() - 1);
    } else {
      unique[found->second].classification = output.classification;
      unique[found->second].shared_memory = std::move(output.shared_memory);
    }
  }
  *outputs = std::move(unique);
}

}  // namespace

struct Model::State : public ModelResponder,
                      public ResponseSender::Host,
                      public std::enable_shared_from_this<Model::State> {
  ModelSpec spec;
  std::shared_ptr<BatchCompute> compute;
  std::unique_ptr<ModelCache> cache;  // null unless the config enables the response cache
  std::unique_ptr<LatencySummaries> summaries;  // null unless summary metrics are on
  std::atomic<uint64_t> success{0}, success_ns{0};
  std::atomic<uint64_t> failure[static_cast<int>(FailureReason::kCount)] = {};

  void Failed(FailureReason reason) {
    failure[static_cast<int>(reason)].fetch_add(1, std::memory_order_relaxed);
  }

  // preserve_ordering: responses are released in the order requests were accepted.
  std::atomic<uint64_t> issued{0};
  std::mutex order_mutex;
  uint64_t next_release = 0;
  std::map<uint64_t, std::optional<std::pair<ResponseSink*, Completion>>> held;

  // Decoupled models: requests whose sender has not sent its final response yet.
  std::mutex senders_mutex;
  std::condition_variable senders_closed;
  std::unordered_map<ResponseSender*, std::weak_ptr<ResponseSender>> open_senders;
  std::map<uint64_t, ResponseStats> response_stats;  // guarded by senders_mutex

  const ModelSpec& Spec() const override { return spec; }

  void Closed(ResponseSender& sender, const Status& final_status) override {
    if (final_status.ok()) {
      success.fetch_add(1, std::memory_order_relaxed);
      success_ns.fetch_add(SteadyNowNs() - sender.enqueue_ns(), std::memory_order_relaxed);
    } else {
      Failed(ReasonOf(final_status));
    }
    std::lock_guard<std::mutex> lock(senders_mutex);
    open_senders.erase(&sender);
    if (open_senders.empty()) senders_closed.notify_all();
  }

  void Responded(uint64_t index, const Status& status, bool empty, uint64_t start_ns,
                 uint64_t output_ns, uint64_t end_ns) override {
    std::lock_guard<std::mutex> lock(senders_mutex);
    ResponseStats& stats = response_stats[index];
    if (status.code() == StatusCode::kCancelled) {
      stats.cancel.Add(end_ns - start_ns);
    } else if (empty) {
      stats.empty_response.Add(end_ns - start_ns);
    } else {
      if (output_ns != 0) {
        stats.compute_infer.Add(output_ns - start_ns);
        stats.compute_output.Add(end_ns - output_ns);
      }
      (status.ok() ? stats.success : stats.fail).Add(end_ns - start_ns);
    }
  }

  uint64_t OpenSenders() {
    std::lock_guard<std::mutex> lock(senders_mutex);
    return open_senders.size();
  }

  // Waits until every sender has sent its final response, at most until `deadline` (none:
  // for ever); past it, the requests still open are answered with UNAVAILABLE.
  void CloseSenders(std::optional<std::chrono::steady_clock::time_point> deadline) {
    std::vector<std::shared_ptr<ResponseSender>> late;
    {
      std::unique_lock<std::mutex> lock(senders_mutex);
      auto done = [this] { return open_senders.empty(); };
      if (!deadline) {
        senders_closed.wait(lock, done);
      } else if (!senders_closed.wait_until(lock, *deadline, done)) {
        for (auto& [_, weak] : open_senders) {
          if (auto sender = weak.lock()) late.push_back(std::move(sender));
        }
      }
    }
    const Status status(StatusCode::kUnavailable,
                        "model '" + spec.name + "' was unloaded before it sent the final response");
    for (auto& sender : late) sender->Close(status);
  }

  // The backend answers each request through its sender; what Compute returns only says
  // whether execute failed, which ends the requests it has not ended.
  std::shared_ptr<ResponseSender> OpenSender(InferRequest& request) override {
    request.answered.store(true, std::memory_order_release);  // the sender answers it
    auto sender = std::make_shared<ResponseSender>(shared_from_this(), request);
    std::lock_guard<std::mutex> lock(senders_mutex);
    open_senders.emplace(sender.get(), sender);
    return sender;
  }

  Status ExecuteDecoupled(Batch& batch) {
    for (auto& request : batch.requests) {  // a rescheduled request answers on through its own
      batch.senders.push_back(request->sender ? std::move(request->sender) : OpenSender(*request));
      // Its responses carry the sequence's next state (taken before the model can send).
      if (request->sequence_state && !spec.state_outputs.empty()) {
        batch.senders.back()->KeepState(request->sequence_state);
      }
    }
    BatchOutputs outputs;
    Status status = Compute(batch, &outputs);
    if (batch.times.infer_end == 0) batch.times.infer_end = SteadyNowNs();
    if (!status.ok()) {
      batch.reschedule.clear();
      for (auto& sender : batch.senders) sender->Close(status);
    } else {
      for (size_t i = 0; i < batch.reschedule.size(); ++i) {
        if (!batch.reschedule[i]) continue;
        batch.senders[i]->ReleaseState();  // its next iteration gets the state sent so far
        batch.requests[i]->sender = batch.senders[i];
      }
    }
    batch.senders.clear();  // the backend holds the senders it still answers through
    batch.times.output_end = SteadyNowNs();
    return status;
  }

  Status Compute(Batch& batch, BatchOutputs* outputs) {
    try {
      return compute->Compute(batch, outputs);
    } catch (const std::exception& e) {
      return Status(StatusCode::kInternal, std::string("backend failed: ") + e.what());
    } catch (...) {
      return Status(StatusCode::kInternal, "backend failed with an unknown exception");
    }
  }

  Status Execute(Batch& batch) override {
    if (spec.decoupled) return ExecuteDecoupled(batch);
    BatchOutputs outputs;
    Status status = Compute(batch, &outputs);
    if (batch.times.infer_end == 0) batch.times.infer_end = SteadyNowNs();
    return Answer(batch, outputs, status);
  }

  void Respond(Batch& batch, const BatchOutputs& outputs) override {
    Answer(batch, outputs, Status::OK());
  }

  Status Answer(Batch& batch, const BatchOutputs& outputs, Status status) {
    std::vector<InferResponse> responses;
    if (status.ok() && !spec.state_outputs.empty()) {
      status = UpdateSequenceStates(spec.name, batch, outputs);
    }
    if (status.ok()) {
      status = SplitOutputs(spec, batch, outputs, &responses);
    } else {
      responses.assign(batch.requests.size(), InferResponse{status, {}});
    }
    if (!status.ok()) batch.reschedule.clear();  // a failed batch answers every request
    std::vector<InferRequest*> requests;
    for (size_t i = 0; i < batch.requests.size(); ++i) {
      if (i < batch.reschedule.size() && batch.reschedule[i]) {
        responses.erase(responses.begin() + static_cast<std::ptrdiff_t>(requests.size()));
        continue;  // answered by a later iteration
      }
      requests.push_back(batch.requests[i].get());
    }
    Deliver(requests, responses, &batch.times);
    batch.times.output_end = SteadyNowNs();
    if (summaries && status.ok()) summaries->ObserveBatch(batch);
    return status;
  }

  void Reject(const std::vector<InferRequest*>& requests, const Status& status) override {
    std::vector<InferResponse> responses(requests.size(), InferResponse{status, {}});
    Deliver(requests, responses);
  }

  void Deliver(const std::vector<InferRequest*>& requests, std::vector<InferResponse>& responses,
               const BatchTimes* times = nullptr) {
    const uint64_t now = SteadyNowNs();
    std::vector<SinkBatch> groups;
    for (size_t i = 0; i < requests.size(); ++i) {
      InferRequest& request = *requests[i];
      if (request.answered.exchange(true, std::memory_order_acq_rel)) continue;
      if (request.trace) request.trace->AddOutputs(responses[i].outputs);
      if (cache) {  // a miss's response, for later hits
        const uint64_t miss_ns = cache->Store(request, responses[i]);
        if (summaries && miss_ns) summaries->Observe(LatencyPhase::kCacheMiss, miss_ns / 1000, now);
      }
      if (responses[i].status.ok()) {
        success.fetch_add(1, std::memory_order_relaxed);
        success_ns.fetch_add(now - request.enqueue_ns, std::memory_order_relaxed);
      } else {
        Failed(ReasonOf(responses[i].status));
      }
      Completion completion;
      completion.tag = request.id;
      completion.owner = request.owner;
      completion.response = std::move(responses[i]);
      if (times != nullptr) completion.times = *times;
      if (!spec.preserve_ordering) {
        AddTo(groups, request.sink, std::move(completion));
        continue;
      }
      std::lock_guard<std::mutex> lock(order_mutex);
      held[request.sequence].emplace(request.sink, std::move(completion));
    }
    if (!spec.preserve_ordering) {
      DeliverAll(groups);
      return;
    }
    // Delivered under the lock, so that a later batch cannot overtake this one at the sinks.
    std::lock_guard<std::mutex> lock(order_mutex);
    ReleaseInOrder();
  }

  // The response cache's hook at Submit: a hit is answered here, on the caller's thread,
  // without scheduling. (An ensemble does the same at its top level.)
  bool AnswerFromCache(InferRequest& request) {
    const uint64_t start = SteadyNowNs();
    std::vector<InferResponse> responses(1);
    if (!cache->Lookup(request, &responses[0])) return false;
    request.enqueue_ns = start;
    Deliver({&request}, responses);
    const uint64_t now = SteadyNowNs();
    cache->Answered(now - start);
    if (summaries) {  // as Triton: a hit queued for none of its time
      summaries->Observe(LatencyPhase::kQueue, 0, now);
      summaries->Observe(LatencyPhase::kCacheHit, request.cache_lookup_ns / 1000, now);
    }
    return true;
  }

  // A sequence number that will never be answered (its request was refused at the door).
  void Skip(uint64_t sequence) {
    std::lock_guard<std::mutex> lock(order_mutex);
    held[sequence] = std::nullopt;
    ReleaseInOrder();
  }

  void ReleaseInOrder() {  // order_mutex held
    std::vector<SinkBatch> groups;
    while (!held.empty() && held.begin()->first == next_release) {
      auto& entry = held.begin()->second;
      if (entry) AddTo(groups, entry->first, std::move(entry->second));
      held.erase(held.begin());
      ++next_release;
    }
    DeliverAll(groups);
  }
};

Status Model::Create(const ModelSpec& spec, const SchedulerOptions& options,
                     std::shared_ptr<BatchCompute> compute, std::shared_ptr<Model>* model) {
  if (!compute) return Status(StatusCode::kInvalidArg, "model needs a compute");
  auto state = std::make_shared<State>();
  state->spec = spec;
  // A decoupled model's responses go out as they are sent, request by request.
  if (spec.decoupled) state->spec.preserve_ordering = false;
  state->compute = std::move(compute);
  std::shared_ptr<Model> created(new Model());
  created->state_ = state;
  std::unique_ptr<Scheduler> scheduler;
  Status status = Scheduler::Create(options, state, &scheduler);
  if (!status.ok()) return status;
  created->scheduler_ = std::move(scheduler);
  *model = std::move(created);
  return Status::OK();
}

Status Model::Create(const ModelSpec& spec, const SchedulerFactory& make_scheduler,
                     std::shared_ptr<Model>* model) {
  auto state = std::make_shared<State>();
  state->spec = spec;
  std::shared_ptr<Model> created(new Model());
  created->state_ = state;
  Status status = make_scheduler(state, &created->scheduler_);
  if (!status.ok()) return status;
  *model = std::move(created);
  return Status::OK();
}

Model::~Model() {
  if (abandoned_) {
    (void)scheduler_.release();  // a detached instance thread may still use it
  } else if (scheduler_) {
    scheduler_->Stop();
  }
}

const ModelSpec& Model::spec() const { return state_->spec; }

Status Model::Submit(std::unique_ptr<InferRequest>& request) {
  CollapseOutputs(&request->outputs);
  int64_t batch_size = 1;
  Status status = ValidateRequest(state_->spec, *request, &batch_size);
  if (!status.ok()) {
    state_->Failed(FailureReason::kOther);
    return status;
  }
  request->batch_size = static_cast<uint32_t>(batch_size);
  const bool batching = state_->spec.max_batch_size > 0;
  for (TensorView& t : request->inputs) {
    const TensorSpec* input = state_->spec.FindInput(t.name);
    if (input->has_reshape) t.shape = Reshaped(t.shape, input->dims, input->reshape, batching);
  }
  const bool ordered = state_->spec.preserve_ordering;
  if (ordered) request->sequence = state_->issued.fetch_add(1);
  const uint64_t sequence = request->sequence;
  if (state_->cache && !scheduler_->Stopping() && state_->AnswerFromCache(*request)) {
    request.reset();
    return Status::OK();
  }
  status = scheduler_->Enqueue(request);
  if (!status.ok()) {
    state_->Failed(ReasonOf(status));
    if (ordered) state_->Skip(sequence);
  }
  return status;
}

bool Model::Stop(double timeout_seconds) {
  const auto start = std::chrono::steady_clock::now();
  if (!scheduler_->Stop(timeout_seconds)) abandoned_ = true;
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (timeout_seconds >= 0) {
    deadline = start + std::chrono::microseconds(static_cast<int64_t>(timeout_seconds * 1e6));
  }
  state_->CloseSenders(deadline);
  return !abandoned_;
}

std::map<uint64_t, ResponseStats> Model::ResponseStatistics() const {
  std::lock_guard<std::mutex> lock(state_->senders_mutex);
  return state_->response_stats;
}

uint64_t Model::InflightCount() const {
  return scheduler_->InflightCount() + state_->OpenSenders();
}

RequestCounts Model::Counts() const {
  RequestCounts counts;
  counts.success = state_->success.load();
  counts.success_ns = state_->success_ns.load();
  for (int i = 0; i < static_cast<int>(FailureReason::kCount); ++i) {
    counts.failure[i] = state_->failure[i].load();
  }
  return counts;
}

void Model::EnableCache(std::shared_ptr<ResponseCache> cache) {
  state_->cache = std::make_unique<ModelCache>(std::move(cache), state_->spec.name,
                                               state_->spec.version);
}

void Model::EnableSummaries() { state_->summaries = std::make_unique<LatencySummaries>(); }

const LatencySummaries* Model::Summaries() const { return state_->summaries.get(); }

ModelStats Model::Statistics() const {
  ModelStats stats = scheduler_->Statistics();
  if (!state_->cache) return stats;
  const ModelCache::Counts c = state_->cache->counts();
  stats.cache_hit = Duration{c.hits, c.hit_ns};
  stats.cache_miss = Duration{c.misses, c.miss_ns};
  // As Triton: a hit is a success that queued until its lookup; a miss's lookup and insertion
  // add to its request's duration.
  stats.success.count += c.hits;
  stats.success.ns += c.hit_request_ns + c.miss_ns;
  stats.queue.count += c.hits;
  return stats;
}

const char* FailureReasonName(FailureReason reason) {
  switch (reason) {
    case FailureReason::kRejected: return "REJECTED";
    case FailureReason::kCanceled: return "CANCELED";
    case FailureReason::kBackend: return "BACKEND";
    default: return "OTHER";
  }
}

}  // namespace pyserve
