// Triton's generate extension on the native HTTP server. POST /v2/models/M[/versions/V]/
// generate answers a model's one response as a flat JSON object; .../generate_stream sends each
// response of any model, decoupled or not, as a server-sent event ("data: {...}\n\n"). The
// mapping is Triton's (src/http_server.cc, ConvertGenerateRequest): top-level keys that name a
// model input are that input (a value or a 1-D array, shaped by the input's dims), every other
// key (`id` included, which is also the request's id) and the keys of a `parameters` object are
// request parameters; a response holds model_name, model_version, id and each output by name
// (one element as a plain value), keys sorted. What it does not convert goes to the shell,
// which words the refusal.
#pragma once

#include <rapidjson/document.h>

#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "exchange.h"
#include "model.h"
#include "request.h"
#include "response.h"

namespace pyserve::httpfront {

// One generate request in the core: the bytes its inputs view and the state of its answer.
struct PendingGenerate {
  std::string body;
  rapidjson::Document json;
  std::deque<std::string> converted;  // input bytes (a deque: growing it moves none)
  std::string id;
  bool streaming = false;
  std::shared_ptr<Model> model;
  std::shared_ptr<Exchange> exchange;
  std::atomic<bool> cancelled{false};  // the client left
  // The answer so far; completions of one request come one at a time.
  int status = 0;          // of the first response, as Triton's
  bool started = false;    // streaming: the head is sent
  int responses = 0;       // not streaming: responses with a body
  std::string document;    // not streaming: the last of them
};

// Fills `request` from `pending->body` (inputs view `pending->converted`); false when the
// shell must take the request.
bool DecodeGenerate(const ModelSpec& spec, PendingGenerate* pending, InferRequest* request);

// Where generate requests' responses go: each becomes JSON (an SSE event when streaming).
class GenerateSink : public ResponseSink {
 public:
  void Deliver(std::vector<Completion>& completions) override;
};

}  // namespace pyserve::httpfront
