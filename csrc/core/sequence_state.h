// Implicit state (sequence_batching.state): tensors the core keeps for a sequence between its
// requests. Each request of the sequence gets the state as an ordinary input (`input_name`);
// the model's `output_name` output for that request becomes the input of the next one. At
// START the state is the initial one: the config's initial_state (zeros or the contents of a
// file in the model's initial_state/ folder), else zeros with every variable dimension 1.
//
// A SequenceState belongs to one sequence (the sequence batcher keeps it with the sequence's
// slot and drops it when the slot is released). The batcher thread reads it when a request
// joins a batch; the instance's worker replaces its tensors after the batch has run. The two
// never overlap: a sequence has one request in flight at most, and the batcher hears that the
// instance is done only after the worker has finished the batch.
//
// A decoupled model answers through its response sender, from any thread, possibly after the
// batch has ended: the request's state is then the sender's from Await (before the model
// runs) until Settle (its final response, or its release for RESCHEDULE), and the batcher
// leaves the sequence's next request queued until then. The state the next request sees is
// the one the last response carrying the state output left, sent before or with the final
// flag (a request whose responses carry none leaves the state as it was).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "request.h"
#include "response.h"
#include "status.h"

namespace pyserve {

struct StateSpec {
  std::string input_name;
  std::string output_name;
  DataType dtype = DataType::kInvalid;
  // The state at START: its shape (with the batch dimension 1 for a model that batches) and
  // bytes, shared by every sequence of the model.
  std::vector<int64_t> initial_shape;
  std::shared_ptr<const std::string> initial;
};

// Wakes the batcher thread when a state settles (called on the thread that sent the final
// response); the scheduler cuts it before it goes away, as late senders may outlive it.
class StateWaker {
 public:
  explicit StateWaker(std::function<void()> wake) : wake_(std::move(wake)) {}
  void Wake() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (wake_) wake_();
  }
  void Cut() {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_ = nullptr;
  }

 private:
  std::mutex mutex_;
  std::function<void()> wake_;
};

class SequenceState {
 public:
  // A sequence's state at START. `waker` (may be null) is told when the state settles.
  explicit SequenceState(std::shared_ptr<const std::vector<StateSpec>> specs,
                         std::shared_ptr<StateWaker> waker = nullptr);

  // Appends one input per state to `request` (views of the current tensors, held by it).
  void AddInputs(InferRequest* request) const;

  // The initial states as inputs of a request that holds no sequence (a padding row).
  static void AddInitialInputs(const std::vector<StateSpec>& specs, InferRequest* request);

  // Takes state `index` from `produced` (one request's output, copied).
  void Update(size_t index, const OutputTensor& produced);
  // Takes every state output that `produced` (one request's outputs) holds.
  void UpdateFrom(const std::vector<OutputTensor>& produced);

  // A decoupled model's request holds the state until Settle (see above).
  void Await() { settled_.store(false, std::memory_order_release); }
  void Settle();
  bool Settled() const { return settled_.load(std::memory_order_acquire); }

  const std::vector<StateSpec>& specs() const { return *specs_; }

 private:
  struct Tensor {
    std::vector<int64_t> shape;
    std::shared_ptr<const std::string> bytes;
  };
  static void Append(const StateSpec& spec, const Tensor& tensor, InferRequest* request);

  std::shared_ptr<const std::vector<StateSpec>> specs_;
  std::shared_ptr<StateWaker> waker_;
  std::vector<Tensor> tensors_;
  std::atomic<bool> settled_{true};
};

// After a batch has run: each request that holds a sequence state takes its state outputs
// from what the model produced for it (a state output the model did not produce leaves that
// state as it was, as in Triton). Fails when a batch output cannot be split by the requests.
Status UpdateSequenceStates(const std::string& model_name, const Batch& batch,
                            const BatchOutputs& outputs);

}  // namespace pyserve
