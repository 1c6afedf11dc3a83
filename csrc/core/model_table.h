// ModelTable: the READY versions of every model, as the shell publishes them, for frontends
// that resolve a request's model without the GIL. Anything the table cannot answer (unknown
// model or version, a version string that is not a plain number) is left to the shell, which
// knows the reason and Triton's text for it.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "model.h"

namespace pyserve {

class ModelTable {
 public:
  // Replaces the ready versions of `name`; an empty list removes the model.
  void Publish(const std::string& name, std::vector<std::shared_ptr<Model>> versions);
  // The version a request names ("" = the latest ready one), or null.
  std::shared_ptr<Model> Find(std::string_view name, std::string_view version) const;
  // Submits to `*model`, which Find(name, version) returned. A reload may retire that version
  // between the two (it is published out, then stopped): the request then goes to the version
  // the table serves now, and `*model` becomes that one, so that a reload loses nothing.
  Status Submit(std::string_view name, std::string_view version, std::shared_ptr<Model>* model,
                std::unique_ptr<InferRequest>& request) const;

  // Server readiness as the shell decides it (never while draining; with strict readiness,
  // every model asked for is ready), for probes the frontends answer natively.
  void SetServerReady(bool ready) { server_ready_.store(ready, std::memory_order_relaxed); }
  bool ServerReady() const { return server_ready_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> server_ready_{false};
  mutable std::shared_mutex mutex_;
  std::map<std::string, std::map<int64_t, std::shared_ptr<Model>>, std::less<>> models_;
};

}  // namespace pyserve
