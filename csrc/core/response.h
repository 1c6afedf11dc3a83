// What comes back from a batch: output tensors in native memory, one response per request,
// and the sinks that carry responses to whoever submitted the requests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "request.h"
#include "status.h"

namespace pyserve {

// An output tensor: `data` points into `memory`, which the tensor shares ownership of, so a
// response can outlive the batch (and the request) it came from.
struct OutputTensor {
  std::string name;
  DataType dtype = DataType::kInvalid;
  std::vector<int64_t> shape;
  std::shared_ptr<const void> memory;
  const uint8_t* data = nullptr;
  size_t byte_size = 0;
  // Written into the client's shared-memory region: the response carries no data for it.
  bool shared_memory = false;
};

// What a backend computed for a batch: every output over the whole batch (split per request
// by the core), or one result per request (a backend that answers each request itself).
struct BatchOutputs {
  std::vector<OutputTensor> batch;
  bool per_request = false;
  std::vector<Status> request_status;               // per request, when per_request
  std::vector<std::vector<OutputTensor>> requests;  // per request, when per_request
};

// One request's answer: its outputs in the order the client asked for (all of the model's, in
// config order, when it asked for none), with the shapes and datatypes the client sees.
struct InferResponse {
  Status status;
  std::vector<OutputTensor> outputs;
};

struct Completion {
  uint64_t tag = 0;             // InferRequest::id
  std::shared_ptr<void> owner;  // InferRequest::owner, kept until the sink is done with it
  InferResponse response;
  // The request's last response. A sink gets exactly one final completion per accepted
  // request; a decoupled model may send any number of non-final ones before it.
  bool final = true;
  // The phases of the batch that answered (zero for a refusal): what an ensemble sums into
  // its own compute statistics, as Triton does.
  BatchTimes times;
  // A decoupled model's final flag without a response: there is nothing to send for it but
  // the end of the request (Triton's empty final response, sent only when asked for).
  bool empty = false;
};

// A frontend's receiver of responses. Deliver is called on a core thread, without the GIL,
// with completions for this sink in delivery order (once per batch for what a batch answers).
class ResponseSink {
 public:
  virtual ~ResponseSink() = default;
  virtual void Deliver(std::vector<Completion>& completions) = 0;
};

}  // namespace pyserve
