// From a batch's outputs to one response per request: the per-request slices of batch outputs,
// the outputs each client asked for, config reshapes undone, Triton's classification extension.
#pragma once

#include <vector>

#include "model_spec.h"
#include "request.h"
#include "response.h"
#include "status.h"

namespace pyserve {

// Fills one response per request of `batch`, in order. Returns an error (and fails every
// response) when the outputs cannot be split by the batch's requests.
Status SplitOutputs(const ModelSpec& spec, const Batch& batch, const BatchOutputs& outputs,
                    std::vector<InferResponse>* responses);

// One request's response from outputs that are its own (a decoupled model's response): what
// SplitOutputs does for each request of a batch, without the split.
void RespondWith(const ModelSpec& spec, const std::vector<RequestedOutput>& requested,
                 const std::vector<OutputTensor>& produced, InferResponse* response);

// The top `k` classes of each batch item as "value:index[:label]" BYTES elements.
Status Classify(const OutputTensor& values, uint32_t k, const std::vector<std::string>* labels,
                bool batching, OutputTensor* out);

}  // namespace pyserve
