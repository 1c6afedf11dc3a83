// The request path's data: views of tensors the core does not own, requests that carry them,
// and the batch an instance executes.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pyserve {

// Values are those of Triton's model_config.proto DataType enum.
enum class DataType : uint8_t {
  kInvalid = 0,
  kBool = 1,
  kUint8 = 2,
  kUint16 = 3,
  kUint32 = 4,
  kUint64 = 5,
  kInt8 = 6,
  kInt16 = 7,
  kInt32 = 8,
  kInt64 = 9,
  kFp16 = 10,
  kFp32 = 11,
  kFp64 = 12,
  kBytes = 13,  // length-prefixed elements: no fixed element size
  kBf16 = 14,
};

// Bytes per element; 0 for BYTES and invalid types.
size_t ElementSize(DataType dtype);
// The protocol's name of a type ("FP32", "BYTES"; "INVALID" for kInvalid), and back
// (kInvalid for names the protocol does not have).
const char* WireName(DataType dtype);
DataType DataTypeFromWire(std::string_view name);

// A view of a tensor's bytes. The owner (the frontend that received them) keeps the memory
// alive until the request's completion has been delivered.
struct TensorView {
  std::string name;
  DataType dtype = DataType::kInvalid;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t byte_size = 0;
};

class ResponseSender;
class ResponseSink;
class SequenceState;
struct SharedMemoryBlock;
struct TraceRecord;

// An output the client asked for: by name, or the top `classification` classes of it; written
// into a block of a registered shared-memory region when `shared_memory` is set.
struct RequestedOutput {
  std::string name;
  uint32_t classification = 0;  // 0 = the values themselves
  std::shared_ptr<const SharedMemoryBlock> shared_memory;
};

// A request parameter the model sees (Triton's InferParameter: bool, int64, double or string).
struct Parameter {
  enum class Kind : uint8_t { kBool, kInt, kDouble, kString };
  std::string key;
  Kind kind = Kind::kString;
  bool bool_value = false;
  int64_t int_value = 0;
  double double_value = 0;
  std::string string_value;
};

// Triton's request flags (TRITONSERVER_RequestFlag): a request's place in its sequence.
enum RequestFlag : uint32_t { kSequenceStart = 1, kSequenceEnd = 2 };

// A sequence's correlation ID: an unsigned integer or a string, as the client sent it
// (Triton's `sequence_id` parameter). Zero or empty: the request belongs to no sequence.
constexpr size_t kMaxCorrelationIdLength = 128;  // characters of a string ID, as Triton

struct CorrelationId {
  uint64_t number = 0;
  std::string text;
  bool is_text = false;

  bool Present() const { return is_text ? !text.empty() : number != 0; }
};

struct InferRequest {
  uint64_t id = 0;  // the frontend's key for delivering the completion (the sink's tag)
  ResponseSink* sink = nullptr;  // where the response goes; outlives the request's model
  std::shared_ptr<void> owner;   // keeps the bytes `inputs` view alive (null: the sink does)
  // Also kept alive with the request: shared-memory regions (and host copies of CUDA blocks)
  // that inputs view.
  std::vector<std::shared_ptr<const void>> held;
  std::vector<TensorView> inputs;
  std::string request_id;                  // the client's id, for texts and backends
  std::vector<RequestedOutput> outputs;    // empty = every output of the model
  std::vector<Parameter> parameters;       // the model's own, for backends that read them
  uint32_t batch_size = 1;   // the first dimension when the model batches, else 1
  uint64_t priority = 0;     // the request's `priority` parameter; 0 = default level
  uint64_t timeout_us = 0;   // the request's `timeout` parameter; 0 = none
  CorrelationId correlation_id;  // `sequence_id`
  uint32_t flags = 0;            // RequestFlag bits: `sequence_start`, `sequence_end`
  // Set by the frontend when the client goes away (the flag lives in `owner`): a queued
  // request is then answered CANCELLED instead of computed.
  const std::atomic<bool>* cancelled = nullptr;
  // Set by whoever answers the request first: a stopping scheduler that abandons a hung
  // instance answers its batch, and the batch's late results must not answer it again.
  std::atomic<bool> answered{false};

  bool Cancelled() const { return cancelled != nullptr && cancelled->load(std::memory_order_relaxed); }

  // Stamped by the scheduler (steady clock, ns).
  uint64_t enqueue_ns = 0;
  uint64_t deadline_ns = 0;  // 0 = never times out
  uint32_t priority_level = 0;  // index into the batcher's per-level queues
  uint64_t sequence = 0;        // arrival order, for preserve_ordering (stamped by the model)
  // Set by the frontend when the request is sampled for tracing (trace.h); null otherwise.
  std::shared_ptr<TraceRecord> trace;

  // Set by the response cache (ModelCache::Lookup) when the request missed it: the key its
  // response is stored under, and how long the lookup took.
  std::string cache_key;
  uint64_t cache_lookup_ns = 0;
  // Made by the sequence batcher for an empty slot of a batch (READY false): computed, never
  // answered or counted.
  bool padding = false;
  // Iterative sequences: the backend released the request with RESCHEDULE, and it is queued
  // again to run its next iteration (its control inputs are made anew); a decoupled one keeps
  // its sender, through which every iteration answers.
  bool rescheduled = false;
  std::shared_ptr<ResponseSender> sender;
  // Set by the sequence batcher for a model with implicit state: the state of the request's
  // sequence, which takes the request's state outputs after it has run (sequence_state.h).
  std::shared_ptr<SequenceState> sequence_state;
};

// Durations of one batch's phases, stamped as it runs (steady clock, ns).
struct BatchTimes {
  uint64_t input_start = 0;   // gather begins
  uint64_t infer_start = 0;   // the executor begins computing
  uint64_t infer_end = 0;     // the executor's compute is done
  uint64_t output_end = 0;    // every completion has been handed off
};

// What one model instance runs at once. `inputs` are the batch's tensors: for a batch of a
// single request they alias that request's bytes (no copy); otherwise they point into one
// gathered host buffer per input.
struct Batch {
  std::vector<std::unique_ptr<InferRequest>> requests;
  std::vector<TensorView> inputs;
  int instance = 0;
  BatchTimes times;
  std::vector<std::shared_ptr<void>> buffers;  // keeps gathered memory until the batch ends
  // GPU instances that asked for device inputs: copies of `inputs` (BYTES left out) on
  // `device`, enqueued on `stream` (the executor orders its work after them).
  int device = -1;
  void* stream = nullptr;
  std::vector<TensorView> device_inputs;
  // A decoupled model's batch: one sender per request, in order, through which the backend
  // answers (it keeps the ones it still needs).
  std::vector<std::shared_ptr<ResponseSender>> senders;
  // Per request (empty: none): the backend released it with RESCHEDULE (iterative sequences):
  // it is not answered, but queued again.
  std::vector<uint8_t> reschedule;

  uint32_t Size() const {
    uint32_t total = 0;
    for (const auto& r : requests) total += r->batch_size;
    return total;
  }
};

uint64_t SteadyNowNs();

// Names the calling thread (as `top -H` and debuggers show it; at most 15 characters).
void NameThread(const char* name);

}  // namespace pyserve
