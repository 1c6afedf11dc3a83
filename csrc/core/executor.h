// Executor: what a model instance is to the core. The scheduler hands it one batch at a time on
// the instance's worker thread; it must complete every request of the batch (deliver outputs or
// an error to whoever enqueued them) before returning or later, never drop one.
#pragma once

#include "request.h"

namespace pyserve {

class Executor {
 public:
  virtual ~Executor() = default;
  virtual void Execute(Batch& batch) = 0;
};

}  // namespace pyserve
