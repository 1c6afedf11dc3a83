// The native gRPC frontend: a gRPC C++ server that answers ModelInfer and ModelStreamInfer
// itself (decode, resolve the model in the core's ModelTable, submit, encode: no GIL), and
// hands every other RPC (and inference requests the table cannot resolve, whose errors the
// shell words) to the Python shell as serialized bytes, on the same port.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "model_table.h"
#include "shared_memory.h"
#include "status.h"

namespace pyserve::grpcfront {

struct GrpcOptions {
  std::string address = "0.0.0.0:8001";
  int threads = 2;  // completion-queue threads
  int max_message_bytes = 0x7fffffff;
  // gRPC channel arguments (keepalive, HTTP/2 pings, connection age, "grpc.so_reuseport").
  std::map<std::string, int> channel_args;
  // TLS: PEM contents; no server certificate = plaintext. A root certificate verifies
  // clients' certificates, which `mutual` requires.
  std::string server_cert, server_key, root_cert;
  bool mutual = false;
  // Restricted methods (--grpc-restricted-protocol): method path -> the metadata key and
  // value a call must carry; others are refused UNAVAILABLE.
  std::map<std::string, std::pair<std::string, std::string>> restricted;
  // --grpc-header-forward-pattern (ECMAScript): metadata whose key it finds become string
  // parameters of ModelInfer requests; empty = none.
  std::string header_forward_pattern;
  // --grpc-infer-response-compression-level: gRPC's grpc_compression_level (0 none, 1 low,
  // 2 medium, 3 high) for ModelInfer and ModelStreamInfer responses.
  int infer_compression_level = 0;
  // The regions tensors in shared memory are resolved in (null: such tensors are refused).
  std::shared_ptr<const SharedMemoryRegistry> shared_memory;
};

// Answers an RPC handed to the shell; callable from any thread, once. `code` is a gRPC code
// (0 = OK, with `body` the serialized response).
using Reply = std::function<void(int code, const std::string& message, const std::string& body)>;
// Receives an RPC for the shell: the full method path and the serialized request.
using Dispatch = std::function<void(const std::string& method, std::string request, Reply reply)>;

class GrpcServer {
 public:
  static Status Create(std::shared_ptr<ModelTable> table, const GrpcOptions& options,
                       Dispatch dispatch, std::unique_ptr<GrpcServer>* server);
  ~GrpcServer();
  int port() const;
  // Refuses new RPCs, lets running ones finish for up to `grace_seconds`, then cancels them.
  void Stop(double grace_seconds);

  class Impl;

 private:
  explicit GrpcServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pyserve::grpcfront
