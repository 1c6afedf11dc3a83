// TorchServe's `POST /predictions/{model}[/{version}]` served natively, for `pyserve torchserve`:
// the raw body becomes the one BYTES element of the archive's `data` input, the core batches
// it, the handler runs once per batch in the shell, and the answer comes back as a frame (the
// handler's status, headers and body) that is written here, without the GIL.
//
// The frame, one BYTES element of the `output` output (pyserve.torchserve.request.frame):
//   u32 little-endian length of the meta JSON | meta JSON | body
//   meta: {"status": int, "phrase": str, "headers": {str: str}, "started_ns": int}
// Intermediate responses (TorchServe's send_intermediate_predict_response) arrive as frames
// through Push and are streamed with chunked encoding before the final one.
//
// The request comes as `POST` or `PUT` (`curl -T file`, as TorchServe takes); a
// multipart/form-data body is split here (multipart.h) and its parts travel as the request's
// `torchserve.parts` parameter, [[name, content type, offset, size], ...] into the body, from
// which the shell builds the handler's dict. Anything else (other form bodies, unusual
// multipart ones, a bad or expired token, a model or version not in the table, a
// compressed body) is left to the shell, whose answers keep TorchServe's texts.
//
// Everything here is asynchronous: Handle submits and returns; the core's Deliver, the shell's
// Push and the response timeout (a timer on the connection's loop) write the answer through
// the request's Exchange.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "exchange.h"
#include "model_table.h"
#include "response.h"

namespace pyserve::httpfront {

struct PredictionsOptions {
  // The versions with workers, keyed "NAME" (the default version) and "NAME/VERSION".
  std::shared_ptr<ModelTable> table;
  size_t max_response_bytes = 6553500;
  std::vector<std::pair<std::string, std::string>> response_headers;  // CORS, on every answer
  // A handler ran past its model's response timeout (key as above): the shell restarts the
  // model's workers. Called off the event loops (it may wait for the GIL).
  std::function<void(const std::string& key)> on_timeout;
};

struct PredictionCounters {
  std::string key;
  uint64_t requests = 0;
  uint64_t latency_us = 0;
  uint64_t queue_us = 0;
};

class Predictions : public ResponseSink {
 public:
  explicit Predictions(PredictionsOptions options);

  // Serves `req` when it is a prediction this path takes (answering through `exchange`);
  // false leaves it as it was, for the shell.
  bool Handle(HttpRequest& req, std::shared_ptr<Exchange> exchange);
  // Where on_timeout runs: a thread that may block (the server's relay pool); inline without.
  void SetOffload(std::function<void(std::function<void()>)> offload) { offload_ = std::move(offload); }

  // The inference API's token ("" = no token authorization) and when it expires (unix s).
  void SetKey(const std::string& key, int64_t expires_unix_s);
  void SetResponseTimeout(const std::string& key, int seconds);
  // What `GET /ping` answers ("Healthy" or "Unhealthy"), as the model store finds it.
  void SetHealthy(bool healthy) { healthy_.store(healthy, std::memory_order_relaxed); }
  // An intermediate response for the request the shell knows by `token`; false when it is gone.
  bool Push(uint64_t token, std::string frame);
  // The handler started on these requests: their response timeout counts from now.
  void Started(const std::vector<uint64_t>& tokens);
  std::vector<PredictionCounters> Counters() const;
  // The answers this path gave, by status class (2XX, 4XX, 5XX): TorchServe's
  // Requests2XX/4XX/5XX for the predictions the shell never saw.
  std::array<uint64_t, 3> StatusClasses() const;

  void Deliver(std::vector<Completion>& completions) override;

  struct Pending;

 private:
  bool Authorized(const HttpRequest& req) const;
  bool Ping(const HttpRequest& req, std::shared_ptr<Exchange> exchange);
  void ArmTimer(const std::shared_ptr<Pending>& pending);
  void TimedOut(const std::shared_ptr<Pending>& pending);
  void Finish(Pending& pending, const InferResponse& response);
  int ResponseTimeout(const std::string& key) const;
  PredictionCounters& CountersOf(const std::string& key);  // counters_mutex_ held
  void CountRequest(const std::string& key);
  void CountLatency(const std::string& key, uint64_t latency_us, uint64_t queue_us);
  void Forget(uint64_t token);

  PredictionsOptions options_;
  std::function<void(std::function<void()>)> offload_;
  mutable std::shared_mutex settings_mutex_;
  std::string key_;
  int64_t key_expires_ = 0;
  std::map<std::string, int, std::less<>> timeouts_;
  mutable std::mutex pending_mutex_;
  std::unordered_map<uint64_t, std::weak_ptr<Pending>> pending_;
  std::atomic<uint64_t> next_token_{1};
  std::atomic<bool> healthy_{true};
  mutable std::mutex counters_mutex_;
  std::map<std::string, PredictionCounters, std::less<>> counters_;
  std::shared_ptr<std::array<std::atomic<uint64_t>, 3>> status_classes_ =
      std::make_shared<std::array<std::atomic<uint64_t>, 3>>();
};

// TorchServe's error body: {"code": N, "type": T, "message": M}, as its frontend writes it.
std::string TorchServeError(int code, const std::string& type, const std::string& message);

}  // namespace pyserve::httpfront
