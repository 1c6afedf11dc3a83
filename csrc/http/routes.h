// What the server answers itself, without the shell: KServe v2 inference (decoded, submitted
// to the core, encoded: no GIL), the health probes (from the model table, so that they answer
// while the Python loop is busy) and, for `pyserve torchserve`, TorchServe's predictions.
// Everything else is the relay's.
#pragma once

#include <memory>
#include <optional>
#include <regex>
#include <string>

#include "exchange.h"
#include "generate.h"
#include "model_table.h"
#include "request.h"
#include "response.h"

namespace pyserve::httpfront {

struct HttpOptions;
class Session;

// The way back to a connection's client, for code that does not see the HTTP library
// (defined in http_server.cc).
std::shared_ptr<Exchange> MakeExchange(const std::shared_ptr<Session>& session, uint64_t serial);

class Routes : public ResponseSink {
 public:
  Routes(std::shared_ptr<ModelTable> table, const HttpOptions& options);

  // Serves `request` (on its connection's loop), or returns false, with `request` as it came,
  // for the relay.
  bool Serve(HttpRequest& request, const std::shared_ptr<Session>& session, uint64_t serial);

  // The body of an error answer the server gives itself, in the words of the API it speaks.
  std::string ErrorText(int status, const std::string& message) const;

  void Deliver(std::vector<Completion>& completions) override;

 private:
  // 403 for a restricted group's request without its header (true: answered).
  bool Refused(const char* group, const HttpRequest& request, const std::shared_ptr<Session>& session,
               uint64_t serial);
  void ForwardHeaders(const HttpRequest& request, InferRequest* infer) const;
  bool Health(const HttpRequest& request, const std::shared_ptr<Session>& session, uint64_t serial);
  bool Infer(HttpRequest& request, const std::shared_ptr<Session>& session, uint64_t serial);
  bool Generate(HttpRequest& request, const std::shared_ptr<Session>& session, uint64_t serial);

  std::shared_ptr<ModelTable> table_;
  const HttpOptions& options_;
  std::optional<std::regex> forward_;  // options_.header_forward_pattern, compiled
  GenerateSink generate_sink_;
};

}  // namespace pyserve::httpfront
