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
#pragma once

#include <cstdint>
#include <memory>
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

class SequenceState {
 public:
  // A sequence's state at START.
  explicit SequenceState(std::shared_ptr<const std::vector<StateSpec>> specs);

  // Appends one input per state to `request` (views of the current tensors, held by it).
  void AddInputs(InferRequest* request) const;

  // The initial states as inputs of a request that holds no sequence (a padding row).
  static void AddInitialInputs(const std::vector<StateSpec>& specs, InferRequest* request);

  // Takes state `index` from `produced` (one request's output, copied).
  void Update(size_t index, const OutputTensor& produced);

  const std::vector<StateSpec>& specs() const { return *specs_; }

 private:
  struct Tensor {
    std::vector<int64_t> shape;
    std::shared_ptr<const std::string> bytes;
  };
  static void Append(const StateSpec& spec, const Tensor& tensor, InferRequest* request);

  std::shared_ptr<const std::vector<StateSpec>> specs_;
  std::vector<Tensor> tensors_;
};

// After a batch has run: each request that holds a sequence state takes its state outputs
// from what the model produced for it (a state output the model did not produce leaves that
// state as it was, as in Triton). Fails when a batch output cannot be split by the requests.
Status UpdateSequenceStates(const std::string& model_name, const Batch& batch,
                            const BatchOutputs& outputs);

}  // namespace pyserve
