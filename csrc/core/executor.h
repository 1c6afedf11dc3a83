// Executor: what a model instance is to the core. The scheduler hands it one batch at a time on
// the instance's worker thread. Execute() must complete every request of the batch (deliver
// outputs or an error to whoever enqueued them), and it may stamp batch.times.infer_start,
// infer_end and output_end; the scheduler stamps what it leaves at zero. (Model is the
// executor of served models; tests and benchmarks bring their own.)
#pragma once

#include <cstdint>
#include <vector>

#include "request.h"
#include "status.h"

namespace pyserve {

class Executor {
 public:
  virtual ~Executor() = default;
  // Returns the batch's outcome, for statistics; requests are completed either way.
  virtual Status Execute(Batch& batch) = 0;
  // Completes requests the core refuses after accepting them (e.g. "Request timeout expired").
  // The requests are freed after the call.
  virtual void Reject(const std::vector<InferRequest*>& requests, const Status& status) = 0;
};

}  // namespace pyserve
