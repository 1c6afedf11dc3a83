#include "senders.h"

#ifdef PYSERVE_LOADGEN_HTTP
#include <httplib.h>
#include <strings.h>

namespace pyserve::loadgen {
namespace {

class HttpSender : public Sender {
 public:
  HttpSender(const Target& target, std::shared_ptr<const std::vector<HttpRequest>> requests)
      : client_((target.tls ? "https://" : "http://") + target.host + ":" +
                std::to_string(target.port)),
        requests_(std::move(requests)) {
    client_.set_keep_alive(true);
    client_.set_tcp_nodelay(true);  // headers and body leave at once, not after a delayed ACK
    auto seconds = std::chrono::microseconds(int64_t(target.timeout_s * 1e6));
    client_.set_read_timeout(seconds);
    client_.set_write_timeout(seconds);
    client_.set_connection_timeout(seconds);
    for (const auto& request : *requests_) {
      httplib::Headers headers;
      std::string type = "application/octet-stream";
      for (const auto& [name, value] : request.headers) {
        if (strcasecmp(name.c_str(), "Content-Type") == 0) {
          type = value;
        } else {
          headers.emplace(name, value);
        }
      }
      headers_.push_back(std::move(headers));
      types_.push_back(std::move(type));
    }
  }

  bool Send(size_t i) override {
    const HttpRequest& request = (*requests_)[i];
    auto result = client_.Post(request.path, headers_[i], request.body.data(),
                               request.body.size(), types_[i]);
    return result && result->status == 200;
  }

 private:
  httplib::Client client_;
  std::shared_ptr<const std::vector<HttpRequest>> requests_;
  std::vector<httplib::Headers> headers_;
  std::vector<std::string> types_;
};

}  // namespace

SenderFactory HttpSenders(const Target& target, const std::vector<HttpRequest>& requests) {
  auto shared = std::make_shared<const std::vector<HttpRequest>>(requests);
  return [target, shared](size_t) { return std::make_unique<HttpSender>(target, shared); };
}

bool HttpSupported() { return true; }

}  // namespace pyserve::loadgen

#else

namespace pyserve::loadgen {
SenderFactory HttpSenders(const Target&, const std::vector<HttpRequest>&) { return nullptr; }
bool HttpSupported() { return false; }
}  // namespace pyserve::loadgen

#endif
