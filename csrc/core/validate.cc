#include "validate.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_set>

#include "bytes_tensor.h"
#include "request_limits.h"

namespace pyserve {

namespace {

const char kBatchNote[] =
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to "
    "be prepended to each input shape. If you want to specify the full shape including the "
    "batch dim in your input dims config, try setting max_batch_size to zero. See the model "
    "configuration docs for more info on max_batch_size.";

std::string Dims(const std::vector<int64_t>& dims, size_t from = 0) {
  std::string out = "[";
  for (size_t i = from; i < dims.size(); ++i) {
    if (i > from) out += ",";
    out += std::to_string(dims[i]);
  }
  return out + "]";
}

std::string Names(const std::vector<std::string>& names) {
  std::string out = "[";
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ",'" : "'") + names[i] + "'";
  return out + "]";
}

Status Invalid(std::string message) { return Status(StatusCode::kInvalidArg, std::move(message)); }

// Triton's prefix of most refusals; built only for a refusal (the hot path allocates nothing).
std::string Prefix(const InferRequest& request) {
  return "[request id: " + (request.request_id.empty() ? "<id_unknown>" : request.request_id) + "] ";
}

Status ValidateStrings(const TensorView& t, uint64_t count, const InferRequest& request,
                       const std::string& model) {
  size_t offset = 0;
  uint64_t seen = 0;
  const size_t end = t.byte_size;
  while (offset < end) {
    if (end - offset < 4) {
      return Invalid(Prefix(request) + "incomplete string length indicator for inference input '" +
                     t.name + "' for model '" + model + "', expecting 4 bytes but only " +
                     std::to_string(end - offset) +
                     " bytes available. Please make sure the string length indicator is in one "
                     "buffer.");
    }
    uint32_t length = 0;
    std::memcpy(&length, t.data + offset, 4);
    offset += 4 + static_cast<size_t>(length);
    ++seen;
    if (seen > count) {
      return Invalid(Prefix(request) + "unexpected number of string elements " + std::to_string(seen) +
                     " for inference input '" + t.name + "' for model '" + model +
                     "', expecting " + std::to_string(count));
    }
  }
  if (offset > end) --seen;  // the last length prefix runs past the end
  if (seen != count) {
    return Invalid(Prefix(request) + "expected " + std::to_string(count) + " string elements for inference input '" +
                   t.name + "' for model '" + model + "', got " + std::to_string(seen));
  }
  return Status::OK();
}

Status ValidateInput(const ModelSpec& spec, const TensorSpec& input, const TensorView& t,
                     const InferRequest& request) {
  const std::string& model = spec.name;
  if (t.dtype != input.dtype) {
    return Invalid(Prefix(request) + "inference input '" + t.name + "' data-type is '" +
                   WireName(t.dtype) + "', but model '" + model + "' expects '" +
                   WireName(input.dtype) + "'");
  }
  if (std::any_of(t.shape.begin(), t.shape.end(), [](int64_t d) { return d < 0; })) {
    return Invalid(Prefix(request) + "All input dimensions should be specified for input '" + t.name +
                   "' for model '" + model + "', got " + Dims(t.shape));
  }
  const bool batching = spec.max_batch_size > 0;
  const size_t skip = batching ? 1 : 0;
  bool matches = t.shape.size() - skip == input.dims.size();
  for (size_t i = 0; matches && i < input.dims.size(); ++i) {
    matches = input.dims[i] == -1 || input.dims[i] == t.shape[i + skip];
  }
  if (!matches) {
    std::vector<int64_t> full = input.dims;
    if (batching) full.insert(full.begin(), -1);
    return Invalid(Prefix(request) + "unexpected shape for input '" + t.name + "' for model '" + model +
                   "'. Expected " + Dims(full) + ", got " + Dims(t.shape) + ". " +
                   (batching ? kBatchNote : ""));
  }
  uint64_t count = 0;
  if (!CountElements(t.shape, Limits().elements, &count)) {
    return Invalid(Prefix(request) + "input '" + t.name + "' for model '" + model + "' has more than " +
                   std::to_string(Limits().elements) +
                   " elements (--request-limit elements=N)");
  }
  if (t.dtype == DataType::kBytes) return ValidateStrings(t, count, request, model);
  const uint64_t expected = count * ElementSize(t.dtype);  // the limit is at most 2^60: no wrap
  if (expected != t.byte_size) {
    return Invalid(Prefix(request) + "input byte size mismatch for input '" + t.name + "' for model '" +
                   model + "'. Expected " + std::to_string(expected) + ", got " +
                   std::to_string(t.byte_size));
  }
  return Status::OK();
}

// What a message declares, against the server's limits (frontends that parse the wire
// themselves also count while they parse, before they allocate).
Status CheckLimits(const InferRequest& request) {
  const RequestLimits& limits = Limits();
  if (request.inputs.size() > limits.inputs) {
    return OverLimit("inputs", "inputs", limits.inputs);
  }
  if (request.outputs.size() > limits.outputs) {
    return OverLimit("requested outputs", "outputs", limits.outputs);
  }
  if (request.parameters.size() > limits.parameters) {
    return OverLimit("parameters", "parameters", limits.parameters);
  }
  Status status = CheckName(request.request_id);
  for (const TensorView& t : request.inputs) {
    if (t.shape.size() > limits.rank) {
      return OverLimit("dimensions in a shape", "rank", limits.rank);
    }
    if (status.ok()) status = CheckName(t.name);
  }
  for (const RequestedOutput& o : request.outputs) {
    if (status.ok()) status = CheckName(o.name);
  }
  for (const Parameter& p : request.parameters) {
    if (status.ok()) status = CheckName(p.key);
  }
  return status;
}

// The first input whose name an earlier one has: a scan for the few inputs of most models, a
// hash set past that (linear time whatever a client declares).
const TensorView* Duplicate(const std::vector<TensorView>& inputs) {
  if (inputs.size() <= 16) {
    for (size_t i = 1; i < inputs.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        if (inputs[i].name == inputs[j].name) return &inputs[i];
      }
    }
    return nullptr;
  }
  std::unordered_set<std::string_view> seen(inputs.size() * 2);
  for (const TensorView& t : inputs) {
    if (!seen.insert(t.name).second) return &t;
  }
  return nullptr;
}

}  // namespace

Status ValidateRequest(const ModelSpec& spec, const InferRequest& request, int64_t* batch_size) {
  const std::string& model = spec.name;
  Status status = CheckLimits(request);
  if (!status.ok()) return status;
  if (const TensorView* twice = Duplicate(request.inputs)) {  // as Triton refuses adding one twice
    return Invalid(Prefix(request) + "input '" + twice->name + "' already exists in request");
  }
  for (const RequestedOutput& output : request.outputs) {
    if (spec.FindOutput(output.name) == nullptr) {
      return Invalid("unexpected inference output '" + output.name + "' for model '" + model + "'");
    }
  }

  size_t required = 0;
  for (const TensorSpec& input : spec.inputs) required += input.optional ? 0 : 1;
  // Triton compares counts only: a wrong name in place of a required one is reported by the
  // unknown-input check below.
  if (request.inputs.size() > spec.inputs.size() || request.inputs.size() < required) {
    std::vector<std::string> given, missing;
    for (const TensorView& t : request.inputs) given.push_back(t.name);
    for (const TensorSpec& input : spec.inputs) {
      if (!input.optional && std::find(given.begin(), given.end(), input.name) == given.end()) {
        missing.push_back(input.name);
      }
    }
    const std::string total = std::to_string(spec.inputs.size());
    const std::string counts =
        required == spec.inputs.size()
            ? "expected " + total + " inputs"
            : "expected number of inputs between " + std::to_string(required) + " and " + total;
    // Triton drops the last character of "['a'," before adding "]": with nothing missing
    // that is the "[" itself.
    return Invalid(Prefix(request) + counts + " but got " + std::to_string(request.inputs.size()) +
                   " inputs for model '" + model + "'. Got input(s) " + Names(given) +
                   ", but missing required input(s) " + (missing.empty() ? "]" : Names(missing)) +
                   ". Please provide all required input(s).");
  }
  for (const TensorView& t : request.inputs) {
    if (spec.FindInput(t.name) == nullptr) {
      return Invalid("unexpected inference input '" + t.name + "' for model '" + model + "'");
    }
  }

  *batch_size = 1;
  if (spec.max_batch_size > 0) {
    for (size_t i = 0; i < request.inputs.size(); ++i) {
      const TensorView& t = request.inputs[i];
      if (t.shape.empty()) {
        return Invalid(Prefix(request) + "input '" + t.name +
                       "' has no shape but model requires batch dimension for '" + model + "'");
      }
      if (i == 0) {
        *batch_size = t.shape[0];
      } else if (t.shape[0] != *batch_size) {
        return Invalid(Prefix(request) + "input '" + t.name + "' batch size does not match other inputs for '" +
                       model + "'");
      }
    }
    if (*batch_size > static_cast<int64_t>(spec.max_batch_size)) {
      return Invalid(Prefix(request) + "inference request batch-size must be <= " +
                     std::to_string(spec.max_batch_size) + " for '" + model + "'");
    }
  }
  for (const TensorView& t : request.inputs) {
    status = ValidateInput(spec, *spec.FindInput(t.name), t, request);
    if (!status.ok()) return status;
  }
  return Status::OK();
}

bool StringOffsets(const uint8_t* data, size_t byte_size, int64_t count,
                   std::vector<size_t>* offsets) {
  offsets->clear();
  offsets->reserve(static_cast<size_t>(count) + 1);
  const size_t end = ForEachString(data, byte_size, [&](const uint8_t* element, size_t) {
    offsets->push_back(static_cast<size_t>(element - data) - 4);
  });
  offsets->push_back(end);
  return end == byte_size && offsets->size() == static_cast<size_t>(count) + 1;
}

}  // namespace pyserve
