// Requests the server does not answer itself go, as they came, to the Python frontend on the
// loopback port; its answer comes back as it was. The calls block, so they run on a pool of
// threads (ElasticPool), never on an event loop.
#pragma once

#include <memory>

#include "elastic_pool.h"
#include "exchange.h"

namespace pyserve::httpfront {

struct HttpOptions;
class Session;

class Relay {
 public:
  Relay(const HttpOptions& options, ElasticPool& pool) : options_(options), pool_(pool) {}

  // Relays `request` and answers it on `session` (any thread).
  void Send(HttpRequest request, const std::shared_ptr<Session>& session, uint64_t serial);

 private:
  HttpResponse Call(HttpRequest& request);

  const HttpOptions& options_;
  ElasticPool& pool_;
};

}  // namespace pyserve::httpfront
