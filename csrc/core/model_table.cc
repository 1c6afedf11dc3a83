#include "model_table.h"

#include <mutex>

namespace pyserve {

void ModelTable::Publish(const std::string& name, std::vector<std::shared_ptr<Model>> versions) {
  std::map<int64_t, std::shared_ptr<Model>> ready;
  for (auto& model : versions) ready[model->spec().version] = std::move(model);
  std::unique_lock<std::shared_mutex> lock(mutex_);
  if (ready.empty()) {
    models_.erase(name);
  } else {
    models_[name] = std::move(ready);
  }
}

std::shared_ptr<Model> ModelTable::Find(std::string_view name, std::string_view version) const {
  int64_t number = 0;
  if (!version.empty()) {
    if (version.size() > 18) return nullptr;
    for (char c : version) {
      if (c < '0' || c > '9') return nullptr;
      number = number * 10 + (c - '0');
    }
  }
  std::shared_lock<std::shared_mutex> lock(mutex_);
  auto model = models_.find(name);
  if (model == models_.end()) return nullptr;
  if (version.empty()) return model->second.rbegin()->second;
  auto entry = model->second.find(number);
  return entry == model->second.end() ? nullptr : entry->second;
}

Status ModelTable::Submit(std::string_view name, std::string_view version,
                          std::shared_ptr<Model>* model, std::unique_ptr<InferRequest>& request) const {
  Status status = (*model)->Submit(request);
  while (!status.ok() && (*model)->scheduler().Stopping()) {
    std::shared_ptr<Model> now = Find(name, version);
    if (!now || now == *model) break;  // unloaded, not replaced: the refusal stands
    *model = std::move(now);
    status = (*model)->Submit(request);
  }
  return status;
}

}  // namespace pyserve
