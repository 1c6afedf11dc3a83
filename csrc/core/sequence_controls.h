// The control inputs a sequence model's config asks the server to fill in
// (sequence_batching.control_input): START, END and READY as two values (false, true) of
// INT32, FP32 or BOOL, and CORRID, the correlation ID as UINT64, INT64, UINT32, INT32 (the low
// 32 bits, as Triton) or STRING.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "request.h"
#include "status.h"

namespace pyserve {

struct SequenceControl {
  enum class Kind : uint8_t { kStart, kReady, kEnd, kCorrId };
  std::string name;
  Kind kind = Kind::kStart;
  DataType dtype = DataType::kInt32;
  double false_value = 0;  // START/END/READY: exact for every INT32, FP32 and BOOL value
  double true_value = 1;
};

// Whether a request's correlation ID fits the model's CORRID control (no CORRID: any does),
// or Triton's refusal.
Status CheckCorrelationIdType(const std::vector<SequenceControl>& controls,
                              const std::string& model_name, const InferRequest& request);

// Appends the control inputs to `request`: START and END from its flags, READY true unless it
// pads an empty slot (then every flag is false and CORRID 0), CORRID its correlation ID. Each is
// one element: shape [1], or [1, 1] for a model that batches. The bytes are held by the request.
void AddControlInputs(const std::vector<SequenceControl>& controls, bool batching,
                      InferRequest* request);

}  // namespace pyserve
