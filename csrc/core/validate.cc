#include "validate.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "bytes_tensor.h"

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

// Element counts of absurd shapes do not fit 64 bits; texts print them exactly up to 128.
using Wide = unsigned __int128;

std::string WideText(Wide value) {
  if (value == 0) return "0";
  std::string out;
  for (; value != 0; value /= 10) out += static_cast<char>('0' + static_cast<int>(value % 10));
  return std::string(out.rbegin(), out.rend());
}

Wide ElementCount(const std::vector<int64_t>& shape) {
  Wide count = 1;
  const Wide limit = ~static_cast<Wide>(0) >> 8;
  for (int64_t d : shape) {
    count *= static_cast<Wide>(d);
    if (count > limit) return limit;  // saturate: it cannot match any buffer anyway
  }
  return count;
}

Status Invalid(std::string message) { return Status(StatusCode::kInvalidArg, std::move(message)); }

// Triton's prefix of most refusals; built only for a refusal (the hot path allocates nothing).
std::string Prefix(const InferRequest& request) {
  return "[request id: " + (request.request_id.empty() ? "<id_unknown>" : request.request_id) + "] ";
}

Status ValidateStrings(const TensorView& t, Wide count, const InferRequest& request,
                       const std::string& model) {
  size_t offset = 0;
  Wide seen = 0;
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
      return Invalid(Prefix(request) + "unexpected number of string elements " + WideText(seen) +
                     " for inference input '" + t.name + "' for model '" + model +
                     "', expecting " + WideText(count));
    }
  }
  if (offset > end) --seen;  // the last length prefix runs past the end
  if (seen != count) {
    return Invalid(Prefix(request) + "expected " + WideText(count) + " string elements for inference input '" +
                   t.name + "' for model '" + model + "', got " + WideText(seen));
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
  const Wide count = ElementCount(t.shape);
  if (t.dtype == DataType::kBytes) return ValidateStrings(t, count, request, model);
  const Wide expected = count * ElementSize(t.dtype);
  if (expected != t.byte_size) {
    return Invalid(Prefix(request) + "input byte size mismatch for input '" + t.name + "' for model '" +
                   model + "'. Expected " + WideText(expected) + ", got " +
                   std::to_string(t.byte_size));
  }
  return Status::OK();
}

}  // namespace

Status ValidateRequest(const ModelSpec& spec, const InferRequest& request, int64_t* batch_size) {
  const std::string& model = spec.name;
  for (size_t i = 1; i < request.inputs.size(); ++i) {  // as Triton refuses adding one twice
    for (size_t j = 0; j < i; ++j) {
      if (request.inputs[i].name == request.inputs[j].name) {
        return Invalid(Prefix(request) + "input '" + request.inputs[i].name +
                       "' already exists in request");
      }
    }
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
    Status status = ValidateInput(spec, *spec.FindInput(t.name), t, request);
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
