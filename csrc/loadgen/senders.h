// The protocols a load generator thread speaks: each factory makes one Sender per thread,
// over its own connection, for requests encoded once by Python.
#pragma once

#include <string>
#include <vector>

#include "load_generator.h"

namespace pyserve::loadgen {

struct Target {
  std::string host;
  int port = 0;
  bool tls = false;
  double timeout_s = 60.0;
};

// ModelInfer, one call at a time on the thread's own channel.
SenderFactory GrpcUnarySenders(const Target& target, const std::vector<std::string>& messages);
// ModelStreamInfer, one stream per thread with one request in flight; a response carrying
// error_message counts as a failure, and a broken stream is reopened by the next request.
SenderFactory GrpcStreamSenders(const Target& target, const std::vector<std::string>& messages);

struct HttpRequest {
  std::string path;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};
// POST over a kept-alive connection per thread; 200 is success. Null without cpp-httplib.
SenderFactory HttpSenders(const Target& target, const std::vector<HttpRequest>& requests);
bool HttpSupported();

}  // namespace pyserve::loadgen
