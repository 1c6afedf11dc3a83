// ModelSpec: what the data path needs to know of a model's config to check requests and shape
// responses. Filled once per model version by the Python shell from the normalized config.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "request.h"

namespace pyserve {

struct TensorSpec {
  std::string name;
  DataType dtype = DataType::kInvalid;
  std::vector<int64_t> dims;  // without the batch dimension; -1 = variable
  bool optional = false;
  bool has_reshape = false;
  std::vector<int64_t> reshape;  // what the model sees (inputs) or computes (outputs)
};

struct ModelSpec {
  std::string name;
  int64_t version = 0;
  uint32_t max_batch_size = 0;  // 0 = the model does not batch
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  // sequence_batching.state outputs: always taken from the model for the core's implicit
  // state; answered to clients only when the config lists them as outputs too.
  std::vector<TensorSpec> state_outputs;
  std::map<std::string, std::vector<std::string>> labels;  // per output, for classification
  bool preserve_ordering = false;
  bool request_info = false;  // the backend reads each request's id, parameters and outputs
  // model_transaction_policy { decoupled: true }: the backend answers each request through a
  // ResponseSender (any number of responses, then a final one), not from the batch's outputs.
  bool decoupled = false;

  const TensorSpec* FindInput(const std::string& input) const;
  const TensorSpec* FindOutput(const std::string& output) const;
  bool IsStateOutput(const std::string& output) const;
};

// Triton's reshape of a shape that follows `source` into `target`: each -1 of `target` takes
// the next variable dimension of the shape; a batching model's first dimension stays.
std::vector<int64_t> Reshaped(const std::vector<int64_t>& shape,
                              const std::vector<int64_t>& source,
                              const std::vector<int64_t>& target, bool batching);

}  // namespace pyserve
