#include "infer_codec.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <unordered_set>

#include "request_limits.h"
#include "utf8.h"
#include "wire.h"

namespace pyserve::grpcfront {

namespace {

using wire::Reader;

Status Invalid(std::string message) { return Status(StatusCode::kInvalidArg, std::move(message)); }

Status ParseError(const std::string& what) {
  return Invalid("failed to parse ModelInferRequest: " + what);
}

Status Utf8Error() { return ParseError("a string field is not valid UTF-8"); }

// What a message may declare, counted while it is parsed so that nothing is allocated past
// the server's limits.
struct Budget {
  const RequestLimits& limits = Limits();
  size_t parameters = 0;  // request, input and output parameters so far
};

// A proto3 string field. Protobuf's parser refuses a message in which any occurrence is not
// UTF-8 (the last one is kept); one of another wire type is an unknown field, skipped. Names
// (not parameter values) are bounded by the limits.
Status ReadString(const Reader& r, std::string_view* out, bool name = false) {
  if (r.type() != wire::kLength) return Status::OK();
  if (name) {
    Status status = CheckName(r.bytes());
    if (!status.ok()) return status;
  }
  if (!ValidUtf8(r.bytes())) return Utf8Error();
  *out = r.bytes();
  return Status::OK();
}

Status ParseParam(std::string_view bytes, InferParam* p) {
  Reader r(bytes);
  while (r.Next()) {
    const bool varint = r.type() == wire::kVarint;
    switch (r.field()) {
      case 1: if (varint) p->kind = InferParam::kBool, p->bool_value = r.varint() != 0; break;
      case 2: if (varint) p->kind = InferParam::kInt64, p->int_value = static_cast<int64_t>(r.varint()); break;
      case 3: {
        if (r.type() != wire::kLength) break;
        Status status = ReadString(r, &p->string_value);
        if (!status.ok()) return status;
        p->kind = InferParam::kString;
        break;
      }
      case 4: {
        if (r.type() != wire::kFixed64) break;
        p->kind = InferParam::kDouble;
        const uint64_t bits = r.fixed64();
        std::memcpy(&p->double_value, &bits, 8);
        break;
      }
      case 5: if (varint) p->kind = InferParam::kUint64, p->uint_value = r.varint(); break;
      default: break;
    }
  }
  return r.error().empty() ? Status::OK() : ParseError("bad parameter");
}

// One entry of a map<string, InferParameter> (an entry of another wire type is skipped).
Status ParseMapEntry(const Reader& field, Budget* budget, ParamMap* map) {
  if (field.type() != wire::kLength) return Status::OK();
  if (++budget->parameters > budget->limits.parameters) {
    return OverLimit("parameters", "parameters", budget->limits.parameters);
  }
  Reader r(field.bytes());
  std::string_view key;
  InferParam value;
  while (r.Next()) {
    Status status;
    if (r.field() == 1) status = ReadString(r, &key, true);
    if (r.field() == 2 && r.type() == wire::kLength) status = ParseParam(r.bytes(), &value);
    if (!status.ok()) return status;
  }
  if (!r.error().empty()) return ParseError("bad parameters");
  map->emplace_back(key, value);
  return Status::OK();
}

const InferParam* Find(const ParamMap& map, std::string_view key) {
  const InferParam* found = nullptr;
  for (const auto& [k, v] : map) {
    if (k == key) found = &v;
  }
  return found;
}

// The index of the last entry of each key, in order: a scan for the few parameters of most
// requests, a hash set past that (linear time whatever a client sends).
std::vector<size_t> LastOfEachKey(const ParamMap& map) {
  std::vector<size_t> last;
  if (map.size() <= 16) {
    for (size_t i = 0; i < map.size(); ++i) {
      if (Find(map, map[i].first) == &map[i].second) last.push_back(i);
    }
    return last;
  }
  std::unordered_set<std::string_view> seen(map.size() * 2);
  for (size_t i = map.size(); i-- > 0;) {
    if (seen.insert(map[i].first).second) last.push_back(i);
  }
  std::reverse(last.begin(), last.end());
  return last;
}

// Repeated int64 values, packed or not; one of another wire type is skipped.
Status AppendDims(const Reader& r, size_t rank, std::vector<int64_t>* out) {
  auto over = [&] { return OverLimit("dimensions in a shape", "rank", rank); };
  if (r.type() == wire::kVarint) {
    if (out->size() == rank) return over();
    out->push_back(static_cast<int64_t>(r.varint()));
    return Status::OK();
  }
  if (r.type() != wire::kLength) return Status::OK();
  std::string_view packed = r.bytes();
  uint64_t value = 0;
  while (!packed.empty()) {
    if (!Reader::NextVarint(&packed, &value)) return ParseError("bad input tensor");
    if (out->size() == rank) return over();
    out->push_back(static_cast<int64_t>(value));
  }
  return Status::OK();
}

Status ParseInput(std::string_view bytes, Budget* budget, InferMessage::Input* input) {
  Reader r(bytes);
  while (r.Next()) {
    Status status;
    switch (r.field()) {
      case 1: status = ReadString(r, &input->name, true); break;
      case 2: status = ReadString(r, &input->datatype, true); break;
      case 3: status = AppendDims(r, budget->limits.rank, &input->shape); break;
      case 4: status = ParseMapEntry(r, budget, &input->parameters); break;
      case 5:
        if (r.type() == wire::kLength) input->has_contents = true, input->contents = r.bytes();
        break;
      default: break;
    }
    if (!status.ok()) return status;
  }
  return r.error().empty() ? Status::OK() : ParseError("bad input tensor");
}

Status ParseOutput(std::string_view bytes, Budget* budget, InferMessage::Output* output) {
  Reader r(bytes);
  while (r.Next()) {
    Status status;
    if (r.field() == 1) status = ReadString(r, &output->name, true);
    if (r.field() == 2) status = ParseMapEntry(r, budget, &output->parameters);
    if (!status.ok()) return status;
  }
  return r.error().empty() ? Status::OK() : ParseError("bad output tensor");
}

// Python's repr of a parameter value, as the Python frontend's texts show it.
std::string Repr(const InferParam& p) {
  switch (p.kind) {
    case InferParam::kBool: return p.bool_value ? "True" : "False";
    case InferParam::kInt64: return std::to_string(p.int_value);
    case InferParam::kUint64: return std::to_string(p.uint_value);
    case InferParam::kString: return "'" + std::string(p.string_value) + "'";
    case InferParam::kDouble: {
      char buffer[64];
      auto end = std::to_chars(buffer, buffer + sizeof(buffer), p.double_value).ptr;
      std::string text(buffer, end);
      if (text.find_first_of(".eni") == std::string::npos) text += ".0";
      return text;
    }
    default: return "None";
  }
}

Status Unsigned(const InferParam& p, const std::string& key, uint64_t* value) {
  if (p.kind == InferParam::kUint64) {
    *value = p.uint_value;
    return Status::OK();
  }
  if (p.kind == InferParam::kInt64 && p.int_value >= 0) {
    *value = static_cast<uint64_t>(p.int_value);
    return Status::OK();
  }
  return Invalid("parameter '" + key + "' must be a non-negative integer, got " + Repr(p));
}

// The `sequence_id` parameter (Triton's texts): an integer or a string of 128 characters at most.
Status SequenceId(const InferParam& p, CorrelationId* id) {
  if (p.kind == InferParam::kInt64) {
    id->number = static_cast<uint64_t>(p.int_value);
    return Status::OK();
  }
  if (p.kind != InferParam::kString) {
    return Invalid("invalid value type for 'sequence_id' parameter, expected int64_param or "
                   "string_param.");
  }
  if (p.string_value.size() > kMaxCorrelationIdLength) {
    return Status(StatusCode::kUnsupported,
                  "string correlation ID cannot be longer than 128 characters");
  }
  id->text = std::string(p.string_value);
  id->is_text = true;
  return Status::OK();
}

// A tensor's shared_memory_* parameters, checked as Triton checks them; `block` is left empty
// when the tensor is not in shared memory.
Status SharedMemoryTensor(const ParamMap& parameters, const std::string& tensor,
                          const SharedMemoryRegistry* registry, SharedMemoryBlock* block) {
  const InferParam* region = Find(parameters, "shared_memory_region");
  const InferParam* offset = Find(parameters, "shared_memory_offset");
  const InferParam* byte_size = Find(parameters, "shared_memory_byte_size");
  // Only errors need the text: the common request (no shared memory) makes none.
  auto where = [&] { return " parameter for tensor '" + tensor + "'"; };
  auto wrong_type = [&](const char* key, const char* expected) {
    return Invalid(std::string("invalid value type for '") + key + "'" + where() + ", expected " +
                   expected + ".");
  };
  if (region == nullptr) {
    for (const char* key : {"shared_memory_offset", "shared_memory_byte_size"}) {
      if (Find(parameters, key) != nullptr) {
        return Invalid(std::string("'") + key +
                       "' can not be specified without 'shared_memory_region'" + where());
      }
    }
    return Status::OK();
  }
  if (region->kind != InferParam::kString) {
    return wrong_type("shared_memory_region", "string_param");
  }
  if (offset != nullptr && offset->kind != InferParam::kInt64) {
    return wrong_type("shared_memory_offset", "int64_param");
  }
  if (byte_size == nullptr) {
    return Invalid("'shared_memory_byte_size' must be specified along with "
                   "'shared_memory_region'" + where());
  }
  if (byte_size->kind != InferParam::kInt64) {
    return wrong_type("shared_memory_byte_size", "int64_param");
  }
  const std::string name(region->string_value);
  if (registry == nullptr) {
    return Status(StatusCode::kNotFound, "Unable to find shared memory region: '" + name + "'");
  }
  return registry->Find(name, static_cast<uint64_t>(offset ? offset->int_value : 0),
                        static_cast<uint64_t>(byte_size->int_value), block);
}

Parameter ModelParameter(std::string_view key, const InferParam& p) {
  Parameter out;
  out.key = std::string(key);
  switch (p.kind) {
    case InferParam::kBool: out.kind = Parameter::Kind::kBool; out.bool_value = p.bool_value; break;
    case InferParam::kInt64: out.kind = Parameter::Kind::kInt; out.int_value = p.int_value; break;
    case InferParam::kUint64:
      out.kind = Parameter::Kind::kInt;
      out.int_value = static_cast<int64_t>(p.uint_value);
      break;
    case InferParam::kDouble:
      out.kind = Parameter::Kind::kDouble;
      out.double_value = p.double_value;
      break;
    default: out.string_value = std::string(p.string_value);
  }
  return out;
}

// InferTensorContents: field number per contents kind, and the datatype each one carries.
enum Contents { kBoolContents = 1, kIntContents, kInt64Contents, kUintContents, kUint64Contents,
                kFp32Contents, kFp64Contents, kBytesContents };
const char* const kContentsName[] = {"", "BOOL", "INT32", "INT64", "UINT32", "UINT64",
                                     "FP32", "FP64", "BYTES"};

int ContentsFor(DataType dtype) {
  switch (dtype) {
    case DataType::kBool: return kBoolContents;
    case DataType::kInt8: case DataType::kInt16: case DataType::kInt32: return kIntContents;
    case DataType::kInt64: return kInt64Contents;
    case DataType::kUint8: case DataType::kUint16: case DataType::kUint32: return kUintContents;
    case DataType::kUint64: return kUint64Contents;
    case DataType::kFp32: return kFp32Contents;
    case DataType::kFp64: return kFp64Contents;
    case DataType::kBytes: return kBytesContents;
    default: return 0;
  }
}

template <typename T>
void Put(std::string* out, T value) {
  out->append(reinterpret_cast<const char*>(&value), sizeof(T));
}

// One value of a contents field (packed or not) in the tensor's element type.
void PutElement(std::string* out, DataType dtype, uint64_t raw) {
  switch (dtype) {
    case DataType::kBool: Put<uint8_t>(out, raw != 0); break;
    case DataType::kInt8: Put<int8_t>(out, static_cast<int8_t>(raw)); break;
    case DataType::kInt16: Put<int16_t>(out, static_cast<int16_t>(raw)); break;
    case DataType::kInt32: Put<int32_t>(out, static_cast<int32_t>(raw)); break;
    case DataType::kUint8: Put<uint8_t>(out, static_cast<uint8_t>(raw)); break;
    case DataType::kUint16: Put<uint16_t>(out, static_cast<uint16_t>(raw)); break;
    case DataType::kUint32: Put<uint32_t>(out, static_cast<uint32_t>(raw)); break;
    case DataType::kFp32: Put<uint32_t>(out, static_cast<uint32_t>(raw)); break;  // bits
    default: Put<uint64_t>(out, raw); break;  // INT64, UINT64, FP64 bits
  }
}

// A contents field's value as protobuf reads it: BYTES length-delimited; the numbers packed
// or one by one (varints; FP32 and FP64 as fixed32 and fixed64).
bool ContentsWireType(int field, uint32_t type) {
  switch (field) {
    case kBytesContents: return type == wire::kLength;
    case kFp32Contents: return type == wire::kLength || type == wire::kFixed32;
    case kFp64Contents: return type == wire::kLength || type == wire::kFixed64;
    default: return type == wire::kLength || type == wire::kVarint;
  }
}

Status ContentsBytes(const InferMessage::Input& input, std::string_view model, std::string* out) {
  const std::string name(input.name);
  const DataType dtype = DataTypeFromWire(input.datatype);
  std::vector<int> used;
  Reader r(input.contents);
  while (r.Next()) {
    if (r.field() < kBoolContents || r.field() > kBytesContents) continue;
    const int field = static_cast<int>(r.field());
    if (!ContentsWireType(field, r.type())) continue;  // protobuf skips it as an unknown field
    if (std::find(used.begin(), used.end(), field) == used.end()) used.push_back(field);
    if (used.size() > 1) {
      return Invalid("unexpected explicit tensor data for input tensor '" + name + "' for model '" +
                     std::string(model) + "', binary data was already supplied.");
    }
    if (field != ContentsFor(dtype)) {
      return Invalid("unexpected explicit tensor data for input tensor '" + name + "' for model '" +
                     std::string(model) + "' of type '" + kContentsName[field] +
                     "', expected datatype '" + std::string(input.datatype) + "'");
    }
    if (field == kBytesContents) {
      Put<uint32_t>(out, static_cast<uint32_t>(r.bytes().size()));
      out->append(r.bytes().data(), r.bytes().size());
    } else if (r.type() != wire::kLength) {
      PutElement(out, dtype, r.varint());
    } else {  // packed
      std::string_view packed = r.bytes();
      const size_t width = field == kFp32Contents ? 4 : field == kFp64Contents ? 8 : 0;
      while (!packed.empty()) {
        uint64_t value = 0;
        if (width != 0) {
          if (packed.size() < width) return ParseError("truncated packed contents");
          std::memcpy(&value, packed.data(), width);
          packed.remove_prefix(width);
        } else if (!Reader::NextVarint(&packed, &value)) {
          return ParseError("truncated packed contents");
        }
        PutElement(out, dtype, value);
      }
    }
  }
  if (!r.error().empty()) return ParseError(r.error());
  return Status::OK();
}

}  // namespace

Status ParseInferRequest(std::string_view bytes, InferMessage* message) {
  Budget budget;
  const RequestLimits& limits = budget.limits;
  Reader r(bytes);
  while (r.Next()) {
    const bool length = r.type() == wire::kLength;
    Status status;
    switch (r.field()) {
      case 1: status = ReadString(r, &message->model_name, true); break;
      case 2: status = ReadString(r, &message->model_version, true); break;
      case 3: status = ReadString(r, &message->id, true); break;
      case 4: status = ParseMapEntry(r, &budget, &message->parameters); break;
      case 5:
        if (!length) break;
        if (message->inputs.size() == limits.inputs) {
          return OverLimit("inputs", "inputs", limits.inputs);
        }
        message->inputs.emplace_back();
        status = ParseInput(r.bytes(), &budget, &message->inputs.back());
        break;
      case 6:
        if (!length) break;
        if (message->outputs.size() == limits.outputs) {
          return OverLimit("requested outputs", "outputs", limits.outputs);
        }
        message->outputs.emplace_back();
        status = ParseOutput(r.bytes(), &budget, &message->outputs.back());
        break;
      case 7:
        if (!length) break;
        if (message->raw_input_contents.size() == limits.inputs) {
          return OverLimit("raw_input_contents", "inputs", limits.inputs);
        }
        message->raw_input_contents.push_back(r.bytes());
        break;
      default: break;
    }
    if (!status.ok()) return status;
  }
  if (!r.error().empty()) return ParseError(r.error());
  return Status::OK();
}

Status DecodeInferRequest(const InferMessage& message, const SharedMemoryRegistry* shared_memory,
                          std::vector<std::string>* converted, InferRequest* request) {
  const std::string model(message.model_name);
  const bool raw = !message.raw_input_contents.empty();
  size_t raw_index = 0;  // raw_input_contents skips the inputs in shared memory
  request->request_id = std::string(message.id);
  converted->reserve(message.inputs.size());
  for (size_t i = 0; i < message.inputs.size(); ++i) {
    const InferMessage::Input& input = message.inputs[i];
    TensorView view;
    view.name = std::string(input.name);
    view.dtype = DataTypeFromWire(input.datatype);
    view.shape = input.shape;
    SharedMemoryBlock block;
    Status status = SharedMemoryTensor(input.parameters, view.name, shared_memory, &block);
    if (!status.ok()) return status;
    if (block.keep) {
      if (input.has_contents) {
        return Invalid("unexpected 'content' provided when using shared memory for input tensor '" +
                       view.name + "' for model '" + model + "'");
      }
      status = ReadOnHost(block, &block);
      if (!status.ok()) return status;
      view.data = block.data;
      view.byte_size = block.byte_size;
      request->held.push_back(std::move(block.keep));
    } else if (raw) {
      if (input.has_contents) {
        return Invalid("contents field must not be specified when using raw_input_contents for '" +
                       view.name + "' for model '" + model + "'");
      }
      if (raw_index >= message.raw_input_contents.size()) {
        return Invalid("unable to find data for input tensor '" + view.name + "' for model '" +
                       model + "' in request.");
      }
      view.data = reinterpret_cast<const uint8_t*>(message.raw_input_contents[raw_index].data());
      view.byte_size = message.raw_input_contents[raw_index++].size();
    } else {
      converted->emplace_back();
      status = ContentsBytes(input, model, &converted->back());
      if (!status.ok()) return status;
      view.data = reinterpret_cast<const uint8_t*>(converted->back().data());
      view.byte_size = converted->back().size();
    }
    request->inputs.push_back(std::move(view));
  }
  for (const InferMessage::Output& output : message.outputs) {
    RequestedOutput requested{std::string(output.name), 0, nullptr};
    if (const InferParam* k = Find(output.parameters, "classification")) {
      const bool integer = k->kind == InferParam::kInt64 || k->kind == InferParam::kUint64;
      const int64_t count = k->kind == InferParam::kInt64 ? k->int_value
                                                          : static_cast<int64_t>(k->uint_value);
      if (!integer || count < 1 || count > UINT32_MAX) {
        return Invalid("classification count must be a positive integer, got " + Repr(*k));
      }
      requested.classification = static_cast<uint32_t>(count);
    }
    SharedMemoryBlock block;
    Status status = SharedMemoryTensor(output.parameters, requested.name, shared_memory, &block);
    if (!status.ok()) return status;
    if (block.keep) {
      if (requested.classification != 0) {
        return Invalid("output can't set both 'shared_memory_region' and 'classification'");
      }
      requested.shared_memory = std::make_shared<const SharedMemoryBlock>(std::move(block));
    }
    request->outputs.push_back(std::move(requested));
  }
  // Parameters the server acts on; the rest are the model's (a repeated key: the last wins).
  for (size_t i : LastOfEachKey(message.parameters)) {
    const auto& [key, value] = message.parameters[i];
    if (value.kind == InferParam::kNone) continue;
    if (key == "priority" || key == "timeout") {
      Status status = Unsigned(value, std::string(key),
                               key == "priority" ? &request->priority : &request->timeout_us);
      if (!status.ok()) return status;
    } else if (key == "sequence_id") {
      Status status = SequenceId(value, &request->correlation_id);
      if (!status.ok()) return status;
    } else if (key == "sequence_start" || key == "sequence_end") {
      if (value.kind != InferParam::kBool) {
        return Invalid("invalid value type for '" + std::string(key) +
                       "' parameter, expected bool_param.");
      }
      if (value.bool_value) request->flags |= key == "sequence_start" ? kSequenceStart : kSequenceEnd;
    } else if (key != "binary_data_output") {
      request->parameters.push_back(ModelParameter(key, value));
    }
  }
  return Status::OK();
}

namespace {

// ModelInferResponse.parameters["triton_final_response"] (a map entry: key 1, value 2, an
// InferParameter whose bool_param is field 1).
void PutFinalResponse(std::string* out, bool final_response) {
  std::string value, entry;
  wire::PutVarint(&value, (1 << 3) | wire::kVarint);
  wire::PutVarint(&value, final_response ? 1 : 0);
  wire::PutString(&entry, 1, "triton_final_response");
  wire::PutBytes(&entry, 2, value);
  wire::PutBytes(out, 4, entry);
}

}  // namespace

std::string EncodeInferResponse(std::string_view model_name, std::string_view model_version,
                                std::string_view id, const InferResponse& response,
                                std::optional<bool> final_response) {
  size_t reserve = 64 + model_name.size() + model_version.size() + id.size();
  for (const OutputTensor& t : response.outputs) {
    reserve += (t.shared_memory ? 0 : t.byte_size) + t.name.size() + 48;
  }
  std::string out;
  out.reserve(reserve);
  wire::PutString(&out, 1, model_name);
  wire::PutString(&out, 2, model_version);
  wire::PutString(&out, 3, id);
  if (final_response) PutFinalResponse(&out, *final_response);
  std::string tensor, shape;
  for (const OutputTensor& t : response.outputs) {  // InferOutputTensor
    tensor.clear();
    shape.clear();
    wire::PutString(&tensor, 1, t.name);
    wire::PutString(&tensor, 2, WireName(t.dtype));
    for (int64_t d : t.shape) wire::PutVarint(&shape, static_cast<uint64_t>(d));
    wire::PutString(&tensor, 3, shape);  // packed
    wire::PutBytes(&out, 5, tensor);
  }
  for (const OutputTensor& t : response.outputs) {
    const size_t size = t.shared_memory ? 0 : t.byte_size;
    wire::PutBytes(&out, 6, std::string_view(reinterpret_cast<const char*>(t.data), size));
  }
  return out;
}

std::string StreamResponseHead(size_t infer_response_size) {
  std::string out;
  wire::PutVarint(&out, (2 << 3) | wire::kLength);  // infer_response
  wire::PutVarint(&out, infer_response_size);
  return out;
}

std::string StreamError(std::string_view message) {
  std::string out;
  wire::PutBytes(&out, 1, message);
  return out;
}

std::string StreamError(std::string_view message, std::string_view model_name,
                        std::string_view model_version, std::string_view id, bool final_response) {
  std::string out = StreamError(message);
  wire::PutBytes(&out, 2, EncodeInferResponse(model_name, model_version, id, {}, final_response));
  return out;
}

}  // namespace pyserve::grpcfront
