#include "http_server.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "connection.h"
#include "elastic_pool.h"
#include "infer_json.h"

namespace pyserve::httpfront {

namespace {

// One inference request waiting for the core, on the connection's thread.
struct PendingInfer : Awaited {
  std::string body;  // the bytes `infer` views
  HttpInfer infer;
};

// "/v2/models/NAME[/versions/V]/infer": the name and version, or false.
bool InferPath(const std::string& path, std::string* name, std::string* version) {
  static const std::string prefix = "/v2/models/", suffix = "/infer";
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

// Error bodies are never compressed (cpp-httplib compresses "application/json" for clients
// that accept gzip; Triton does not compress errors, and tritonclient's asyncio client reads
// them as they come).
const char kErrorType[] = "application/json; charset=utf-8";

// The boundary parameter of a multipart Content-Type.
std::string MultipartBoundary(const std::string& content_type) {
  const size_t at = content_type.find("boundary=");
  if (at == std::string::npos) return "";
  std::string boundary = content_type.substr(at + 9);
  boundary = boundary.substr(0, boundary.find(';'));
  if (boundary.size() >= 2 && boundary.front() == '"' && boundary.back() == '"') {
    boundary = boundary.substr(1, boundary.size() - 2);
  }
  return boundary;
}

bool HopByHop(const std::string& header) {
  static const char* const kHop[] = {"connection", "keep-alive", "transfer-encoding",
                                     "content-length", "host", "te", "upgrade"};
  for (const char* h : kHop) {
    if (strcasecmp(header.c_str(), h) == 0) return true;
  }
  return false;
}

}  // namespace

class HttpServer::Impl : public ResponseSink {
 public:
  Impl(std::shared_ptr<ModelTable> table, const HttpOptions& options)
      : table_(std::move(table)), options_(options) {}

  Status Start() {
    server_.new_task_queue = [threads = options_.threads] {
      return new ElasticPool(static_cast<size_t>(std::max(1, threads)), std::chrono::seconds(30));
    };
    server_.set_tcp_nodelay(true);  // small responses must not wait out delayed ACKs
    server_.set_keep_alive_max_count(std::numeric_limits<int>::max());
    server_.set_keep_alive_timeout(5);  // an idle connection holds its thread this long
    server_.set_payload_max_length(options_.max_body_bytes);
    // Every route. Bodies are read by the handler, so that the limit also bounds chunked and
    // decompressed bodies (cpp-httplib only checks Content-Length against it).
    auto handle = [this](const httplib::Request& req, httplib::Response& res) {
      Handle(req, std::string(), res);
    };
    auto read_and_handle = [this](const httplib::Request& req, httplib::Response& res,
                                  const httplib::ContentReader& reader) {
      std::string body;
      if (ReadBody(req, reader, &body, res)) Handle(req, std::move(body), res);
    };
    server_.Get(".*", handle).Options(".*", handle).Post(".*", read_and_handle)
        .Put(".*", read_and_handle).Patch(".*", read_and_handle).Delete(".*", read_and_handle);
    port_ = options_.port == 0 ? server_.bind_to_any_port(options_.host)
                               : (server_.bind_to_port(options_.host, options_.port) ? options_.port : -1);
    if (port_ <= 0) {
      return Status(StatusCode::kUnavailable, "could not bind the HTTP frontend to " + options_.host +
                                                  ":" + std::to_string(options_.port));
    }
    thread_ = std::thread([this] {
      NameThread("ps-http-accept");
      server_.listen_after_bind();
    });
    return Status::OK();
  }

  void Stop() {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }

  int port() const { return port_; }

  void Deliver(std::vector<Completion>& completions) override { DeliverAwaited(completions); }

 private:
  // The body, decompressed, up to the limit; false (with the answer in `res`) past it.
  bool ReadBody(const httplib::Request& req, const httplib::ContentReader& reader,
                std::string* body, httplib::Response& res) {
    const size_t limit = options_.max_body_bytes;
    const size_t declared = std::strtoull(req.get_header_value("Content-Length").c_str(), nullptr, 10);
    body->reserve(std::min(declared, limit));
    bool too_large = false;
    auto append = [&](const char* data, size_t length) {
      too_large = body->size() + length > limit;
      if (!too_large) body->append(data, length);
      return !too_large;
    };
    bool read;
    if (req.is_multipart_form_data()) {
      // cpp-httplib parses multipart bodies itself and hands over only the parts: they are
      // written out again, in the same boundary, for the shell.
      const std::string boundary = MultipartBoundary(req.get_header_value("Content-Type"));
      bool first = true;
      read = reader(
          [&](const httplib::MultipartFormData& part) {
            std::string head = (first ? "--" : "\r\n--") + boundary +
                               "\r\nContent-Disposition: form-data; name=\"" + part.name + "\"";
            if (!part.filename.empty()) head += "; filename=\"" + part.filename + "\"";
            head += "\r\n";
            if (!part.content_type.empty()) head += "Content-Type: " + part.content_type + "\r\n";
            first = false;
            return append(head.data(), head.size()) && append("\r\n", 2);
          },
          append);
      const std::string tail = (first ? "--" : "\r\n--") + boundary + "--\r\n";
      read = read && append(tail.data(), tail.size());
    } else {
      read = reader(append);
    }
    if (read) return true;
    res.status = too_large || res.status == 413 ? 413 : 400;
    // In the words of the API this server speaks.
    const bool torchserve = options_.predictions != nullptr;
    const std::string message =
        res.status == 413 ? "request body is larger than the server's limit of " + std::to_string(limit) +
                                (torchserve ? " bytes (max_request_size)" : " bytes (--http-max-input-size)")
                          : "failed to read the request body";
    res.set_content(torchserve ? TorchServeError(res.status, "BadRequestException", message) : ErrorBody(message),
                    kErrorType);
    return false;
  }

  void Handle(const httplib::Request& req, std::string body, httplib::Response& res) {
    thread_local bool named = [] {
      NameThread("ps-http");
      return true;
    }();
    (void)named;
    if (options_.predictions) {
      if (!options_.predictions->Handle(req, body, res)) Relay(req, body, res);
      return;
    }
    std::string name, version;
    if (req.method == "POST" && !req.has_header("Content-Encoding") &&
        InferPath(req.path, &name, &version) && Infer(req, body, res, name, version)) {
      return;
    }
    Relay(req, body, res);
  }

  // False when the shell must take the request (with `body` left as it was).
  bool Infer(const httplib::Request& req, std::string& body, httplib::Response& res,
             const std::string& name, const std::string& version) {
    std::shared_ptr<Model> model = table_->Find(name, version);
    if (!model) return false;
    auto pending = std::make_shared<PendingInfer>();
    pending->body.swap(body);
    auto request = std::make_unique<InferRequest>();
    const std::string header_length = req.get_header_value("Inference-Header-Content-Length");
    if (!DecodeInfer(pending->body, header_length, options_.shared_memory.get(), &pending->infer,
                     request.get())) {
      body.swap(pending->body);
      return false;
    }
    request->sink = this;
    request->owner = std::static_pointer_cast<Awaited>(pending);
    request->cancelled = &pending->cancelled;
    Status status = table_->Submit(name, version, &model, request);
    if (!status.ok()) {
      Reply(res, status);
      return true;
    }
    // A client that leaves first cancels the request (answered CANCELLED by the core instead
    // of computed, if it is still queued).
    {
      std::unique_lock<std::mutex> lock(pending->mutex);
      ClientWatch client(req);
      if (Await(*pending, lock, [&] { return pending->done; },
                [] { return std::chrono::steady_clock::time_point::max(); },
                [&] { return client.Gone(); }) == Waited::kGone) {
        pending->cancelled.store(true, std::memory_order_relaxed);
        res.status = 499;  // nobody reads it: the client is gone
        return true;
      }
    }
    if (!pending->response.status.ok()) {
      Reply(res, pending->response.status);
      return true;
    }
    std::string answer;
    size_t json_length = 0;
    try {  // a response too large to hold fails alone, with words (as the gRPC sink's)
      status = EncodeInfer(model->spec().name, std::to_string(model->spec().version),
                           pending->infer, pending->response, &answer, &json_length);
    } catch (const std::exception& e) {
      status = Status(StatusCode::kInternal, std::string("failed to encode the response: ") + e.what());
    }
    if (!status.ok()) {
      Reply(res, status);
      return true;
    }
    res.status = 200;
    if (json_length == 0) {
      res.set_content(std::move(answer), "application/json");
    } else {
      res.set_header("Inference-Header-Content-Length", std::to_string(json_length));
      res.set_content(std::move(answer), "application/octet-stream");
    }
    return true;
  }

  static void Reply(httplib::Response& res, const Status& status) {
    res.status = HttpStatus(status.code());
    res.set_content(ErrorBody(status.message()), kErrorType);
  }

  // The request as it came, to the Python frontend on the loopback; its answer as it comes.
  void Relay(const httplib::Request& req, std::string& body, httplib::Response& res) {
    thread_local std::unique_ptr<httplib::Client> client;
    if (!client) {
      client = std::make_unique<httplib::Client>("127.0.0.1", options_.shell_port);
      client->set_keep_alive(true);
      client->set_tcp_nodelay(true);
      client->set_read_timeout(3600);  // a model load can take long
      client->set_decompress(false);
    }
    httplib::Request relayed;
    relayed.method = req.method;
    relayed.path = req.target.empty() ? req.path : req.target;
    for (const auto& [key, value] : req.headers) {
      if (!HopByHop(key) && strcasecmp(key.c_str(), "Content-Encoding") != 0 &&
          !PseudoHeader(key)) {
        relayed.headers.emplace(key, value);
      }
    }
    relayed.body = std::move(body);  // httplib has already decompressed it
    httplib::Response answer;
    httplib::Error error = httplib::Error::Success;
    if (!client->send(relayed, answer, error)) {
      client.reset();
      res.status = 503;
      res.set_content(ErrorBody("the server's control plane is not reachable"), kErrorType);
      return;
    }
    res.status = answer.status;
    for (const auto& [key, value] : answer.headers) {
      if (!HopByHop(key) && strcasecmp(key.c_str(), "Content-Type") != 0) res.set_header(key, value);
    }
    res.set_content(std::move(answer.body), answer.get_header_value("Content-Type"));
  }

  std::shared_ptr<ModelTable> table_;
  HttpOptions options_;
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { impl_->Stop(); }

Status HttpServer::Create(std::shared_ptr<ModelTable> table, const HttpOptions& options,
                          std::unique_ptr<HttpServer>* server) {
  auto impl = std::make_unique<Impl>(std::move(table), options);
  Status status = impl->Start();
  if (!status.ok()) return status;
  server->reset(new HttpServer(std::move(impl)));
  return Status::OK();
}

int HttpServer::port() const { return impl_->port(); }
void HttpServer::Stop() { impl_->Stop(); }

}  // namespace pyserve::httpfront
