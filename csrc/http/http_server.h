// The native HTTP frontend: cpp-httplib serves KServe v2 `POST .../infer` (or, for TorchServe's
// inference API, `POST /predictions/...`) itself (decode, resolve the model in a ModelTable,
// submit, encode: no GIL) and relays every other
// request (metadata, repository, statistics, ..., and inference requests it leaves to the
// shell) to the Python frontend listening on a loopback port, so that one port serves all.
#pragma once

#include <memory>
#include <string>

#include "model_table.h"
#include "predictions.h"
#include "shared_memory.h"
#include "status.h"

namespace pyserve::httpfront {

struct HttpOptions {
  std::string host = "0.0.0.0";
  int port = 8000;  // 0 = any free port
  // Each open connection is served by one thread (idle connections give theirs back after
  // 5 s): threads are started as connections arrive, up to this many.
  int threads = 1024;
  size_t max_body_bytes = 64 << 20;
  int shell_port = 0;  // the Python frontend, on 127.0.0.1
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
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pyserve::httpfront
