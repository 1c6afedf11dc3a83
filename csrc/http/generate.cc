#include "generate.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <map>
#include <utility>

#include "infer_json.h"
#include "request_limits.h"

namespace pyserve::httpfront {

namespace {

using rapidjson::Value;

const char kOneResponse[] =
    "generate expects model to produce exactly 1 response, use generate stream for model that "
    "generates various number of responses";

// Triton's two passes over an input's dims (the batch dimension first, -1, when the model
// batches): fixed dimensions divide the element count, the innermost variable one takes what
// is left, other variable ones are 1. False when the count does not fit.
bool GenerateShape(const TensorSpec& input, bool batching, int64_t count, std::vector<int64_t>* shape) {
  if (batching) shape->push_back(-1);
  shape->insert(shape->end(), input.dims.begin(), input.dims.end());
  for (auto d = shape->rbegin(); d != shape->rend(); ++d) {
    if (*d == -1) continue;
    if (*d == 0 || count % *d != 0) return false;
    count /= *d;
  }
  for (auto d = shape->rbegin(); d != shape->rend(); ++d) {
    if (*d == -1) {
      *d = count;
      count = 1;
    }
  }
  return count == 1;
}

// One key of the body: an input when it names one, else a request parameter.
bool Exact(const ModelSpec& spec, const char* key, const Value& value, PendingGenerate* pending,
           InferRequest* request) {
  const TensorSpec* input = spec.FindInput(key);
  if (input == nullptr) {
    Parameter parameter;
    if (!JsonToParameter(key, value, &parameter)) return false;
    request->parameters.push_back(std::move(parameter));
    return true;
  }
  if (value.IsArray()) {
    for (const Value& item : value.GetArray()) {
      if (item.IsArray()) return false;  // one dimension only; the shell words the rest
    }
  }
  std::string& bytes = pending->converted.emplace_back();
  int64_t count = 0;
  TensorView view;
  if (!JsonToTensor(value, input->dtype, &bytes, &count) ||
      !GenerateShape(*input, spec.max_batch_size > 0, count, &view.shape)) {
    return false;
  }
  view.name = key;
  view.dtype = input->dtype;
  view.data = reinterpret_cast<const uint8_t*>(bytes.data());
  view.byte_size = bytes.size();
  request->inputs.push_back(std::move(view));
  return true;
}

// The response as Triton's generate writes it: keys sorted, one element as a plain value.
std::string Document(const PendingGenerate& pending, const InferResponse& response) {
  auto quoted = [](const std::string& text) {
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
    writer.String(text.data(), static_cast<rapidjson::SizeType>(text.size()));
    return std::string(buffer.GetString(), buffer.GetSize());
  };
  std::map<std::string, std::string> fields;  // name -> JSON value
  fields["model_name"] = quoted(pending.model->spec().name);
  fields["model_version"] = quoted(std::to_string(pending.model->spec().version));
  if (!pending.id.empty()) fields["id"] = quoted(pending.id);
  for (const OutputTensor& t : response.outputs) {
    std::string data = OutputJson(t);  // "[...]"
    uint64_t count = 0;
    const bool single = CountElements(t.shape, &count) && count == 1 && data.size() > 2;
    fields[t.name] = single ? data.substr(1, data.size() - 2) : std::move(data);
  }
  std::string out = "{";
  for (const auto& [name, value] : fields) {
    if (out.size() > 1) out += ',';
    out += quoted(name) + ':' + value;
  }
  return out + '}';
}

}  // namespace

bool DecodeGenerate(const ModelSpec& spec, PendingGenerate* pending, InferRequest* request) {
  rapidjson::Document& json = pending->json;
  json.Parse(pending->body.data(), pending->body.size());
  if (json.HasParseError() || !json.IsObject()) return false;
  size_t keys = json.MemberCount();
  const Value* nested = nullptr;
  if (auto found = json.FindMember("parameters"); found != json.MemberEnd()) {
    if (!found->value.IsObject() || spec.FindInput("parameters") != nullptr) return false;
    nested = &found->value;
    keys += nested->MemberCount();
  }
  if (keys > Limits().parameters + Limits().inputs) return false;  // the shell counts exactly
  if (auto id = json.FindMember("id"); id != json.MemberEnd()) {
    if (!id->value.IsString()) return false;
    pending->id = id->value.GetString();
    request->request_id = pending->id;
  }
  for (const auto& member : json.GetObject()) {
    if (&member.value == nested) continue;
    if (!Exact(spec, member.name.GetString(), member.value, pending, request)) return false;
  }
  if (nested != nullptr) {
    for (const auto& member : nested->GetObject()) {
      if (!Exact(spec, member.name.GetString(), member.value, pending, request)) return false;
    }
  }
  return true;
}

void GenerateSink::Deliver(std::vector<Completion>& completions) {
  for (Completion& c : completions) {
    auto pending = std::static_pointer_cast<PendingGenerate>(c.owner);
    const InferResponse& response = c.response;
    std::string document;  // none: a decoupled model's bare final flag
    int status = 200;
    if (!response.status.ok()) {
      status = HttpStatus(response.status.code());
      document = ErrorBody(response.status.message());
    } else if (!c.empty) {
      try {
        document = Document(*pending, response);
      } catch (const std::exception& e) {
        status = 500;
        document = ErrorBody(std::string("failed to encode the response: ") + e.what());
      }
    }
    if (pending->status == 0) pending->status = status;
    if (!pending->streaming) {
      if (!document.empty()) {
        ++pending->responses;
        pending->document = std::move(document);
      }
      if (!c.final) continue;
      HttpResponse answer;
      answer.status = pending->status;
      answer.content_type = "application/json";
      answer.body = pending->responses == 1 ? std::move(pending->document) : ErrorBody(kOneResponse);
      pending->exchange->Answer(std::move(answer));
      continue;
    }
    if (!pending->started) {
      pending->started = true;
      HttpResponse head;
      head.status = pending->status;
      head.content_type = "text/event-stream; charset=utf-8";
      pending->exchange->Head(std::move(head));
    }
    if (!document.empty()) pending->exchange->Chunk("data: " + document + "\n\n");
    if (c.final) pending->exchange->End();
  }
}

}  // namespace pyserve::httpfront
