// Model: one served model version on the data path. Submit() checks a request against the
// model's spec and hands it to the version's scheduler; each batch's outputs are split per
// request and handed to the requests' sinks (in arrival order under preserve_ordering), with
// request counts kept for metrics. The backend's compute is a BatchCompute.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>

#include "model_spec.h"
#include "request.h"
#include "response.h"
#include "response_sender.h"
#include "scheduler.h"
#include "stats.h"
#include "status.h"

namespace pyserve {

class LatencySummaries;
class ResponseCache;

class BatchCompute {
 public:
  virtual ~BatchCompute() = default;
  // Runs the backend on a batch; may stamp batch.times.infer_start and infer_end.
  virtual Status Compute(Batch& batch, BatchOutputs* outputs) = 0;
};

// How a scheduler other than the instance scheduler (an ensemble's) answers the model's
// requests: Respond takes outputs computed elsewhere through the model's own delivery
// (requested outputs, classification, shared memory, ordering, counts), as a batch's would.
class ModelResponder : public Executor {
 public:
  virtual void Respond(Batch& batch, const BatchOutputs& outputs) = 0;
  // A decoupled version's way to answer `request` any number of times (an ensemble with a
  // decoupled step): the request is in flight until the sender's final response.
  virtual std::shared_ptr<ResponseSender> OpenSender(InferRequest& request) = 0;
};

// Makes a version's RequestScheduler, which answers through `responder`.
using SchedulerFactory = std::function<Status(std::shared_ptr<ModelResponder> responder,
                                              std::unique_ptr<RequestScheduler>* scheduler)>;

// Why a request failed: the `reason` label of Triton's nv_inference_request_failure.
enum class FailureReason : uint8_t { kRejected, kCanceled, kBackend, kOther, kCount };
const char* FailureReasonName(FailureReason reason);

// Triton's per-model request counters (nv_inference_request_success/failure/duration_us).
struct RequestCounts {
  uint64_t success = 0;
  uint64_t failure[static_cast<int>(FailureReason::kCount)] = {};
  uint64_t success_ns = 0;  // enqueue to response, summed over successful requests
};

class Model {
 public:
  static Status Create(const ModelSpec& spec, const SchedulerOptions& options,
                       std::shared_ptr<BatchCompute> compute, std::shared_ptr<Model>* model);
  // A version whose requests another scheduler runs (an ensemble's steps), not instances.
  static Status Create(const ModelSpec& spec, const SchedulerFactory& make_scheduler,
                       std::shared_ptr<Model>* model);
  ~Model();

  const ModelSpec& spec() const;
  // On success the model owns the request and its sink will get exactly one final completion
  // (a decoupled model may send non-final ones before it); on failure the request stays with
  // the caller and nothing is delivered.
  Status Submit(std::unique_ptr<InferRequest>& request);
  // Refuses new requests and answers every accepted one (a decoupled model's: until their
  // final responses); with a timeout, see Scheduler::Stop (false: an instance was abandoned,
  // and the scheduler is kept alive for it); requests a decoupled model has not ended by
  // then are answered UNAVAILABLE.
  bool Stop(double timeout_seconds = -1);
  // Requests accepted and not yet ended: the scheduler's, and a decoupled model's requests
  // whose final response is still to come.
  uint64_t InflightCount() const;
  // A decoupled model's responses by their index within their request.
  std::map<uint64_t, ResponseStats> ResponseStatistics() const;

  const RequestScheduler& scheduler() const { return *scheduler_; }
  RequestCounts Counts() const;

  // Answers repeated requests from the server's response cache and stores this version's
  // responses in it (config `response_cache { enable: true }`). Called before any Submit.
  void EnableCache(std::shared_ptr<ResponseCache> cache);
  // The scheduler's statistics, with the cache's hits and misses (Triton counts a hit as a
  // successful request, with no execution).
  ModelStats Statistics() const;
  // Keeps latency samples for Triton's summary metrics (before any Submit); null until then.
  void EnableSummaries();
  const LatencySummaries* Summaries() const;

  struct State;

 private:
  Model() = default;
  std::shared_ptr<State> state_;
  std::unique_ptr<RequestScheduler> scheduler_;
  bool abandoned_ = false;
};

}  // namespace pyserve
