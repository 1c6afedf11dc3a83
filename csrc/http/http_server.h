// The native HTTP frontend: Boost.Beast on a fixed pool of event-loop threads serves KServe v2
// `POST .../infer` (or, for TorchServe's inference API, `POST|PUT /predictions/...`) itself
// (decode, resolve the model in a ModelTable, submit, encode: no GIL), answers the health
// probes from the model table, and relays every other request (metadata, repository,
// statistics, ..., and inference requests it leaves to the shell) to the Python frontend
// listening on a loopback port, so that one port serves all.
#pragma once

#include <climits>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "model_table.h"
#include "predictions.h"
#include "shared_memory.h"
#include "status.h"

namespace pyserve::httpfront {

// HTTPS: PEM text (never file names, so that callers may make it in memory). An empty
// certificate chain serves plain HTTP.
struct TlsOptions {
  std::string certificate_chain;  // the server's certificate, then its intermediates
  std::string private_key;
  // Mutual TLS: clients must present a certificate these CAs signed; empty = none asked for.
  std::string client_ca;
  int security_level = -1;  // OpenSSL's (0-5) for this server only; -1 = OpenSSL's default
};

struct HttpOptions {
  std::string host = "0.0.0.0";
  int port = 8000;  // 0 = any free port
  int threads = 8;  // event-loop threads (Triton's --http-thread-count); connections are not bounded by it
  size_t max_body_bytes = 64 << 20;
  int backlog = INT_MAX;  // listen(2)'s; the kernel clamps it to net.core.somaxconn
  size_t max_header_bytes = 16 << 10;  // request line and headers: 431 past it
  size_t max_header_count = 100;       // 431 past it
  int idle_timeout_s = 5;  // keep-alive idle, and reading a request's head (slowloris)
  int body_timeout_s = 60;   // a request body that stops arriving for this long
  int write_timeout_s = 60;  // writing one response part (a client that does not read)
  int shell_port = 0;  // the Python frontend, on 127.0.0.1
  int relay_timeout_s = 600;  // waiting for the shell's answer to a relayed request (504 past it)
  bool reuse_port = false;  // SO_REUSEPORT (--reuse-http-port): otherwise a port in use fails
  TlsOptions tls;
  // Restricted APIs (--http-restricted-api) of the routes the server answers itself, "health"
  // and "inference": the header a request must carry and its value (the shell checks the rest).
  std::map<std::string, std::pair<std::string, std::string>> restricted;
  // --http-header-forward-pattern (ECMAScript): headers whose lower-case name it finds become
  // string parameters of native inference requests; empty = none.
  std::string header_forward_pattern;
  // The regions tensors in shared memory are resolved in (null: such requests go to the shell).
  std::shared_ptr<const SharedMemoryRegistry> shared_memory;
  // TorchServe's inference API (`pyserve torchserve`): predictions served natively, errors in
  // TorchServe's words; null for the KServe v2 server.
  std::shared_ptr<Predictions> predictions;
};

class HttpServer {
 public:
  static Status Create(std::shared_ptr<ModelTable> table, const HttpOptions& options,
                       std::unique_ptr<HttpServer>* server);
  ~HttpServer();
  int port() const;
  // Stops accepting, lets requests in progress finish (they wait for the core), joins.
  void Stop();

  class Impl;

 private:
  explicit HttpServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace pyserve::httpfront
