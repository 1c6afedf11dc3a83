#include "sequence_controls.h"

#include <cstring>
#include <memory>

namespace pyserve {

namespace {

bool IsIntegerCorrId(DataType dtype) {
  return dtype == DataType::kUint64 || dtype == DataType::kInt64 || dtype == DataType::kUint32 ||
         dtype == DataType::kInt32;
}

// The bytes of one control value. Integers are written little-endian (the host's order, as
// Triton copies them), so 32-bit CORRIDs keep the low 32 bits.
std::string Encode(const SequenceControl& control, bool value, const InferRequest& request,
                   bool ready) {
  std::string bytes;
  if (control.kind == SequenceControl::Kind::kCorrId) {
    const CorrelationId& id = request.correlation_id;
    if (control.dtype == DataType::kBytes) {
      const std::string text = !ready ? std::string() : id.is_text ? id.text : std::to_string(id.number);
      const uint32_t length = static_cast<uint32_t>(text.size());
      bytes.assign(reinterpret_cast<const char*>(&length), 4);
      bytes += text;
    } else {
      const uint64_t number = ready && !id.is_text ? id.number : 0;
      bytes.assign(reinterpret_cast<const char*>(&number), ElementSize(control.dtype));
    }
    return bytes;
  }
  const double v = value ? control.true_value : control.false_value;
  switch (control.dtype) {
    case DataType::kFp32: {
      const float f = static_cast<float>(v);
      return std::string(reinterpret_cast<const char*>(&f), 4);
    }
    case DataType::kBool:
      return std::string(1, v != 0 ? '\1' : '\0');
    default: {
      const int32_t i = static_cast<int32_t>(v);
      return std::string(reinterpret_cast<const char*>(&i), 4);
    }
  }
}

}  // namespace

Status CheckCorrelationIdType(const std::vector<SequenceControl>& controls,
                              const std::string& model_name, const InferRequest& request) {
  for (const SequenceControl& control : controls) {
    if (control.kind != SequenceControl::Kind::kCorrId) continue;
    const bool text = request.correlation_id.is_text;
    if (text == (control.dtype == DataType::kBytes)) return Status::OK();
    if (!text && IsIntegerCorrId(control.dtype)) return Status::OK();
    const std::string id = request.request_id.empty() ? "<id_unknown>" : request.request_id;
    return Status(StatusCode::kInvalidArg,
                  "[request id: " + id + "] sequence batching control '" + control.name +
                      "' data-type is '" + (text ? "BYTES" : "UINT64") + "', but model '" +
                      model_name + "' expects '" + WireName(control.dtype) + "'");
  }
  return Status::OK();
}

void AddControlInputs(const std::vector<SequenceControl>& controls, bool batching,
                      InferRequest* request) {
  if (controls.empty()) return;
  const bool ready = !request->padding;
  const bool start = ready && (request->flags & kSequenceStart) != 0;
  const bool end = ready && (request->flags & kSequenceEnd) != 0;
  std::vector<std::string> values;
  values.reserve(controls.size());
  size_t total = 0;
  for (const SequenceControl& control : controls) {
    const bool value = control.kind == SequenceControl::Kind::kStart ? start
                       : control.kind == SequenceControl::Kind::kEnd ? end
                                                                     : ready;
    values.push_back(Encode(control, value, *request, ready));
    total += values.back().size();
  }
  auto storage = std::make_shared<std::string>();
  storage->reserve(total);
  for (const std::string& v : values) *storage += v;
  const auto* base = reinterpret_cast<const uint8_t*>(storage->data());
  size_t offset = 0;
  for (size_t i = 0; i < controls.size(); ++i) {
    TensorView view;
    view.name = controls[i].name;
    view.dtype = controls[i].dtype;
    view.shape = batching ? std::vector<int64_t>{1, 1} : std::vector<int64_t>{1};
    view.data = base + offset;
    view.byte_size = values[i].size();
    offset += values[i].size();
    request->inputs.push_back(std::move(view));
  }
  request->held.push_back(std::move(storage));
}

}  // namespace pyserve
