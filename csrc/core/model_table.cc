#include "model_table.h"

#include <mutex>

namespace pyserve {

void ModelTable::Replace(Models& models, const std::string& name,
                         std::vector<std::shared_ptr<Model>> versions) {
  Versions ready;
  for (auto& model : versions) ready[model->spec().version] = std::move(model);
  if (ready.empty()) {
    models.erase(name);
  } else {
    models[name] = std::move(ready);
  }
}

void ModelTable::Publish(const std::string& name, std::vector<std::shared_ptr<Model>> versions) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  Replace(models_, name, std::move(versions));
}

void ModelTable::PublishIn(const std::string& model_namespace, const std::string& name,
                           std::vector<std::shared_ptr<Model>> versions) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  if (model_namespace.empty()) return Replace(models_, name, std::move(versions));
  Models& models = namespaces_[model_namespace];
  Replace(models, name, std::move(versions));
  if (models.empty()) namespaces_.erase(model_namespace);
}

namespace {

// A version string as a number (-1 for "": the latest); false for what is not a plain number.
bool ParseVersion(std::string_view version, int64_t* number) {
  *number = version.empty() ? -1 : 0;
  if (version.size() > 18) return false;
  for (char c : version) {
    if (c < '0' || c > '9') return false;
    *number = *number * 10 + (c - '0');
  }
  return true;
}

}  // namespace

std::shared_ptr<Model> ModelTable::Lookup(const Models& models, std::string_view name,
                                          int64_t version) {
  auto model = models.find(name);
  if (model == models.end()) return nullptr;
  if (version < 0) return model->second.rbegin()->second;
  auto entry = model->second.find(version);
  return entry == model->second.end() ? nullptr : entry->second;
}

std::shared_ptr<Model> ModelTable::Find(std::string_view name, std::string_view version) const {
  int64_t number;
  if (!ParseVersion(version, &number)) return nullptr;
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return Lookup(models_, name, number);
}

std::shared_ptr<Model> ModelTable::FindIn(std::string_view model_namespace, std::string_view name,
                                          std::string_view version) const {
  int64_t number;
  if (!ParseVersion(version, &number)) return nullptr;
  std::shared_lock<std::shared_mutex> lock(mutex_);
  if (model_namespace.empty()) return Lookup(models_, name, number);
  auto models = namespaces_.find(model_namespace);
  return models == namespaces_.end() ? nullptr : Lookup(models->second, name, number);
}

Status ModelTable::SubmitIn(std::string_view model_namespace, std::string_view name,
                            std::string_view version, std::shared_ptr<Model>* model,
                            std::unique_ptr<InferRequest>& request) const {
  Status status = (*model)->Submit(request);
  while (!status.ok() && (*model)->scheduler().Stopping()) {
    std::shared_ptr<Model> now = FindIn(model_namespace, name, version);
    if (!now || now == *model) break;  // unloaded, not replaced: the refusal stands
    *model = std::move(now);
    status = (*model)->Submit(request);
  }
  return status;
}

}  // namespace pyserve
