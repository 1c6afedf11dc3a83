// ModelTable: the READY versions of every model, as the shell publishes them, for frontends
// that resolve a request's model without the GIL. Anything the table cannot answer (unknown
// model or version, a version string that is not a plain number, a name that several
// namespaces hold) is left to the shell, which knows the reason and Triton's text for it.
//
// With --model-namespacing, each repository is a namespace: a model is also published under
// its namespace, where ensembles' steps find it (Triton resolves a step to a model of the
// ensemble's own repository first); requests, which name no namespace, see a name only while
// one namespace holds it. Without namespacing, nothing is published by namespace.
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
  // Replaces the ready versions that requests naming `name` reach; an empty list removes it.
  void Publish(const std::string& name, std::vector<std::shared_ptr<Model>> versions);
  // Replaces the ready versions of `name` in `model_namespace` (a repository); an empty list
  // removes them.
  void PublishIn(const std::string& model_namespace, const std::string& name,
                 std::vector<std::shared_ptr<Model>> versions);
  // The version a request names ("" = the latest ready one), or null.
  std::shared_ptr<Model> Find(std::string_view name, std::string_view version) const;
  // The same within `model_namespace`; an empty namespace is Find's.
  std::shared_ptr<Model> FindIn(std::string_view model_namespace, std::string_view name,
                                std::string_view version) const;
  // Submits to `*model`, which FindIn(model_namespace, name, version) returned. A reload may
  // retire that version between the two (it is published out, then stopped): the request then
  // goes to the version the table serves now, and `*model` becomes that one, so that a reload
  // loses nothing.
  Status Submit(std::string_view name, std::string_view version, std::shared_ptr<Model>* model,
                std::unique_ptr<InferRequest>& request) const {
    return SubmitIn({}, name, version, model, request);
  }
  Status SubmitIn(std::string_view model_namespace, std::string_view name,
                  std::string_view version, std::shared_ptr<Model>* model,
                  std::unique_ptr<InferRequest>& request) const;

  // Server readiness as the shell decides it (never while draining; with strict readiness,
  // every model asked for is ready), for probes the frontends answer natively.
  void SetServerReady(bool ready) { server_ready_.store(ready, std::memory_order_relaxed); }
  bool ServerReady() const { return server_ready_.load(std::memory_order_relaxed); }

 private:
  using Versions = std::map<int64_t, std::shared_ptr<Model>>;
  using Models = std::map<std::string, Versions, std::less<>>;
  static void Replace(Models& models, const std::string& name,
                      std::vector<std::shared_ptr<Model>> versions);
  // `version` -1: the latest.
  static std::shared_ptr<Model> Lookup(const Models& models, std::string_view name,
                                       int64_t version);

  std::atomic<bool> server_ready_{false};
  mutable std::shared_mutex mutex_;
  Models models_;                                          // by the name requests use
  std::map<std::string, Models, std::less<>> namespaces_;  // namespace -> its models
};

}  // namespace pyserve
