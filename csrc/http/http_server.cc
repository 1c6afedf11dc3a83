#include "http_server.h"

#include <httplib.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "infer_json.h"

namespace pyserve::httpfront {

namespace {

// One inference request waiting for the core, on the connection's thread.
struct PendingInfer {
  HttpInfer infer;
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  InferResponse response;
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
      return new httplib::ThreadPool(static_cast<size_t>(std::max(1, threads)));
    };
    server_.set_tcp_nodelay(true);  // small responses must not wait out delayed ACKs
    server_.set_keep_alive_max_count(std::numeric_limits<int>::max());
    server_.set_keep_alive_timeout(5);  // an idle connection holds its thread this long
    server_.set_payload_max_length(options_.max_body_bytes);
    // Every route: bodies are read before routed handlers run (not before pre-routing ones).
    auto handle = [this](const httplib::Request& req, httplib::Response& res) { Handle(req, res); };
    server_.Get(".*", handle).Post(".*", handle).Put(".*", handle).Delete(".*", handle)
        .Options(".*", handle).Patch(".*", handle);
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

  void Deliver(std::vector<Completion>& completions) override {
    for (Completion& c : completions) {
      auto* pending = static_cast<PendingInfer*>(c.owner.get());
      std::lock_guard<std::mutex> lock(pending->mutex);
      pending->response = std::move(c.response);
      pending->done = true;
      pending->done_cv.notify_one();
    }
  }

 private:
  void Handle(const httplib::Request& req, httplib::Response& res) {
    thread_local bool named = [] {
      NameThread("ps-http");
      return true;
    }();
    (void)named;
    std::string name, version;
    if (req.method == "POST" && !req.has_header("Content-Encoding") &&
        InferPath(req.path, &name, &version) && Infer(req, res, name, version)) {
      return;
    }
    Relay(req, res);
  }

  // False when the shell must take the request.
  bool Infer(const httplib::Request& req, httplib::Response& res, const std::string& name,
             const std::string& version) {
    std::shared_ptr<Model> model = table_->Find(name, version);
    if (!model) return false;
    auto pending = std::make_shared<PendingInfer>();
    auto request = std::make_unique<InferRequest>();
    const std::string header_length = req.get_header_value("Inference-Header-Content-Length");
    if (!DecodeInfer(req.body, header_length, options_.shared_memory.get(), &pending->infer,
                     request.get())) {
      return false;
    }
    request->sink = this;
    request->owner = pending;
    Status status = model->Submit(request);
    if (!status.ok()) {
      Reply(res, status);
      return true;
    }
    {
      std::unique_lock<std::mutex> lock(pending->mutex);
      pending->done_cv.wait(lock, [&] { return pending->done; });
    }
    if (!pending->response.status.ok()) {
      Reply(res, pending->response.status);
      return true;
    }
    std::string body;
    size_t json_length = 0;
    status = EncodeInfer(model->spec().name, std::to_string(model->spec().version), pending->infer,
                         pending->response, &body, &json_length);
    if (!status.ok()) {
      Reply(res, status);
      return true;
    }
    res.status = 200;
    if (json_length == 0) {
      res.set_content(std::move(body), "application/json");
    } else {
      res.set_header("Inference-Header-Content-Length", std::to_string(json_length));
      res.set_content(std::move(body), "application/octet-stream");
    }
    return true;
  }

  static void Reply(httplib::Response& res, const Status& status) {
    res.status = HttpStatus(status.code());
    res.set_content(ErrorBody(status.message()), "application/json");
  }

  // The request as it came, to the Python frontend on the loopback; its answer as it comes.
  void Relay(const httplib::Request& req, httplib::Response& res) {
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
          strcasecmp(key.c_str(), "REMOTE_ADDR") != 0 && strcasecmp(key.c_str(), "REMOTE_PORT") != 0 &&
          strcasecmp(key.c_str(), "LOCAL_ADDR") != 0 && strcasecmp(key.c_str(), "LOCAL_PORT") != 0) {
        relayed.headers.emplace(key, value);
      }
    }
    relayed.body = req.body;  // httplib has already decompressed it
    httplib::Response answer;
    httplib::Error error = httplib::Error::Success;
    if (!client->send(relayed, answer, error)) {
      client.reset();
      res.status = 503;
      res.set_content(ErrorBody("the server's control plane is not reachable"), "application/json");
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
