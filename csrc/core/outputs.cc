#include "outputs.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <string>

#include "request_limits.h"
#include "shared_memory.h"
#include "validate.h"

namespace pyserve {

namespace {

// Elements of an output's shape from dimension `from` on (0 for a shape that cannot be one).
int64_t Product(const std::vector<int64_t>& shape, size_t from = 0) {
  uint64_t count = 0;
  if (from > shape.size() || !CountElements(shape.data() + from, shape.size() - from,
                                            INT64_MAX, &count)) {
    return 0;
  }
  return static_cast<int64_t>(count);
}

// The shape a model returned for an output that the config reshapes must follow the reshape
// in its fixed dims too, not only in rank: the client's shape is made from it and the config's
// dims, and later steps (classification, encoders, numpy arrays) read as many elements as
// that shape says. A numeric output's shape must describe exactly its bytes.
Status CheckOutputShape(const ModelSpec& spec, const TensorSpec* output, const OutputTensor& t,
                        bool batching) {
  const size_t skip = batching ? 1 : 0;
  bool fits = true;
  if (output != nullptr && output->has_reshape && t.shape.size() == output->reshape.size() + skip) {
    for (size_t i = 0; fits && i < output->reshape.size(); ++i) {
      fits = output->reshape[i] == -1 || output->reshape[i] == t.shape[i + skip];
    }
  }
  uint64_t count = 0;
  if (fits && t.dtype != DataType::kBytes) {
    fits = CountElements(t.shape, &count) && count <= t.byte_size &&
           count * ElementSize(t.dtype) == t.byte_size;
  }
  if (fits) return Status::OK();
  std::string dims = "[";
  for (size_t i = 0; i < t.shape.size(); ++i) dims += (i ? "," : "") + std::to_string(t.shape[i]);
  return Status(StatusCode::kInternal, "model '" + spec.name + "' returned output '" + t.name +
                                           "' with shape " + dims + "] (" +
                                           std::to_string(t.byte_size) +
                                           " bytes), which does not fit its configuration");
}

std::string PyList(const std::vector<std::string>& names) {  // Python's repr of a list of str
  std::string out = "[";
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", '" : "'") + names[i] + "'";
  return out + "]";
}

const OutputTensor* FindTensor(const std::vector<OutputTensor>& tensors, const std::string& name) {
  for (const OutputTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// Rows [first, first + count) of a batch output: a view into the same memory.
Status Slice(const ModelSpec& spec, const OutputTensor& whole, int64_t total, int64_t first,
             int64_t count, OutputTensor* out) {
  if (whole.shape.empty() || whole.shape[0] != total) {
    const std::string dims = whole.shape.empty() ? "()" : "(" + std::to_string(whole.shape[0]) + ",)";
    return Status(StatusCode::kInternal, "model '" + spec.name + "' output '" + whole.name +
                                             "' has batch dimension " + dims + ", expected " +
                                             std::to_string(total));
  }
  const int64_t per_row = Product(whole.shape, 1);
  size_t begin = 0, end = 0;
  if (whole.dtype == DataType::kBytes) {
    std::vector<size_t> offsets;
    if (!StringOffsets(whole.data, whole.byte_size, total * per_row, &offsets)) {
      return Status(StatusCode::kInternal, "model '" + spec.name + "' output '" + whole.name +
                                               "' has malformed BYTES elements");
    }
    begin = offsets[first * per_row];
    end = offsets[(first + count) * per_row];
  } else {
    const size_t row_bytes = static_cast<size_t>(per_row) * ElementSize(whole.dtype);
    begin = first * row_bytes;
    end = (first + count) * row_bytes;
  }
  *out = whole;
  out->shape[0] = count;
  out->data = whole.data + begin;
  out->byte_size = end - begin;
  return Status::OK();
}

// Copies an output into the shared-memory block the client named for it (Triton's texts).
Status IntoSharedMemory(const SharedMemoryBlock& block, OutputTensor* t) {
  if (t->byte_size > block.byte_size) {
    return Status(StatusCode::kInternal,
                  "shared memory size specified with the request for output '" + t->name + "' (" +
                      std::to_string(block.byte_size) + " bytes) should be at least " +
                      std::to_string(t->byte_size) + " bytes to hold the results");
  }
  Status status = WriteBlock(block, t->data, t->byte_size);
  t->shared_memory = status.ok();
  return status;
}

float HalfToFloat(uint16_t h) {
  const int exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  float value = exponent == 0    ? std::ldexp(static_cast<float>(mantissa), -24)
                : exponent == 31 ? (mantissa ? NAN : INFINITY)
                                 : std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
  return (h & 0x8000) ? -value : value;
}

// Element i as a double (for ordering) and as Python prints it (float types with "%f").
double ValueAt(const OutputTensor& t, int64_t i, std::string* text) {
  const uint8_t* p = t.data + i * ElementSize(t.dtype);
  char buffer[64];
  auto integer = [&](auto v) {
    std::snprintf(buffer, sizeof(buffer), "%s", std::to_string(v).c_str());
    *text = buffer;
    return static_cast<double>(v);
  };
  auto real = [&](double v) {
    std::snprintf(buffer, sizeof(buffer), "%f", v);
    *text = buffer;
    return v;
  };
  switch (t.dtype) {
    case DataType::kBool: *text = *p ? "True" : "False"; return *p ? 1 : 0;
    case DataType::kUint8: return integer(*p);
    case DataType::kInt8: return integer(static_cast<int>(*reinterpret_cast<const int8_t*>(p)));
    case DataType::kUint16: { uint16_t v; std::memcpy(&v, p, 2); return integer(v); }
    case DataType::kInt16: { int16_t v; std::memcpy(&v, p, 2); return integer(v); }
    case DataType::kUint32: { uint32_t v; std::memcpy(&v, p, 4); return integer(v); }
    case DataType::kInt32: { int32_t v; std::memcpy(&v, p, 4); return integer(v); }
    case DataType::kUint64: { uint64_t v; std::memcpy(&v, p, 8); return integer(v); }
    case DataType::kInt64: { int64_t v; std::memcpy(&v, p, 8); return integer(v); }
    case DataType::kFp16: { uint16_t v; std::memcpy(&v, p, 2); return real(HalfToFloat(v)); }
    case DataType::kBf16: {
      uint16_t v; std::memcpy(&v, p, 2);
      uint32_t bits = static_cast<uint32_t>(v) << 16; float f; std::memcpy(&f, &bits, 4);
      return real(f);
    }
    case DataType::kFp32: { float v; std::memcpy(&v, p, 4); return real(v); }
    case DataType::kFp64: { double v; std::memcpy(&v, p, 8); return real(v); }
    default: *text = "?"; return 0;
  }
}

}  // namespace

Status Classify(const OutputTensor& values, uint32_t k, const std::vector<std::string>* labels,
                bool batching, OutputTensor* out) {
  if (values.dtype == DataType::kBytes) {
    return Status(StatusCode::kInvalidArg, "classification is not supported on BYTES outputs");
  }
  const int64_t items = batching && !values.shape.empty() ? values.shape[0] : 1;
  const int64_t per_item = items > 0 ? Product(values.shape) / items : 0;
  const int64_t top = std::min<int64_t>(k, per_item);
  auto encoded = std::make_shared<std::string>();
  std::vector<double> keys(per_item);
  std::vector<std::string> texts(per_item);
  std::vector<int64_t> order(per_item);
  for (int64_t item = 0; item < items; ++item) {
    for (int64_t i = 0; i < per_item; ++i) keys[i] = ValueAt(values, item * per_item + i, &texts[i]);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] > keys[b]; });
    for (int64_t j = 0; j < top; ++j) {
      const int64_t index = order[j];
      std::string entry = texts[index] + ":" + std::to_string(index);
      if (labels != nullptr && index < static_cast<int64_t>(labels->size())) {
        entry += ":" + (*labels)[index];
      }
      const uint32_t length = static_cast<uint32_t>(entry.size());
      encoded->append(reinterpret_cast<const char*>(&length), 4);
      encoded->append(entry);
    }
  }
  out->name = values.name;
  out->dtype = DataType::kBytes;
  out->shape = batching ? std::vector<int64_t>{items, top} : std::vector<int64_t>{top};
  out->data = reinterpret_cast<const uint8_t*>(encoded->data());
  out->byte_size = encoded->size();
  out->memory = std::move(encoded);
  return Status::OK();
}

namespace {

// The outputs one request asked for (all of the model's, in config order, when it asked for
// none), out of what the model produced for it: `slice` cuts the request's rows out of a batch
// output (null: the tensors are the request's own). Fails only when a batch output cannot be
// split; a request's own faults go into its response.
Status Fill(const ModelSpec& spec, const std::vector<RequestedOutput>& requested,
            const std::vector<OutputTensor>& produced,
            const std::function<Status(const OutputTensor&, OutputTensor*)>& slice,
            InferResponse* response) {
  const bool batching = spec.max_batch_size > 0;
  std::vector<RequestedOutput> all;
  if (requested.empty()) {
    for (const TensorSpec& o : spec.outputs) all.push_back({o.name, 0, nullptr});
  }
  const std::vector<RequestedOutput>& wanted = requested.empty() ? all : requested;
  std::vector<std::string> missing;
  for (const RequestedOutput& w : wanted) {
    if (FindTensor(produced, w.name) == nullptr) missing.push_back(w.name);
  }
  if (!missing.empty()) {
    response->status = Status(StatusCode::kInternal, "model '" + spec.name +
                                                         "' did not produce output(s) " +
                                                         PyList(missing));
    return Status::OK();
  }
  for (const RequestedOutput& w : wanted) {
    const OutputTensor& whole = *FindTensor(produced, w.name);
    OutputTensor tensor;
    if (!slice) {
      tensor = whole;
    } else {
      Status status = slice(whole, &tensor);
      if (!status.ok()) return status;
    }
    const TensorSpec* output = spec.FindOutput(w.name);
    Status checked = CheckOutputShape(spec, output, tensor, batching);
    if (!checked.ok()) {
      *response = InferResponse{checked, {}};
      return Status::OK();
    }
    if (output != nullptr && output->has_reshape &&
        tensor.shape.size() == output->reshape.size() + (batching ? 1 : 0)) {
      tensor.shape = Reshaped(tensor.shape, output->reshape, output->dims, batching);
    }
    if (w.classification > 0) {
      auto labels = spec.labels.find(w.name);
      OutputTensor classes;
      Status status = Classify(tensor, w.classification,
                               labels == spec.labels.end() ? nullptr : &labels->second,
                               batching, &classes);
      if (!status.ok()) {
        *response = InferResponse{status, {}};
        return Status::OK();
      }
      tensor = std::move(classes);
    }
    if (w.shared_memory) {
      Status status = IntoSharedMemory(*w.shared_memory, &tensor);
      if (!status.ok()) {
        *response = InferResponse{status, {}};
        return Status::OK();
      }
    }
    response->outputs.push_back(std::move(tensor));
  }
  return Status::OK();
}

}  // namespace

void RespondWith(const ModelSpec& spec, const std::vector<RequestedOutput>& requested,
                 const std::vector<OutputTensor>& produced, InferResponse* response) {
  (void)Fill(spec, requested, produced, nullptr, response);
}

Status SplitOutputs(const ModelSpec& spec, const Batch& batch, const BatchOutputs& outputs,
                    std::vector<InferResponse>* responses) {
  const size_t count = batch.requests.size();
  responses->assign(count, InferResponse{});
  int64_t total = 0;
  for (const auto& r : batch.requests) total += r->batch_size;

  int64_t first_row = 0;
  for (size_t i = 0; i < count; ++i) {
    const InferRequest& request = *batch.requests[i];
    InferResponse& response = (*responses)[i];
    const int64_t rows = request.batch_size;
    const std::vector<OutputTensor>* produced = &outputs.batch;
    if (i < batch.reschedule.size() && batch.reschedule[i]) {  // no answer this iteration
      first_row += rows;
      continue;
    }
    if (outputs.per_request) {
      produced = &outputs.requests[i];
      if (!outputs.request_status[i].ok()) {
        response.status = outputs.request_status[i];
        first_row += rows;
        continue;
      }
    }
    std::function<Status(const OutputTensor&, OutputTensor*)> slice;
    if (!outputs.per_request && count > 1) {
      slice = [&](const OutputTensor& whole, OutputTensor* out) {
        return Slice(spec, whole, total, first_row, rows, out);
      };
    }
    Status status = Fill(spec, request.outputs, *produced, slice, &response);
    if (!status.ok()) {
      for (InferResponse& r : *responses) r = InferResponse{status, {}};
      return status;
    }
    first_row += rows;
  }
  return Status::OK();
}

}  // namespace pyserve
