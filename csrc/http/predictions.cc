#include "predictions.h"

#include <rapidjson/document.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <strings.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <random>
#include <string_view>

#include "multipart.h"

namespace pyserve::httpfront {

using Clock = std::chrono::steady_clock;

// One prediction in progress. Its mutex orders what is written to the exchange (the core's
// answer, the shell's pushed chunks, the timeout), so that exactly one of them ends it.
struct Predictions::Pending {
  std::mutex mutex;
  std::string element;  // the `data` input's one BYTES element: u32 length + the body
  uint64_t token = 0;
  std::string key, request_id;
  std::shared_ptr<Exchange> exchange;
  Headers response_headers;  // CORS, on every answer
  Clock::time_point arrival;
  Clock::time_point since;  // the handler's start or its last chunk: the timeout counts from it
  std::chrono::seconds timeout{0};
  bool streaming = false;  // the head and chunks have been written
  bool finished = false;   // answered, timed out, or its client is gone
  std::atomic<bool> cancelled{false};
};

namespace {

constexpr int kDefaultTimeoutS = 120;
constexpr char kJson[] = "application/json; charset=utf-8";

struct Frame {
  int status = 200;
  std::string phrase;
  std::vector<std::pair<std::string, std::string>> headers;
  int64_t started_ns = 0;
  bool error = false;  // a failed batch, answered by the backend in TorchServe's words
  std::string_view body;
};

bool ParseFrame(std::string_view frame, Frame* out) {
  if (frame.size() < 4) return false;
  uint32_t length;
  std::memcpy(&length, frame.data(), 4);
  if (length > frame.size() - 4) return false;
  rapidjson::Document meta;
  meta.Parse(frame.data() + 4, length);
  if (meta.HasParseError() || !meta.IsObject()) return false;
  if (meta.HasMember("status") && meta["status"].IsInt()) out->status = meta["status"].GetInt();
  if (meta.HasMember("phrase") && meta["phrase"].IsString()) out->phrase = meta["phrase"].GetString();
  if (meta.HasMember("started_ns") && meta["started_ns"].IsInt64()) {
    out->started_ns = meta["started_ns"].GetInt64();
  }
  if (meta.HasMember("error") && meta["error"].IsBool()) out->error = meta["error"].GetBool();
  if (meta.HasMember("headers") && meta["headers"].IsObject()) {
    for (const auto& h : meta["headers"].GetObject()) {
      if (h.value.IsString()) out->headers.emplace_back(h.name.GetString(), h.value.GetString());
    }
  }
  out->body = frame.substr(4 + length);
  return true;
}

// The frame a response carries: the one BYTES element of its `output`.
bool ResponseFrame(const InferResponse& response, Frame* out) {
  if (response.outputs.size() != 1) return false;
  const OutputTensor& output = response.outputs[0];
  if (output.byte_size < 4) return false;
  uint32_t length;
  std::memcpy(&length, output.data, 4);
  if (length > output.byte_size - 4) return false;
  return ParseFrame(std::string_view(reinterpret_cast<const char*>(output.data) + 4, length), out);
}

// The frame's status, phrase and headers on `res`; its content type application/octet-stream,
// as TorchServe answers bytes, when the handler set none.
void StatusAndHeaders(const Frame& frame, HttpResponse& res) {
  res.status = frame.error ? std::max(frame.status, 400) : frame.status;
  if (!frame.phrase.empty()) res.reason = frame.phrase;
  res.content_type = "application/octet-stream";
  for (const auto& [name, value] : frame.headers) {
    if (EqualsIgnoringCase(name, "content-type")) {
      res.content_type = value;
    } else if (!EqualsIgnoringCase(name, "content-length") && !EqualsIgnoringCase(name, "transfer-encoding")) {
      res.Set(name, value);
    }
  }
}

// "/predictions/NAME[/VERSION]": the table's key ("NAME" or "NAME/VERSION"), or "".
std::string PredictionKey(const std::string& path) {
  static const std::string prefix = "/predictions/";
  if (path.size() <= prefix.size() || path.compare(0, prefix.size(), prefix) != 0) return "";
  std::string key = path.substr(prefix.size());
  const size_t slash = key.find('/');
  if (slash == 0 || (slash != std::string::npos &&
                     (slash + 1 == key.size() || key.find('/', slash + 1) != std::string::npos))) {
    return "";  // an empty name or version, or a longer path (url_path): the shell's
  }
  return key;
}

std::string Uuid4() {
  thread_local std::mt19937_64 random{std::random_device{}()};
  uint64_t high = random(), low = random();
  high = (high & ~0xF000ull) | 0x4000ull;                     // version 4
  low = (low & ~(0xC000ull << 48)) | (0x8000ull << 48);       // RFC 4122 variant
  char text[37];
  std::snprintf(text, sizeof(text), "%08x-%04x-%04x-%04x-%012llx",
                static_cast<unsigned>(high >> 32), static_cast<unsigned>((high >> 16) & 0xFFFF),
                static_cast<unsigned>(high & 0xFFFF), static_cast<unsigned>(low >> 48),
                static_cast<unsigned long long>(low & 0xFFFFFFFFFFFFull));
  return text;
}

// The request's headers as the handler sees them: lower-case names, the last value of each.
std::string HeadersJson(const HttpRequest& req) {
  std::map<std::string, std::string> headers;
  for (const auto& [name, value] : req.headers) {
    std::string lower(name);
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    headers[lower] = value;
  }
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
  w.StartObject();
  for (const auto& [name, value] : headers) {
    w.Key(name.c_str(), static_cast<rapidjson::SizeType>(name.size()));
    w.String(value.c_str(), static_cast<rapidjson::SizeType>(value.size()));
  }
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

// The parts of a form body as the handler's entries: [[name, content type, offset, size], ...]
// into the body.
std::string PartsJson(const std::vector<FormPart>& parts) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
  w.StartArray();
  for (const FormPart& part : parts) {
    w.StartArray();
    w.String(part.name.c_str(), static_cast<rapidjson::SizeType>(part.name.size()));
    w.String(part.content_type.c_str(), static_cast<rapidjson::SizeType>(part.content_type.size()));
    w.Uint64(part.offset);
    w.Uint64(part.size);
    w.EndArray();
  }
  w.EndArray();
  return std::string(buffer.GetString(), buffer.GetSize());
}

bool FormBody(const HttpRequest& req) {
  const std::string_view type = req.Header("Content-Type");
  return EqualsIgnoringCase(type.substr(0, 10), "multipart/") ||
         EqualsIgnoringCase(type.substr(0, 33), "application/x-www-form-urlencoded");
}

uint64_t SteadyNs(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

HttpResponse ErrorAnswer(int status, const char* type, const std::string& message) {
  HttpResponse res;
  res.status = status;
  res.content_type = kJson;
  res.body = TorchServeError(status, type, message);
  return res;
}

// The final answer of a request that streamed nothing, from its `frame`; false when it is an
// error (the handler's, or the server's).
bool Answer(const InferResponse& response, size_t max_response_bytes, HttpResponse& res, Frame* frame) {
  if (!response.status.ok()) {
    res = ErrorAnswer(503, "ServiceUnavailableException", response.status.message());
    return false;
  }
  if (!ResponseFrame(response, frame)) {
    res = ErrorAnswer(500, "InternalServerException", "the handler's answer is malformed");
    return false;
  }
  if (frame->body.size() > max_response_bytes) {
    res = ErrorAnswer(507, "InternalServerException", "Response size exceeds the limit (max_response_size)");
    return false;
  }
  StatusAndHeaders(*frame, res);
  res.body = std::string(frame->body);
  return res.status < 400;
}

}  // namespace

std::string TorchServeError(int code, const std::string& type, const std::string& message) {
  // Python's json.dumps(indent=2), which TorchServe's answers (and the shell's) follow.
  rapidjson::StringBuffer buffer;
  rapidjson::PrettyWriter<rapidjson::StringBuffer, rapidjson::UTF8<>, rapidjson::ASCII<>> w(buffer);
  w.SetIndent(' ', 2);
  w.StartObject();
  w.Key("code");
  w.Int(code);
  w.Key("type");
  w.String(type.c_str(), static_cast<rapidjson::SizeType>(type.size()));
  w.Key("message");
  w.String(message.c_str(), static_cast<rapidjson::SizeType>(message.size()));
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

Predictions::Predictions(PredictionsOptions options) : options_(std::move(options)) {}

void Predictions::SetKey(const std::string& key, int64_t expires_unix_s) {
  std::unique_lock<std::shared_mutex> lock(settings_mutex_);
  key_ = key;
  key_expires_ = expires_unix_s;
}

void Predictions::SetResponseTimeout(const std::string& key, int seconds) {
  std::unique_lock<std::shared_mutex> lock(settings_mutex_);
  timeouts_[key] = seconds;
}

bool Predictions::Authorized(const HttpRequest& req) const {
  std::shared_lock<std::shared_mutex> lock(settings_mutex_);
  if (key_.empty()) return true;
  if (key_expires_ != 0 && std::time(nullptr) >= key_expires_) return false;
  std::string_view given = req.Header("Authorization");
  if (given.substr(0, 7) != "Bearer ") return false;
  given.remove_prefix(7);
  while (!given.empty() && std::isspace(static_cast<unsigned char>(given.back()))) given.remove_suffix(1);
  while (!given.empty() && std::isspace(static_cast<unsigned char>(given.front()))) given.remove_prefix(1);
  // Constant time over the key's length, as secrets.compare_digest.
  unsigned char differ = given.size() != key_.size();
  for (size_t i = 0; i < key_.size(); ++i) {
    differ |= static_cast<unsigned char>(key_[i] ^ (i < given.size() ? given[i] : 0));
  }
  return differ == 0;
}

int Predictions::ResponseTimeout(const std::string& key) const {
  std::shared_lock<std::shared_mutex> lock(settings_mutex_);
  auto found = timeouts_.find(key);
  return found == timeouts_.end() ? kDefaultTimeoutS : found->second;
}

namespace {

// Counts the status class of the answer it carries; otherwise the exchange it wraps.
class CountingExchange : public Exchange {
 public:
  CountingExchange(std::shared_ptr<Exchange> inner,
                   std::shared_ptr<std::array<std::atomic<uint64_t>, 3>> classes)
      : inner_(std::move(inner)), classes_(std::move(classes)) {}
  void Answer(HttpResponse response) override {
    Count(response.status);
    inner_->Answer(std::move(response));
  }
  void Head(HttpResponse head) override {
    Count(head.status);
    inner_->Head(std::move(head));
  }
  void Chunk(std::string data) override { inner_->Chunk(std::move(data)); }
  void End() override { inner_->End(); }
  void OnGone(std::function<void()> gone) override { inner_->OnGone(std::move(gone)); }
  void Timer(std::chrono::steady_clock::time_point when, std::function<void()> fire) override {
    inner_->Timer(when, std::move(fire));
  }
  void Run(std::function<void()> task) override { inner_->Run(std::move(task)); }

 private:
  void Count(int status) {
    const int index = status >= 200 && status < 300 ? 0 : status >= 400 && status < 500 ? 1
                    : status >= 500 ? 2 : -1;
    if (index >= 0) (*classes_)[index].fetch_add(1, std::memory_order_relaxed);
  }
  std::shared_ptr<Exchange> inner_;
  std::shared_ptr<std::array<std::atomic<uint64_t>, 3>> classes_;
};

}  // namespace

// TorchServe's `GET /ping`, from what the model store last published: probes never wait for
// the shell.
bool Predictions::Ping(const HttpRequest& req, std::shared_ptr<Exchange> exchange) {
  if (!Authorized(req)) return false;  // the shell refuses it in TorchServe's words
  const bool healthy = healthy_.load(std::memory_order_relaxed);
  HttpResponse res;
  res.status = healthy ? 200 : 500;
  res.content_type = kJson;
  res.body = healthy ? "{\n  \"status\": \"Healthy\"\n}" : "{\n  \"status\": \"Unhealthy\"\n}";
  for (const auto& [name, value] : options_.response_headers) res.Set(name, value);
  CountingExchange(std::move(exchange), status_classes_).Answer(std::move(res));
  return true;
}

bool Predictions::Handle(HttpRequest& req, std::shared_ptr<Exchange> exchange) {
  if (req.method == "GET" && req.path == "/ping") return Ping(req, std::move(exchange));
  if ((req.method != "POST" && req.method != "PUT") || req.Has("Content-Encoding")) return false;
  // multipart/form-data is split here; other form bodies are the shell's to parse.
  std::vector<FormPart> parts;
  const std::string boundary = FormDataBoundary(req.Header("Content-Type"));
  if (boundary.empty() ? FormBody(req) : !SplitFormData(req.body, boundary, &parts)) return false;
  const std::string key = PredictionKey(req.path);
  if (key.empty() || !Authorized(req)) return false;
  std::shared_ptr<Model> model = options_.table->Find(key, "");
  if (!model) return false;

  exchange = std::make_shared<CountingExchange>(std::move(exchange), status_classes_);
  auto pending = std::make_shared<Pending>();
  pending->arrival = pending->since = Clock::now();
  const uint32_t length = static_cast<uint32_t>(req.body.size());
  pending->element.resize(4 + req.body.size());
  std::memcpy(pending->element.data(), &length, 4);
  std::memcpy(pending->element.data() + 4, req.body.data(), req.body.size());
  pending->token = next_token_.fetch_add(1, std::memory_order_relaxed);
  pending->key = key;
  pending->exchange = std::move(exchange);
  pending->response_headers = options_.response_headers;
  pending->timeout = std::chrono::seconds(ResponseTimeout(key));

  auto request = std::make_unique<InferRequest>();
  TensorView data;
  data.name = "data";
  data.dtype = DataType::kBytes;
  data.shape = {1, 1};
  data.data = reinterpret_cast<const uint8_t*>(pending->element.data());
  data.byte_size = pending->element.size();
  request->inputs.push_back(std::move(data));
  request->request_id = pending->request_id = Uuid4();
  Parameter token, headers;
  token.key = "torchserve.token";
  token.kind = Parameter::Kind::kInt;
  token.int_value = static_cast<int64_t>(pending->token);
  headers.key = "torchserve.headers";
  headers.string_value = HeadersJson(req);
  request->parameters = {std::move(token), std::move(headers)};
  if (!parts.empty()) {
    Parameter form;
    form.key = "torchserve.parts";
    form.string_value = PartsJson(parts);
    request->parameters.push_back(std::move(form));
  }
  request->sink = this;
  request->owner = pending;
  request->cancelled = &pending->cancelled;
  {
    std::lock_guard<std::mutex> lock(pending_mutex_);
    pending_[pending->token] = pending;
  }
  // A client that leaves cancels its request (answered CANCELLED by the core instead of
  // computed, if it is still queued).
  pending->exchange->OnGone([this, pending] {
    {
      std::lock_guard<std::mutex> lock(pending->mutex);
      pending->finished = true;
      pending->cancelled.store(true, std::memory_order_relaxed);
    }
    Forget(pending->token);
  });
  CountRequest(key);
  Status status = options_.table->Submit(key, "", &model, request);
  if (!status.ok()) {
    Forget(pending->token);
    std::lock_guard<std::mutex> lock(pending->mutex);
    pending->finished = true;
    HttpResponse res = ErrorAnswer(503, "ServiceUnavailableException", status.message());
    for (const auto& [name, value] : pending->response_headers) res.Set(name, value);
    pending->exchange->Answer(std::move(res));
    return true;
  }
  ArmTimer(pending);
  return true;
}

// The response timeout counts from the handler's start or its last chunk, as TorchServe
// counts it; the timer looks again when it fires, as either may have moved.
void Predictions::ArmTimer(const std::shared_ptr<Pending>& pending) {
  std::weak_ptr<Pending> weak = pending;
  pending->exchange->Timer(pending->since + pending->timeout, [this, weak] {
    if (auto pending = weak.lock()) TimedOut(pending);
  });
}

void Predictions::TimedOut(const std::shared_ptr<Pending>& pending) {
  {
    std::lock_guard<std::mutex> lock(pending->mutex);
    if (pending->finished) return;
    if (Clock::now() < pending->since + pending->timeout) {
      ArmTimer(pending);
      return;
    }
    pending->finished = true;
    pending->cancelled.store(true, std::memory_order_relaxed);
    if (pending->streaming) {
      pending->exchange->End();
    } else {
      HttpResponse res = ErrorAnswer(500, "InternalServerException", "Worker died.");
      for (const auto& [name, value] : pending->response_headers) res.Set(name, value);
      pending->exchange->Answer(std::move(res));
    }
  }
  Forget(pending->token);
  if (options_.on_timeout) {
    auto restart = [on_timeout = options_.on_timeout, key = pending->key] { on_timeout(key); };
    offload_ ? offload_(std::move(restart)) : restart();
  }
}

bool Predictions::Push(uint64_t token, std::string chunk) {
  std::shared_ptr<Pending> pending;
  {
    std::lock_guard<std::mutex> lock(pending_mutex_);
    auto found = pending_.find(token);
    if (found != pending_.end()) pending = found->second.lock();
  }
  if (!pending) return false;
  std::lock_guard<std::mutex> lock(pending->mutex);
  if (pending->finished) return false;
  pending->since = Clock::now();
  Frame frame;
  const bool parsed = ParseFrame(chunk, &frame);
  if (!pending->streaming) {
    // The first chunk's status and headers head the streamed answer.
    pending->streaming = true;
    HttpResponse head;
    StatusAndHeaders(frame, head);
    for (const auto& [name, value] : pending->response_headers) head.Set(name, value);
    if (!head.Has("x-request-id")) head.Set("x-request-id", pending->request_id);
    pending->exchange->Head(std::move(head));
  }
  if (parsed && !frame.body.empty()) pending->exchange->Chunk(std::string(frame.body));
  return true;
}

void Predictions::Started(const std::vector<uint64_t>& tokens) {
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(pending_mutex_);
  for (uint64_t token : tokens) {
    auto found = pending_.find(token);
    if (found == pending_.end()) continue;
    if (auto pending = found->second.lock()) {
      std::lock_guard<std::mutex> pending_lock(pending->mutex);
      pending->since = now;
    }
  }
}

void Predictions::Deliver(std::vector<Completion>& completions) {
  for (Completion& c : completions) Finish(*std::static_pointer_cast<Pending>(c.owner), c.response);
}

// The core's answer: the whole response, or the end of a streamed one.
void Predictions::Finish(Pending& pending, const InferResponse& response) {
  std::unique_lock<std::mutex> lock(pending.mutex);
  if (pending.finished) return;
  pending.finished = true;
  Frame frame;
  if (pending.streaming) {
    // The final answer's body ends the stream.
    if (response.status.ok() && ResponseFrame(response, &frame) && !frame.body.empty()) {
      pending.exchange->Chunk(std::string(frame.body));
    }
    pending.exchange->End();
  } else {
    HttpResponse res;
    for (const auto& [name, value] : pending.response_headers) res.Set(name, value);
    HttpResponse answer;
    if (Answer(response, options_.max_response_bytes, answer, &frame)) {
      // Latency and queue time, as TorchServe's metrics count them (answered requests).
      const uint64_t now = SteadyNs(Clock::now()), arrival = SteadyNs(pending.arrival);
      const uint64_t started = frame.started_ns > 0 ? static_cast<uint64_t>(frame.started_ns) : now;
      CountLatency(pending.key, (now - arrival) / 1000, started > arrival ? (started - arrival) / 1000 : 0);
    }
    for (auto& header : answer.headers) res.headers.push_back(std::move(header));
    answer.headers = std::move(res.headers);
    if (!answer.Has("x-request-id")) answer.Set("x-request-id", pending.request_id);
    pending.exchange->Answer(std::move(answer));
  }
  lock.unlock();
  Forget(pending.token);
}

void Predictions::Forget(uint64_t token) {
  std::lock_guard<std::mutex> lock(pending_mutex_);
  pending_.erase(token);
}

PredictionCounters& Predictions::CountersOf(const std::string& key) {
  auto found = counters_.find(key);
  if (found == counters_.end()) found = counters_.emplace(key, PredictionCounters{key}).first;
  return found->second;
}

void Predictions::CountRequest(const std::string& key) {
  std::lock_guard<std::mutex> lock(counters_mutex_);
  ++CountersOf(key).requests;
}

void Predictions::CountLatency(const std::string& key, uint64_t latency_us, uint64_t queue_us) {
  std::lock_guard<std::mutex> lock(counters_mutex_);
  PredictionCounters& counters = CountersOf(key);
  counters.latency_us += latency_us;
  counters.queue_us += queue_us;
}

std::array<uint64_t, 3> Predictions::StatusClasses() const {
  return {(*status_classes_)[0].load(), (*status_classes_)[1].load(), (*status_classes_)[2].load()};
}

std::vector<PredictionCounters> Predictions::Counters() const {
  std::lock_guard<std::mutex> lock(counters_mutex_);
  std::vector<PredictionCounters> out;
  for (const auto& [key, counters] : counters_) out.push_back(counters);
  return out;
}


}  // namespace pyserve::httpfront
