#include "trace.h"

#include <chrono>

#include "request.h"
#include "response.h"

namespace pyserve {

void TraceRecord::Stamp(const char* name, uint64_t ns) {
  std::lock_guard<std::mutex> lock(mutex_);
  timestamps_.emplace_back(name, ns);
}

void TraceRecord::StampBatch(const InferRequest& request, const BatchTimes& t) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (tensors) {  // the same bytes were queued and handed to the backend
    for (const char* activity : {"TENSOR_QUEUE_INPUT", "TENSOR_BACKEND_INPUT"}) {
      for (const TensorView& input : request.inputs) {
        tensors_.push_back({activity, input.name, input.dtype, input.shape,
                            std::string(reinterpret_cast<const char*>(input.data), input.byte_size)});
      }
    }
  }
  timestamps_.insert(timestamps_.end(), {{"QUEUE_START", request.enqueue_ns},
                                         {"COMPUTE_START", t.input_start},
                                         {"COMPUTE_INPUT_END", t.infer_start},
                                         {"COMPUTE_OUTPUT_START", t.infer_end},
                                         {"COMPUTE_END", t.output_end},
                                         {"REQUEST_END", t.output_end}});
}

void TraceRecord::AddOutputs(const std::vector<OutputTensor>& outputs) {
  if (!tensors) return;
  std::lock_guard<std::mutex> lock(mutex_);
  for (const OutputTensor& output : outputs) {
    if (output.shared_memory || output.data == nullptr) continue;
    tensors_.push_back({"TENSOR_BACKEND_OUTPUT", output.name, output.dtype, output.shape,
                        std::string(reinterpret_cast<const char*>(output.data), output.byte_size)});
  }
}

std::vector<TracedTensor> TraceRecord::Tensors() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return tensors_;
}

std::vector<std::pair<const char*, uint64_t>> TraceRecord::Timestamps() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return timestamps_;
}

std::atomic<bool> Tracer::active_{false};

Tracer& Tracer::Get() {
  static Tracer* tracer = new Tracer();  // never destroyed: records may finish at exit
  return *tracer;
}

std::shared_ptr<TraceRecord> Tracer::Sample(std::string_view model, int64_t version,
                                            std::string_view request_id,
                                            std::string_view traceparent) {
  std::shared_ptr<Setting> setting;
  {
    std::shared_lock<std::shared_mutex> lock(settings_mutex_);
    auto it = models_.empty() ? models_.end() : models_.find(std::string(model));
    setting = it == models_.end() ? global_ : it->second;
  }
  const TraceSampling& s = setting->sampling;  // fixed once configured
  const bool forced = s.opentelemetry && s.enabled && ValidTraceparent(traceparent);
  uint64_t sample = 0;
  bool last = false;
  if (!Take(*setting, forced, &sample, &last)) return nullptr;
  auto record = std::shared_ptr<TraceRecord>(new TraceRecord(),
                                             [this](TraceRecord* r) { Finished(r); });
  TraceRecord* r = record.get();
  r->id = next_id_.fetch_add(1, std::memory_order_relaxed);
  r->setting = s.setting;
  r->model_name = model;
  r->model_version = version;
  r->request_id = request_id;
  if (forced) r->traceparent = traceparent;
  r->sample = sample;
  r->last = last;
  r->tensors = s.tensors;
  return record;
}

// Triton's rule: every request counts towards the rate; a hit takes one of the count.
bool Tracer::Take(Setting& setting, bool forced, uint64_t* sample, bool* last) {
  const TraceSampling& s = setting.sampling;
  std::lock_guard<std::mutex> lock(setting.mutex);
  bool hit = false;
  if (s.rate != 0) {
    if (!(s.enabled && setting.sampling.count != 0) && !forced) return false;
    hit = ++setting.sampled % s.rate == 0;
    if (hit && setting.sampling.count > 0) {
      *last = --setting.sampling.count == 0;
    } else if (hit && setting.sampling.count == 0) {
      hit = false;
    }
  }
  *sample = setting.sampled;
  return hit || forced;
}

void Tracer::Configure(const std::string& model, const TraceSampling& sampling) {
  auto setting = std::make_shared<Setting>();
  setting->sampling = sampling;
  std::unique_lock<std::shared_mutex> lock(settings_mutex_);
  (model.empty() ? global_ : models_[model]) = std::move(setting);
  UpdateActive();
}

void Tracer::Forget(const std::string& model) {
  std::unique_lock<std::shared_mutex> lock(settings_mutex_);
  models_.erase(model);
  UpdateActive();
}

int32_t Tracer::Count(const std::string& model) const {
  std::shared_ptr<Setting> setting;
  {
    std::shared_lock<std::shared_mutex> lock(settings_mutex_);
    auto it = models_.find(model);
    setting = it == models_.end() ? global_ : it->second;
  }
  std::lock_guard<std::mutex> lock(setting->mutex);
  return setting->sampling.count;
}

void Tracer::UpdateActive() {
  bool active = global_->sampling.enabled;
  for (const auto& [name, setting] : models_) active = active || setting->sampling.enabled;
  active_.store(active, std::memory_order_relaxed);
}

void Tracer::Finished(TraceRecord* record) {
  std::unique_ptr<TraceRecord> owned(record);
  std::lock_guard<std::mutex> lock(finished_mutex_);
  finished_.push_back(std::move(owned));
  if (finished_.size() == 1) finished_ready_.notify_one();
}

std::vector<std::unique_ptr<TraceRecord>> Tracer::Drain(int timeout_ms) {
  std::unique_lock<std::mutex> lock(finished_mutex_);
  finished_ready_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                           [this] { return !finished_.empty(); });
  std::vector<std::unique_ptr<TraceRecord>> out;
  out.swap(finished_);
  return out;
}

bool ValidTraceparent(std::string_view v) {
  if (v.size() != 55 || v[2] != '-' || v[35] != '-' || v[52] != '-') return false;
  auto hex = [&](size_t from, size_t to, bool* nonzero) {
    for (size_t i = from; i < to; ++i) {
      const char c = v[i];
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
      if (nonzero != nullptr && c != '0') *nonzero = true;
    }
    return true;
  };
  bool trace_nonzero = false, span_nonzero = false;
  return hex(0, 2, nullptr) && v.substr(0, 2) != "ff" && hex(3, 35, &trace_nonzero) &&
         hex(36, 52, &span_nonzero) && hex(53, 55, nullptr) && trace_nonzero && span_nonzero;
}

}  // namespace pyserve
