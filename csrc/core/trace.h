// Request tracing (Triton's trace extension): which requests are sampled, and the record a
// sampled request carries. The shell owns the settings (global and per model) and hands
// the sampling part of each to the Tracer; a frontend asks the Tracer for a record when it
// takes a request, the frontend and the core stamp it, and when its last holder lets go the
// record is queued for the shell, which writes it (Triton's trace file or OpenTelemetry)
// off the data path. An untraced request costs one relaxed load while nothing is traced.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pyserve {

struct BatchTimes;
struct InferRequest;
struct OutputTensor;
struct TensorView;
enum class DataType : uint8_t;

// A tensor of a trace at TENSORS level (Triton's TENSOR_QUEUE_INPUT, TENSOR_BACKEND_INPUT,
// TENSOR_BACKEND_OUTPUT activities): a copy of its bytes.
struct TracedTensor {
  const char* activity;
  std::string name;
  DataType dtype;
  std::vector<int64_t> shape;
  std::string data;
};

// What one sampled request collects. Stamps come from the frontend's and the core's threads,
// hence the lock (held by traced requests only).
struct TraceRecord {
  uint64_t id = 0;       // Triton's trace id: 1, 2, ... in sampling order
  uint64_t setting = 0;  // the shell's key of the setting that sampled it (its file)
  std::string model_name;
  int64_t model_version = 0;
  std::string request_id;
  std::string traceparent;  // the W3C context the request carried (OpenTelemetry mode)
  // The setting's count of requests seen when this one was sampled, and whether it took the
  // setting's last trace (Triton then writes the setting's traces to an indexed file).
  uint64_t sample = 0;
  bool last = false;
  bool tensors = false;  // TENSORS level: the request's tensors are copied in

  // The core's part: QUEUE_START from the request's enqueue, COMPUTE_* from the batch,
  // REQUEST_END; at TENSORS level, the request's inputs.
  void StampBatch(const InferRequest& request, const BatchTimes& times);
  // TENSORS level: the outputs of the request's response (those not in shared memory).
  void AddOutputs(const std::vector<OutputTensor>& outputs);
  std::vector<TracedTensor> Tensors() const;

  void Stamp(const char* name, uint64_t ns);
  std::vector<std::pair<const char*, uint64_t>> Timestamps() const;

 private:
  mutable std::mutex mutex_;
  std::vector<std::pair<const char*, uint64_t>> timestamps_;
  std::vector<TracedTensor> tensors_;
};

// The sampling half of one trace setting (Triton's TraceSetting::SampleTrace).
struct TraceSampling {
  uint64_t setting = 0;      // the shell's key
  bool enabled = false;      // level is not OFF
  uint32_t rate = 1000;      // 1 of every `rate` requests; 0 samples none
  int32_t count = -1;        // traces left; -1 = unlimited
  bool opentelemetry = false;  // a request's valid traceparent forces sampling
  bool tensors = false;        // TENSORS level
};

class Tracer {
 public:
  static Tracer& Get();

  // False while no setting can sample: the frontends skip tracing with this one load.
  static bool Active() { return active_.load(std::memory_order_relaxed); }

  // A record for a request of `model`, or null when the model's setting does not sample it.
  std::shared_ptr<TraceRecord> Sample(std::string_view model, int64_t version,
                                      std::string_view request_id,
                                      std::string_view traceparent = {});

  // The global setting (model "") or a model's own; Forget puts a model back on the global.
  void Configure(const std::string& model, const TraceSampling& sampling);
  void Forget(const std::string& model);
  // The traces the setting of `model` may still sample (Triton reports the count left).
  int32_t Count(const std::string& model) const;

  // The finished records, waiting up to `timeout_ms` for the first one.
  std::vector<std::unique_ptr<TraceRecord>> Drain(int timeout_ms);

 private:
  struct Setting {
    TraceSampling sampling;
    std::mutex mutex;  // sample counter and count
    uint64_t sampled = 0;
  };
  Tracer() = default;
  // Whether this request is traced; `sample` and `last` as a TraceRecord has them.
  bool Take(Setting& setting, bool forced, uint64_t* sample, bool* last);
  void Finished(TraceRecord* record);
  void UpdateActive();  // settings_mutex_ held

  static std::atomic<bool> active_;
  std::atomic<uint64_t> next_id_{1};
  mutable std::shared_mutex settings_mutex_;
  std::shared_ptr<Setting> global_ = std::make_shared<Setting>();
  std::unordered_map<std::string, std::shared_ptr<Setting>> models_;
  std::mutex finished_mutex_;
  std::condition_variable finished_ready_;
  std::vector<std::unique_ptr<TraceRecord>> finished_;
};

// True for a W3C traceparent ("00-<32 hex>-<16 hex>-<2 hex>", ids not all zero).
bool ValidTraceparent(std::string_view value);

}  // namespace pyserve
