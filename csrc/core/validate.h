// Triton's checks of an inference request against its model (core InferenceRequest::Normalize),
// in Triton's order and with Triton's texts, so that clients matching on them keep working.
#pragma once

#include <cstdint>

#include "model_spec.h"
#include "request.h"
#include "status.h"

namespace pyserve {

// INVALID_ARG for a request the model cannot run; otherwise sets `batch_size` (1 for models
// that do not batch) and returns OK.
Status ValidateRequest(const ModelSpec& spec, const InferRequest& request, int64_t* batch_size);

// Walks BYTES length prefixes: the offset of each of `count` elements in `offsets` (count + 1
// entries, the last one the end). False when the buffer does not hold exactly that many.
bool StringOffsets(const uint8_t* data, size_t byte_size, int64_t count,
                   std::vector<size_t>* offsets);

}  // namespace pyserve
