#include "routes.h"

#include <algorithm>
#include <cctype>

#include "compression.h"
#include "http_server.h"
#include "infer_json.h"
#include "trace.h"

namespace pyserve::httpfront {

namespace {

const char kErrorType[] = "application/json; charset=utf-8";

// One inference request waiting for the core; the bytes `infer` views live here.
struct PendingInfer {
  std::string body;
  HttpInfer infer;
  std::shared_ptr<Model> model;
  std::shared_ptr<Exchange> exchange;
  const char* encoding = "";  // the answer's, from Accept-Encoding ("" for identity)
  std::atomic<bool> cancelled{false};  // the client left
};

// "/v2/models/NAME[/versions/V]/SUFFIX": the name and version, or false.
bool ModelPath(const std::string& path, const std::string& suffix, std::string* name, std::string* version) {
  static const std::string prefix = "/v2/models/";
  if (path.size() <= prefix.size() + suffix.size() || path.compare(0, prefix.size(), prefix) != 0 ||
      path.compare(path.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return false;
  }
  std::string middle = path.substr(prefix.size(), path.size() - prefix.size() - suffix.size());
  const size_t slash = middle.find('/');
  if (slash == std::string::npos) {
    *name = middle;
    version->clear();
  } else {
    static const std::string versions = "/versions/";
    if (middle.compare(slash, versions.size(), versions) != 0) return false;
    *name = middle.substr(0, slash);
    *version = middle.substr(slash + versions.size());
    if (version->empty() || version->find('/') != std::string::npos) return false;
  }
  return !name->empty();
}

HttpResponse Error(const Status& status) {
  HttpResponse response;
  response.status = HttpStatus(status.code());
  response.content_type = kErrorType;
  response.body = ErrorBody(status.message());
  return response;
}

HttpResponse Empty(int status) {
  HttpResponse response;
  response.status = status;
  return response;
}

// Answers whose outputs hold at most this many bytes are encoded and written by the core's
// thread (Exchange::AnswerHere); larger ones are encoded on the connection's loop.
constexpr size_t kAnswerHereBytes = 16 << 10;

size_t OutputBytes(const InferResponse& response) {
  size_t bytes = 0;
  for (const OutputTensor& output : response.outputs) bytes += output.byte_size;
  return bytes;
}

// The answer to a request the core has answered, encoded as Triton's HTTP API writes it.
HttpResponse Encoded(PendingInfer& pending, const InferResponse& response) {
  if (!response.status.ok()) return Error(response.status);
  HttpResponse out;
  size_t json_length = 0;
  Status status;
  try {  // a response too large to hold fails alone, with words (as the gRPC sink's)
    status = EncodeInfer(pending.model->spec().name, std::to_string(pending.model->spec().version),
                         pending.infer, response, &out.body, &json_length);
  } catch (const std::exception& e) {
    status = Status(StatusCode::kInternal, std::string("failed to encode the response: ") + e.what());
  }
  if (!status.ok()) return Error(status);
  if (*pending.encoding != '\0' && Compress(pending.encoding, &out.body)) {
    out.Set("Content-Encoding", pending.encoding);
  }
  if (json_length == 0) {
    out.content_type = "application/json";
  } else {
    out.Set("Inference-Header-Content-Length", std::to_string(json_length));
    out.content_type = "application/octet-stream";
  }
  return out;
}

}  // namespace

Routes::Routes(std::shared_ptr<ModelTable> table, const HttpOptions& options)
    : table_(std::move(table)), options_(options) {
  if (!options_.header_forward_pattern.empty()) {  // checked by the shell before it gets here
    forward_.emplace(options_.header_forward_pattern, std::regex::ECMAScript | std::regex::optimize);
  }
}

std::string Routes::ErrorText(int status, const std::string& message) const {
  return options_.predictions ? TorchServeError(status, "BadRequestException", message) : ErrorBody(message);
}

bool Routes::Serve(HttpRequest& request, const std::shared_ptr<Session>& session, uint64_t serial) {
  if (options_.predictions) return options_.predictions->Handle(request, MakeExchange(session, serial));
  if (request.method == "GET" && Health(request, session, serial)) return true;
  return request.method == "POST" && !request.Has("Content-Encoding") &&
         (Infer(request, session, serial) || Generate(request, session, serial));
}

bool Routes::Refused(const char* group, const HttpRequest& request, const std::shared_ptr<Session>& session,
                     uint64_t serial) {
  if (options_.restricted.empty()) return false;  // the usual case: no lookup per request
  auto found = options_.restricted.find(group);
  if (found == options_.restricted.end()) return false;
  const auto& [key, value] = found->second;
  if (request.Has(key) && request.Header(key) == value) return false;
  HttpResponse response;
  response.status = 403;
  response.content_type = kErrorType;
  response.body = ErrorBody("This API is restricted, expecting header '" + key + "'");
  MakeExchange(session, serial)->Answer(std::move(response));
  return true;
}

// A request parameter of the same name wins over a forwarded header.
void Routes::ForwardHeaders(const HttpRequest& request, InferRequest* infer) const {
  if (!forward_) return;
  for (const auto& [header, value] : request.headers) {
    std::string name = header;
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    if (!std::regex_search(name, *forward_)) continue;
    const bool given = std::any_of(infer->parameters.begin(), infer->parameters.end(),
                                   [&](const Parameter& p) { return p.key == name; });
    if (given) continue;
    Parameter parameter;
    parameter.key = std::move(name);
    parameter.string_value = value;
    infer->parameters.push_back(std::move(parameter));
  }
}

bool Routes::Health(const HttpRequest& request, const std::shared_ptr<Session>& session, uint64_t serial) {
  int status = 0;
  std::string name, version;
  if (request.path == "/v2/health/live") {
    status = 200;
  } else if (request.path == "/v2/health/ready") {
    status = table_->ServerReady() ? 200 : 400;
  } else if (ModelPath(request.path, "/ready", &name, &version)) {
    // Find reads plain numbers as the shell does; the shell reads the rest ("+1", " 1").
    if (!std::all_of(version.begin(), version.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
    status = table_->Find(name, version) ? 200 : 400;
  } else {
    return false;
  }
  if (Refused("health", request, session, serial)) return true;
  if (status != 200 && !name.empty()) {  // a model's answer says why, in Triton's words
    MakeExchange(session, serial)->Answer(Error(Status(StatusCode::kInvalidArg, "Model version not ready")));
    return true;
  }
  MakeExchange(session, serial)->Answer(Empty(status));
  return true;
}

bool Routes::Infer(HttpRequest& request, const std::shared_ptr<Session>& session, uint64_t serial) {
  std::string name, version;
  if (!ModelPath(request.path, "/infer", &name, &version)) return false;
  if (Refused("inference", request, session, serial)) return true;
  std::shared_ptr<Model> model = table_->Find(name, version);
  if (!model) return false;
  if (model->spec().decoupled) {  // one response per request only (Triton's refusal)
    MakeExchange(session, serial)->Answer(Error(Status(
        StatusCode::kUnsupported,
        "HTTP end point doesn't support models with decoupled transaction policy")));
    return true;
  }
  auto pending = std::make_shared<PendingInfer>();
  pending->body.swap(request.body);
  auto infer = std::make_unique<InferRequest>();
  static const char kHeaderLength[] = "Inference-Header-Content-Length";
  const bool raw = IsRawRequest(pending->body, request.Has(kHeaderLength), request.Header(kHeaderLength));
  if (raw) {
    if (Status status = DecodeRawInfer(pending->body, model->spec(), &pending->infer, infer.get()); !status.ok()) {
      MakeExchange(session, serial)->Answer(Error(status));
      return true;
    }
  } else if (!DecodeInfer(pending->body, request.Header(kHeaderLength), options_.shared_memory.get(), &pending->infer,
                          infer.get())) {
    request.body.swap(pending->body);  // the shell answers it, in its words
    return false;
  }
  ForwardHeaders(request, infer.get());
  pending->encoding = ResponseEncoding(request.Header("Accept-Encoding"));
  pending->exchange = MakeExchange(session, serial);
  // A client that leaves first cancels the request (answered CANCELLED by the core instead
  // of computed, if it is still queued).
  pending->exchange->OnGone([pending] { pending->cancelled.store(true, std::memory_order_relaxed); });
  infer->sink = this;
  infer->owner = pending;
  infer->cancelled = &pending->cancelled;
  if (Tracer::Active()) {
    infer->trace = Tracer::Get().Sample(name, model->spec().version, infer->request_id,
                                        request.Header("traceparent"));
    if (infer->trace) infer->trace->Stamp("REQUEST_START", SteadyNowNs());
  }
  // Set before Submit: the answer may be encoded (on the core's thread) before it returns.
  pending->model = std::move(model);
  Status status = table_->Submit(name, version, &pending->model, infer);
  if (!status.ok()) pending->exchange->Answer(Error(status));
  return true;
}

bool Routes::Generate(HttpRequest& request, const std::shared_ptr<Session>& session, uint64_t serial) {
  std::string name, version;
  const bool streaming = ModelPath(request.path, "/generate_stream", &name, &version);
  if (!streaming && !ModelPath(request.path, "/generate", &name, &version)) return false;
  if (Refused("inference", request, session, serial)) return true;
  std::shared_ptr<Model> model = table_->Find(name, version);
  if (!model) return false;
  auto pending = std::make_shared<PendingGenerate>();
  pending->streaming = streaming;
  pending->body.swap(request.body);
  auto infer = std::make_unique<InferRequest>();
  if (!DecodeGenerate(model->spec(), pending.get(), infer.get())) {
    request.body.swap(pending->body);  // the shell answers it, in its words
    return false;
  }
  ForwardHeaders(request, infer.get());
  pending->exchange = MakeExchange(session, serial);
  pending->exchange->OnGone([pending] { pending->cancelled.store(true, std::memory_order_relaxed); });
  infer->sink = &generate_sink_;
  infer->owner = pending;
  infer->cancelled = &pending->cancelled;
  pending->model = model;  // before Submit: a response may come before it returns
  Status status = table_->Submit(name, version, &model, infer);
  if (!status.ok()) pending->exchange->Answer(Error(status));
  return true;
}

void Routes::Deliver(std::vector<Completion>& completions) {
  for (Completion& c : completions) {
    auto pending = std::static_pointer_cast<PendingInfer>(c.owner);
    if (OutputBytes(c.response) <= kAnswerHereBytes) {  // cheaper to write than to hand over
      HttpResponse out = Encoded(*pending, c.response);
      if (!pending->exchange->AnswerHere(out)) pending->exchange->Answer(std::move(out));
      continue;
    }
    // Encoded on the connection's loop, not on the core's thread, which has the next batch to run.
    auto response = std::make_shared<InferResponse>(std::move(c.response));
    pending->exchange->Run([pending, response] { pending->exchange->Answer(Encoded(*pending, *response)); });
  }
}

}  // namespace pyserve::httpfront
