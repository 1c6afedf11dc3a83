// EnsembleScheduler: the RequestScheduler of an ensemble (`platform: "ensemble"`). It runs
// no instances: each step's request goes to the composing model's own Model::Submit, found in
// the ModelTable, so that model's batcher batches ensemble traffic with any other. A step's
// outputs become the next steps' inputs as views of the same memory (held by the step
// request), the final outputs are answered through the ensemble model's own delivery, and a
// step's error ends the ensemble with Triton's "in ensemble 'E', " prefix.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "model.h"
#include "response.h"
#include "stats.h"

namespace pyserve {

class ModelTable;

// One `ensemble_scheduling.step`.
struct EnsembleStep {
  std::string model_name;
  int64_t model_version = -1;  // -1 (or 0, unset): the latest ready version
  std::vector<std::pair<std::string, std::string>> input_map;   // model input -> ensemble tensor
  std::vector<std::pair<std::string, std::string>> output_map;  // model output -> ensemble tensor
  // With --model-namespacing, where the shell resolved the step (Triton's step
  // `model_namespace`); empty: the model requests reach by `model_name`.
  std::string model_namespace;
};

class EnsembleScheduler : public RequestScheduler, private ResponseSink {
 public:
  // `spec` is the ensemble's (its inputs and outputs are ensemble tensors). The steps were
  // checked against the composing models' configs when the ensemble loaded (the shell).
  static Status Create(const ModelSpec& spec, std::vector<EnsembleStep> steps,
                       std::weak_ptr<const ModelTable> table,
                       std::shared_ptr<ModelResponder> responder,
                       std::unique_ptr<RequestScheduler>* scheduler);
  ~EnsembleScheduler() override;

  Status Enqueue(std::unique_ptr<InferRequest>& request) override;
  uint64_t InflightCount() const override { return inflight_.load(std::memory_order_acquire); }
  uint64_t PendingCount() const override { return 0; }  // waiting happens in the steps' models
  ModelStats Statistics() const override;
  bool Stop(double timeout_seconds = -1) override;
  bool Stopping() const override { return stopping_.load(std::memory_order_seq_cst); }

 private:
  struct Value;  // a tensor's value in one iteration
  struct Context;
  struct Plan {  // a step, resolved to tensor indices
    std::string model_namespace;
    std::string model_name;
    std::string version;  // "" = the latest
    std::vector<std::pair<std::string, size_t>> inputs;
    std::vector<std::pair<std::string, size_t>> outputs;
  };

  using Steps = std::vector<std::pair<size_t, uint64_t>>;  // (step, iteration) to run

  EnsembleScheduler() = default;
  size_t TensorIndex(const std::string& name);
  // Submits the steps (their inputs are ready); a step refused at the door fails the ensemble.
  void Launch(const std::shared_ptr<Context>& context, const Steps& steps);
  Status Submit(const std::shared_ptr<Context>& context, size_t step, uint64_t iteration);
  // Step completions (the step models' threads).
  void Deliver(std::vector<Completion>& completions) override;
  // The methods below run with the context's lock held.
  // A step answered (a response, its final one, or its refusal): returns the steps it made
  // ready.
  Steps StepDone(Context& context, size_t step, uint64_t iteration, Completion* completion,
                 const Status& refusal);
  // Stores a tensor's value of an iteration, adding the steps it makes ready; a decoupled
  // ensemble answers each iteration whose outputs are all in.
  void Store(Context& context, size_t tensor, uint64_t iteration,
             const Value& value, Steps* ready);
  bool CollectOutputs(const Context& context, uint64_t iteration,
                      std::vector<OutputTensor>* outputs) const;
  void Respond(Context& context, uint64_t iteration);
  // Answers the ensemble request once its steps are done (a decoupled one: its final flag).
  void FinishIfDone(const std::shared_ptr<Context>& context);
  void Finished();

  std::string name_;
  ModelSpec spec_;
  std::weak_ptr<const ModelTable> table_;
  std::shared_ptr<ModelResponder> responder_;
  std::vector<Plan> steps_;
  std::vector<std::string> tensor_names_;
  std::vector<std::vector<size_t>> consumers_;  // per tensor: the steps that read it
  std::vector<size_t> inputs_, outputs_;        // the ensemble's inputs and outputs, as tensors

  mutable std::mutex stats_mutex_;
  ModelStats stats_;

  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> inflight_{0};
  std::mutex done_mutex_;
  std::condition_variable all_done_;
};

}  // namespace pyserve
