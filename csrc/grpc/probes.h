// Liveness and readiness RPCs answered from the model table on the completion-queue thread:
// a probe never waits for the Python shell (its event loop may be busy listing an object
// store or loading a model), and costs no GIL.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "model_table.h"

namespace pyserve::grpcfront {

// The serialized response to `method`'s `request`, or nullopt where the shell answers: another
// method, or a request only the shell words the answer to (one that does not parse, a version
// string that is not a plain number).
std::optional<std::string> ProbeResponse(std::string_view method, std::string_view request,
                                         const ModelTable& table);

}  // namespace pyserve::grpcfront
