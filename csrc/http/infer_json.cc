#include "infer_json.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstring>
#include <limits>

#include "bytes_tensor.h"
#include "request_limits.h"
#include "utf8.h"

namespace pyserve::httpfront {

namespace {

using rapidjson::Value;
// Infinity and NaN written as Python's json writes them (plain JSON has no spelling for them).
using Writer = rapidjson::Writer<rapidjson::StringBuffer, rapidjson::UTF8<>, rapidjson::UTF8<>,
                                 rapidjson::CrtAllocator, rapidjson::kWriteNanAndInfFlag>;

template <typename T>
void Put(std::string* out, T value) {
  out->append(reinterpret_cast<const char*>(&value), sizeof(T));
}

template <typename T>
bool PutInt(std::string* out, const Value& v) {
  if (v.IsInt64()) {
    const int64_t i = v.GetInt64();
    if (i < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
        (i > 0 && static_cast<uint64_t>(i) > static_cast<uint64_t>(std::numeric_limits<T>::max()))) {
      return false;
    }
    Put<T>(out, static_cast<T>(i));
    return true;
  }
  if (v.IsUint64() && std::numeric_limits<T>::max() >= v.GetUint64()) {
    Put<T>(out, static_cast<T>(v.GetUint64()));
    return true;
  }
  return false;
}

// A JSON leaf in the tensor's element type; false for what the Python frontend must judge.
bool PutLeaf(std::string* out, DataType dtype, const Value& v) {
  switch (dtype) {
    case DataType::kBool:
      if (!v.IsBool()) return false;
      Put<uint8_t>(out, v.GetBool());
      return true;
    case DataType::kInt8: return PutInt<int8_t>(out, v);
    case DataType::kInt16: return PutInt<int16_t>(out, v);
    case DataType::kInt32: return PutInt<int32_t>(out, v);
    case DataType::kInt64: return PutInt<int64_t>(out, v);
    case DataType::kUint8: return PutInt<uint8_t>(out, v);
    case DataType::kUint16: return PutInt<uint16_t>(out, v);
    case DataType::kUint32: return PutInt<uint32_t>(out, v);
    case DataType::kUint64: return PutInt<uint64_t>(out, v);
    case DataType::kFp32:
      if (!v.IsNumber()) return false;
      Put<float>(out, static_cast<float>(v.GetDouble()));
      return true;
    case DataType::kFp64:
      if (!v.IsNumber()) return false;
      Put<double>(out, v.GetDouble());
      return true;
    case DataType::kBytes:
      if (!v.IsString()) return false;
      Put<uint32_t>(out, v.GetStringLength());
      out->append(v.GetString(), v.GetStringLength());
      return true;
    default:
      return false;  // FP16, BF16: refused over JSON, in the Python frontend's words
  }
}

// Nested "data" arrays deeper than any tensor's rank are left to the shell to refuse.
constexpr int kMaxDataDepth = 64;

bool Flatten(const Value& v, DataType dtype, std::string* out, int64_t* count, int depth = 0) {
  if (!v.IsArray()) {
    ++*count;
    return PutLeaf(out, dtype, v);
  }
  if (depth == kMaxDataDepth) return false;
  for (const Value& item : v.GetArray()) {
    if (!Flatten(item, dtype, out, count, depth + 1)) return false;
  }
  return true;
}

const Value* Member(const Value& object, const char* name) {
  auto it = object.FindMember(name);
  return it == object.MemberEnd() ? nullptr : &it->value;
}

// A request parameter the model sees; false for a type the core does not carry.
bool ModelParameter(const char* key, const Value& v, Parameter* p) {
  p->key = key;
  if (v.IsBool()) {
    p->kind = Parameter::Kind::kBool;
    p->bool_value = v.GetBool();
  } else if (v.IsInt64()) {
    p->kind = Parameter::Kind::kInt;
    p->int_value = v.GetInt64();
  } else if (v.IsDouble()) {
    p->kind = Parameter::Kind::kDouble;
    p->double_value = v.GetDouble();
  } else if (v.IsString()) {
    p->string_value = v.GetString();
  } else {
    return false;
  }
  return true;
}

// Whether the header declares more than the server's limits allow (the Python frontend, which
// counts the same, words the refusal); checked before anything is built from it.
bool OverLimits(const rapidjson::Document& header) {
  const RequestLimits& limits = Limits();
  size_t parameters = 0;
  auto count_parameters = [&](const Value& object) {
    const Value* p = Member(object, "parameters");
    if (p != nullptr && p->IsObject()) parameters += p->MemberCount();
  };
  count_parameters(header);
  for (const char* key : {"inputs", "outputs"}) {
    const Value* tensors = Member(header, key);
    if (tensors == nullptr || !tensors->IsArray()) continue;
    if (tensors->Size() > (key[0] == 'i' ? limits.inputs : limits.outputs)) return true;
    for (const Value& spec : tensors->GetArray()) {
      if (!spec.IsObject()) continue;
      count_parameters(spec);
      const Value* shape = Member(spec, "shape");
      if (shape != nullptr && shape->IsArray() && shape->Size() > limits.rank) return true;
    }
  }
  return parameters > limits.parameters;
}

// A tensor's shared_memory_* parameters; false for anything the Python frontend must word
// (a malformed value, an unknown region, a range outside it).
struct ShmParams {
  const Value* region = nullptr;
  uint64_t offset = 0, byte_size = 0;
};

bool ShmParam(const char* key, const Value& v, ShmParams* shm) {
  const std::string_view name(key);
  if (name == "shared_memory_region") {
    shm->region = &v;
    return v.IsString();
  }
  if (name == "shared_memory_offset" && v.IsUint64()) {
    shm->offset = v.GetUint64();
    return true;
  }
  if (name == "shared_memory_byte_size" && v.IsUint64()) {
    shm->byte_size = v.GetUint64();
    return true;
  }
  return false;
}

bool IsShmKey(std::string_view key) { return key.rfind("shared_memory_", 0) == 0; }

bool ResolveShm(const ShmParams& shm, const SharedMemoryRegistry* registry,
                SharedMemoryBlock* block) {
  return registry != nullptr &&
         registry->Find(shm.region->GetString(), shm.offset, shm.byte_size, block).ok();
}

bool NonNegative(const Value& v, uint64_t* out) {
  if (!v.IsUint64()) return false;
  *out = v.GetUint64();
  return true;
}

void WriteData(Writer& w, const OutputTensor& t) {
  w.StartArray();
  const size_t size = ElementSize(t.dtype);
  const size_t count = size ? t.byte_size / size : 0;
  const uint8_t* p = t.data;
  for (size_t i = 0; i < count; ++i, p += size) {
    switch (t.dtype) {
      case DataType::kBool: w.Bool(*p != 0); break;
      case DataType::kInt8: w.Int(static_cast<int8_t>(*p)); break;
      case DataType::kUint8: w.Uint(*p); break;
      case DataType::kInt16: { int16_t v; std::memcpy(&v, p, 2); w.Int(v); break; }
      case DataType::kUint16: { uint16_t v; std::memcpy(&v, p, 2); w.Uint(v); break; }
      case DataType::kInt32: { int32_t v; std::memcpy(&v, p, 4); w.Int(v); break; }
      case DataType::kUint32: { uint32_t v; std::memcpy(&v, p, 4); w.Uint(v); break; }
      case DataType::kInt64: { int64_t v; std::memcpy(&v, p, 8); w.Int64(v); break; }
      case DataType::kUint64: { uint64_t v; std::memcpy(&v, p, 8); w.Uint64(v); break; }
      case DataType::kFp32: { float v; std::memcpy(&v, p, 4); w.Double(v); break; }
      case DataType::kFp64: { double v; std::memcpy(&v, p, 8); w.Double(v); break; }
      default: break;
    }
  }
  if (t.dtype == DataType::kBytes) {
    std::string text;
    ForEachString(t.data, t.byte_size, [&](const uint8_t* element, size_t length) {
      text.clear();
      AppendUtf8Replacing(element, length, &text);
      w.String(text.data(), static_cast<rapidjson::SizeType>(text.size()));
    });
  }
  w.EndArray();
}

}  // namespace

bool JsonToTensor(const rapidjson::Value& value, DataType dtype, std::string* out, int64_t* count) {
  return Flatten(value, dtype, out, count);
}

bool JsonToParameter(const char* key, const rapidjson::Value& value, Parameter* parameter) {
  return ModelParameter(key, value, parameter);
}

std::string OutputJson(const OutputTensor& tensor) {
  rapidjson::StringBuffer buffer;
  Writer writer(buffer);
  WriteData(writer, tensor);
  return std::string(buffer.GetString(), buffer.GetSize());
}

bool DecodeInfer(std::string_view body, std::string_view header_length,
                 const SharedMemoryRegistry* shared_memory, HttpInfer* infer,
                 InferRequest* request) {
  size_t length = body.size();
  if (!header_length.empty()) {
    size_t parsed = 0;
    for (char c : header_length) {
      if (c < '0' || c > '9' || parsed > body.size()) return false;
      parsed = parsed * 10 + static_cast<size_t>(c - '0');
    }
    if (parsed == 0 || parsed > body.size()) return false;
    length = parsed;
  }
  rapidjson::Document& header = infer->header;
  // Iterative: a deeply nested body cannot exhaust the stack. Strings must be valid UTF-8,
  // as they are echoed in answers.
  header.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(body.data(),
                                                                                        length);
  if (header.HasParseError() || !header.IsObject() || OverLimits(header)) return false;
  std::string_view binary = body.substr(length);

  if (const Value* id = Member(header, "id")) {
    if (!id->IsString()) return false;
    infer->id = id->GetString();
    request->request_id = infer->id;
  }
  if (const Value* parameters = Member(header, "parameters")) {
    if (!parameters->IsObject()) return false;
    for (const auto& m : parameters->GetObject()) {
      const std::string key = m.name.GetString();
      if (key == "priority") {
        if (!NonNegative(m.value, &request->priority)) return false;
      } else if (key == "timeout") {
        if (!NonNegative(m.value, &request->timeout_us)) return false;
      } else if (key == "sequence_id") {  // refusals are the Python frontend's to word
        CorrelationId& id = request->correlation_id;
        if (m.value.IsUint64()) {
          id.number = m.value.GetUint64();
        } else if (m.value.IsString() && m.value.GetStringLength() <= kMaxCorrelationIdLength) {
          id.text = m.value.GetString();
          id.is_text = true;
        } else {
          return false;
        }
      } else if (key == "sequence_start" || key == "sequence_end") {
        if (!m.value.IsBool()) return false;
        if (m.value.GetBool()) request->flags |= key == "sequence_start" ? kSequenceStart : kSequenceEnd;
      } else if (key == "binary_data_output") {
        if (!m.value.IsBool()) return false;
        infer->binary_default = m.value.GetBool();
      } else {
        Parameter p;
        if (!ModelParameter(m.name.GetString(), m.value, &p)) return false;
        request->parameters.push_back(std::move(p));
      }
    }
  }

  const Value* inputs = Member(header, "inputs");
  if (inputs == nullptr || !inputs->IsArray()) return false;  // Triton requires it
  size_t offset = 0;
  infer->converted.reserve(inputs->Size());
  for (const Value& spec : inputs->GetArray()) {
    if (!spec.IsObject()) return false;
    const Value* name = Member(spec, "name");
    const Value* datatype = Member(spec, "datatype");
    const Value* shape = Member(spec, "shape");
    if (!name || !name->IsString() || !datatype || !datatype->IsString() || !shape ||
        !shape->IsArray()) {
      return false;
    }
    TensorView view;
    view.name = name->GetString();
    view.dtype = DataTypeFromWire(datatype->GetString());
    if (view.dtype == DataType::kInvalid) return false;
    int64_t elements = 1;
    bool overflow = false;  // a declared shape beyond int64 (the core refuses it by its dims)
    for (const Value& d : shape->GetArray()) {
      if (!d.IsInt64()) return false;
      view.shape.push_back(d.GetInt64());
      overflow = overflow || __builtin_mul_overflow(elements, d.GetInt64(), &elements);
    }
    const Value* size = nullptr;
    ShmParams shm;
    if (const Value* p = Member(spec, "parameters")) {
      if (!p->IsObject()) return false;
      for (const auto& m : p->GetObject()) {
        if (IsShmKey(m.name.GetString())) {
          if (!ShmParam(m.name.GetString(), m.value, &shm)) return false;
        } else if (std::string_view(m.name.GetString()) == "binary_data_size") {
          size = &m.value;
        } else {
          return false;
        }
      }
    }
    const Value* data = Member(spec, "data");
    if ((size != nullptr) + (data != nullptr) + (shm.region != nullptr) != 1) return false;
    if (shm.region != nullptr) {
      SharedMemoryBlock block;
      if (!ResolveShm(shm, shared_memory, &block) || !ReadOnHost(block, &block).ok()) {
        return false;
      }
      view.data = block.data;
      view.byte_size = block.byte_size;
      request->held.push_back(std::move(block.keep));
    } else if (size != nullptr) {
      if (!size->IsUint64() || size->GetUint64() > binary.size() - offset) return false;
      view.data = reinterpret_cast<const uint8_t*>(binary.data() + offset);
      view.byte_size = size->GetUint64();
      offset += view.byte_size;
    } else {
      std::string& bytes = infer->converted.emplace_back();
      int64_t count = 0;
      if (overflow || !Flatten(*data, view.dtype, &bytes, &count) || count != elements) {
        return false;
      }
      view.data = reinterpret_cast<const uint8_t*>(bytes.data());
      view.byte_size = bytes.size();
    }
    request->inputs.push_back(std::move(view));
  }
  if (offset != binary.size()) return false;

  if (const Value* outputs = Member(header, "outputs")) {
    if (!outputs->IsArray()) return false;
    for (const Value& spec : outputs->GetArray()) {
      if (!spec.IsObject()) return false;
      const Value* name = Member(spec, "name");
      if (!name || !name->IsString()) return false;
      RequestedOutput requested{name->GetString(), 0, nullptr};
      bool binary_data = infer->binary_default;
      bool has_binary = false;
      ShmParams shm;
      if (const Value* p = Member(spec, "parameters")) {
        if (!p->IsObject()) return false;
        for (const auto& m : p->GetObject()) {
          const std::string_view key = m.name.GetString();
          if (IsShmKey(key)) {
            if (!ShmParam(m.name.GetString(), m.value, &shm)) return false;
          } else if (key == "binary_data" && m.value.IsBool()) {
            binary_data = m.value.GetBool();
            has_binary = true;
          } else if (key == "classification" && m.value.IsUint64() && m.value.GetUint64() >= 1 &&
                     m.value.GetUint64() <= UINT32_MAX) {
            requested.classification = static_cast<uint32_t>(m.value.GetUint64());
          } else {
            return false;
          }
        }
      }
      if (shm.region != nullptr) {  // with classification or binary_data: the shell refuses
        SharedMemoryBlock block;
        if ((has_binary && binary_data) || requested.classification != 0 ||
            !ResolveShm(shm, shared_memory, &block)) {
          return false;
        }
        requested.shared_memory = std::make_shared<const SharedMemoryBlock>(std::move(block));
      }
      if (has_binary) infer->binary.emplace_back(requested.name, binary_data);
      request->outputs.push_back(std::move(requested));
    }
  }
  return true;
}

bool IsRawRequest(std::string_view body, bool has_header_length, std::string_view header_length) {
  if (!has_header_length) return body.empty();
  size_t i = 0;
  auto space = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };  // isspace, C locale
  while (i < header_length.size() && space(header_length[i])) ++i;
  if (i < header_length.size() && (header_length[i] == '+' || header_length[i] == '-')) ++i;
  for (; i < header_length.size() && header_length[i] >= '0' && header_length[i] <= '9'; ++i) {
    if (header_length[i] != '0') return false;
  }
  return true;
}

Status DecodeRawInfer(std::string_view body, const ModelSpec& spec, HttpInfer* infer,
                      InferRequest* request) {
  const std::string prefix = "[request id: <id_unknown>] ";  // a raw request has no id
  if (spec.inputs.size() != 1) {
    return Status(StatusCode::kInvalidArg,
                  prefix + "Raw request must only have 1 input (found 1) to be deduced but got " +
                      std::to_string(spec.inputs.size()) + " inputs in '" + spec.name +
                      "' model configuration");
  }
  const TensorSpec& input = spec.inputs[0];
  TensorView view;
  view.name = input.name;
  view.dtype = input.dtype;
  if (spec.max_batch_size != 0) view.shape.push_back(1);
  size_t variable = SIZE_MAX;  // the index of the one variable dimension
  uint64_t elements = 1;
  for (int64_t d : input.dims) {
    if (d == -1) {
      if (variable != SIZE_MAX) {
        return Status(StatusCode::kInvalidArg,
                      prefix + "The shape of the raw input '" + input.name +
                          "' can not be deduced because there are more than one variable-sized dimension");
      }
      variable = view.shape.size();
    } else {
      elements *= static_cast<uint64_t>(d);  // the config's dims, checked at load
    }
    view.shape.push_back(d);
  }
  if (input.dtype == DataType::kBytes) {
    if (variable != SIZE_MAX || elements != 1) {
      return Status(StatusCode::kInvalidArg, prefix + "For BYTE datatype raw input '" + input.name +
                                                 "', the model must have input shape [1]");
    }
    if (body.size() > UINT32_MAX) {
      return Status(StatusCode::kInvalidArg, prefix + "raw input '" + input.name + "' is too large for one BYTES element");
    }
    std::string& bytes = infer->converted.emplace_back();  // Triton's length prefix, then the body
    bytes.reserve(sizeof(uint32_t) + body.size());
    Put<uint32_t>(&bytes, static_cast<uint32_t>(body.size()));
    bytes.append(body);
    view.data = reinterpret_cast<const uint8_t*>(bytes.data());
    view.byte_size = bytes.size();
  } else {
    const uint64_t row = elements * ElementSize(input.dtype);
    if (variable != SIZE_MAX) view.shape[variable] = row == 0 ? 0 : static_cast<int64_t>(body.size() / row);
    const uint64_t expected = variable != SIZE_MAX ? row * static_cast<uint64_t>(view.shape[variable]) : row;
    if (expected != body.size()) {  // worded as Triton words it: the input is still 'raw_input'
      return Status(StatusCode::kInvalidArg,
                    prefix + "input byte size mismatch for input 'raw_input' for model '" + spec.name +
                        "'. Expected " + std::to_string(expected) + ", got " + std::to_string(body.size()));
    }
    view.data = reinterpret_cast<const uint8_t*>(body.data());
    view.byte_size = body.size();
  }
  request->inputs.push_back(std::move(view));
  infer->binary_default = true;
  return Status::OK();
}

Status EncodeInfer(const std::string& model_name, const std::string& model_version,
                   const HttpInfer& infer, const InferResponse& response, std::string* body,
                   size_t* header_length) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  w.Key("model_name");
  w.String(model_name.c_str(), static_cast<rapidjson::SizeType>(model_name.size()));
  w.Key("model_version");
  w.String(model_version.c_str(), static_cast<rapidjson::SizeType>(model_version.size()));
  if (!infer.id.empty()) {
    w.Key("id");
    w.String(infer.id.c_str(), static_cast<rapidjson::SizeType>(infer.id.size()));
  }
  w.Key("outputs");
  w.StartArray();
  std::vector<const OutputTensor*> chunks;
  for (const OutputTensor& t : response.outputs) {
    bool binary = infer.binary_default;
    for (const auto& [name, value] : infer.binary) {
      if (name == t.name) binary = value;
    }
    if (t.shared_memory) binary = false;
    if (!binary && !t.shared_memory && (t.dtype == DataType::kFp16 || t.dtype == DataType::kBf16)) {
      return Status(StatusCode::kInvalidArg,
                    std::string("sending ") + WireName(t.dtype) +
                        " data via JSON is not supported. Please use the binary data format for "
                        "output");
    }
    w.StartObject();
    w.Key("name");
    w.String(t.name.c_str(), static_cast<rapidjson::SizeType>(t.name.size()));
    w.Key("datatype");
    w.String(WireName(t.dtype));
    w.Key("shape");
    w.StartArray();
    for (int64_t d : t.shape) w.Int64(d);
    w.EndArray();
    if (binary) {
      w.Key("parameters");
      w.StartObject();
      w.Key("binary_data_size");
      w.Uint64(t.byte_size);
      w.EndObject();
      chunks.push_back(&t);
    } else if (!t.shared_memory) {  // in shared memory: name, datatype and shape only
      w.Key("data");
      WriteData(w, t);
    }
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  size_t total = buffer.GetSize();
  for (const OutputTensor* t : chunks) total += t->byte_size;
  body->clear();
  body->reserve(total);
  body->append(buffer.GetString(), buffer.GetSize());
  // Binary outputs of no bytes leave the answer plain JSON, as in Triton.
  *header_length = total == buffer.GetSize() ? 0 : buffer.GetSize();
  for (const OutputTensor* t : chunks) body->append(reinterpret_cast<const char*>(t->data), t->byte_size);
  return Status::OK();
}

std::string ErrorBody(const std::string& message) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  w.Key("error");
  w.String(message.c_str(), static_cast<rapidjson::SizeType>(message.size()));
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

int HttpStatus(StatusCode code) {
  switch (code) {
    case StatusCode::kInternal: return 500;
    case StatusCode::kNotFound: return 404;
    case StatusCode::kUnavailable: return 503;
    case StatusCode::kUnsupported: return 501;
    default: return 400;
  }
}

}  // namespace pyserve::httpfront
