// The request validator (csrc/core/validate.cc) and the Model-level steps after it, on
// requests as the frontends decode them. The input is a serialized ModelInferRequest (the gRPC
// decoder), or, when it starts with '{', a KServe v2 JSON body (the HTTP decoder, JSON only).
// Its model_name picks one of two fixed specs: "fuzz_nobatch" (max_batch_size 0), anything
// else "fuzz" (max_batch_size 8, preserve_ordering); JSON bodies go to "fuzz".
//
// The specs (dims without the batch dimension): INPUT0 FP32 [4]; INPUT1 BYTES [-1]; INPUT2 INT32 [2,-1] reshaped to [-1,2];
// INPUT3 INT64 [-1,-1] optional; INPUT4 FP16 [-1] optional. OUTPUTk echoes INPUTk (as the
// model sees it), with the same dims and reshape; OUTPUT0 has classification labels.
//
// A request ValidateRequest accepts is then submitted to a real Model of the spec (scheduler,
// worker, output split, reshape undone, classification), once alone and, for the batching spec,
// twice into a model that holds its first batch until both are queued (so they are gathered
// into one batch and split again). Every answered output must hold as many elements as its
// shape says.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "bytes_tensor.h"
#include "infer_codec.h"
#include "infer_json.h"
#include "model.h"
#include "small_limits.h"
#include "validate.h"

using namespace pyserve;

namespace {

ModelSpec MakeSpec(const std::string& name, uint32_t max_batch_size) {
  ModelSpec spec;
  spec.name = name;
  spec.version = 1;
  spec.max_batch_size = max_batch_size;
  spec.preserve_ordering = max_batch_size > 0;
  spec.inputs = {
      {"INPUT0", DataType::kFp32, {4}, false, false, {}},
      {"INPUT1", DataType::kBytes, {-1}, false, false, {}},
      {"INPUT2", DataType::kInt32, {2, -1}, false, true, {-1, 2}},
      {"INPUT3", DataType::kInt64, {-1, -1}, true, false, {}},
      {"INPUT4", DataType::kFp16, {-1}, true, false, {}},
  };
  spec.outputs = spec.inputs;
  for (size_t i = 0; i < spec.outputs.size(); ++i) {
    spec.outputs[i].name = "OUTPUT" + std::to_string(i);
    spec.outputs[i].optional = false;
  }
  spec.labels["OUTPUT0"] = {"zero", "one", "two"};
  return spec;
}

// OUTPUTk = INPUTk of the batch, copied (exact-size allocations, for ASan).
class EchoCompute : public BatchCompute {
 public:
  Status Compute(Batch& batch, BatchOutputs* outputs) override {
    for (const TensorView& input : batch.inputs) {
      if (input.name.rfind("INPUT", 0) != 0) continue;
      auto memory = std::shared_ptr<uint8_t[]>(new uint8_t[input.byte_size + 1]);
      if (input.byte_size != 0) std::memcpy(memory.get(), input.data, input.byte_size);
      OutputTensor output;
      output.name = "OUTPUT" + input.name.substr(5);
      output.dtype = input.dtype;
      output.shape = input.shape;
      output.data = memory.get();
      output.byte_size = input.byte_size;
      output.memory = std::shared_ptr<const void>(memory, memory.get());
      outputs->batch.push_back(std::move(output));
    }
    return Status::OK();
  }
};

// Collects the responses of the requests submitted to it.
class Collect : public ResponseSink {
 public:
  void Deliver(std::vector<Completion>& completions) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Completion& c : completions) responses_.push_back(std::move(c.response));
    cv_.notify_all();
  }
  std::vector<InferResponse> Wait(size_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!cv_.wait_for(lock, std::chrono::seconds(20), [&] { return responses_.size() >= count; })) {
      std::fprintf(stderr, "%zu of %zu responses after 20 s\n", responses_.size(), count);
      std::abort();
    }
    std::vector<InferResponse> out = std::move(responses_);
    responses_.clear();
    return out;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<InferResponse> responses_;
};

struct Decoded {
  grpcfront::InferMessage message;
  std::vector<std::string> converted;
  httpfront::HttpInfer http;
};

// A request decoded from `bytes` by the frontend its first byte names; null when it does not
// decode. `model` is the name it asks for.
std::unique_ptr<InferRequest> Decode(std::string_view bytes, std::string* model) {
  auto decoded = std::make_shared<Decoded>();
  auto request = std::make_unique<InferRequest>();
  if (!bytes.empty() && bytes.front() == '{') {
    if (!httpfront::DecodeInfer(bytes, "", nullptr, &decoded->http, request.get())) return nullptr;
    *model = "fuzz";
  } else {
    if (!grpcfront::ParseInferRequest(bytes, &decoded->message).ok()) return nullptr;
    if (!grpcfront::DecodeInferRequest(decoded->message, nullptr, &decoded->converted,
                                       request.get()).ok()) {
      return nullptr;
    }
    *model = std::string(decoded->message.model_name);
  }
  request->owner = decoded;
  return request;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

// An answered output holds as many elements as its shape says.
void CheckResponses(const std::vector<InferResponse>& responses) {
  for (const InferResponse& response : responses) {
    if (!response.status.ok()) continue;
    for (const OutputTensor& t : response.outputs) {
      unsigned __int128 elements = 1;
      for (int64_t d : t.shape) {
        if (d < 0) {
          std::fprintf(stderr, "output '%s' has shape %s\n", t.name.c_str(), ShapeText(t.shape).c_str());
          std::abort();
        }
        elements *= static_cast<uint64_t>(d);
        if (elements > (static_cast<unsigned __int128>(1) << 100)) break;
      }
      unsigned __int128 held = 0;
      if (t.dtype == DataType::kBytes) {
        size_t count = 0;
        const size_t walked = ForEachString(t.data, t.byte_size, [&](const uint8_t*, size_t) { ++count; });
        held = walked == t.byte_size ? count : ~static_cast<unsigned __int128>(0);
      } else {
        held = t.byte_size / ElementSize(t.dtype);
      }
      if (held != elements) {
        std::fprintf(stderr, "output '%s' of shape %s holds %zu bytes (%llu elements)\n",
                     t.name.c_str(), ShapeText(t.shape).c_str(), t.byte_size,
                     static_cast<unsigned long long>(held));
        std::abort();
      }
    }
  }
}

std::shared_ptr<Model> NewModel(const ModelSpec& spec, uint32_t hold) {
  SchedulerOptions options;
  options.model_name = spec.name;
  if (hold > 0) {
    options.dynamic_batching = true;
    options.batching.max_batch_size = spec.max_batch_size;
    options.delay_scheduler_count = hold;
  }
  std::shared_ptr<Model> model;
  Status status = Model::Create(spec, options, std::make_shared<EchoCompute>(), &model);
  if (!status.ok()) {
    std::fprintf(stderr, "Model::Create: %s\n", status.message().c_str());
    std::abort();
  }
  return model;
}

// Submits each request to `model`; returns how many it accepted.
size_t Submit(Model& model, std::vector<std::unique_ptr<InferRequest>>& requests, Collect* sink) {
  size_t accepted = 0;
  for (auto& request : requests) {
    request->sink = sink;
    if (model.Submit(request).ok()) ++accepted;
  }
  return accepted;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Built once and never freed (their threads run until the process exits).
  static const ModelSpec* const batching = new ModelSpec(MakeSpec("fuzz", 8));
  static const ModelSpec* const nobatch = new ModelSpec(MakeSpec("fuzz_nobatch", 0));
  static auto* const batching_model = new std::shared_ptr<Model>(NewModel(*batching, 0));
  static auto* const nobatch_model = new std::shared_ptr<Model>(NewModel(*nobatch, 0));
  static Collect* const sink = new Collect;

  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  std::string name;
  std::unique_ptr<InferRequest> request = Decode(bytes, &name);
  if (!request) return 0;
  const bool batches = name != "fuzz_nobatch";
  const ModelSpec& spec = batches ? *batching : *nobatch;
  int64_t batch_size = 0;
  const Status valid = ValidateRequest(spec, *request, &batch_size);
  static const bool verbose = std::getenv("PYSERVE_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "%s: %s\n", spec.name.c_str(), valid.ok() ? "valid" : valid.message().c_str());
  if (!valid.ok()) return 0;

  // Alone, through the model that serves the spec.
  std::vector<std::unique_ptr<InferRequest>> requests;
  requests.push_back(std::move(request));
  size_t accepted = Submit(**(batches ? batching_model : nobatch_model), requests, sink);
  CheckResponses(sink->Wait(accepted));
  if (!batches) return 0;

  // Twice, gathered into one batch (when their batch sizes fit one) and split again.
  requests.clear();
  for (int i = 0; i < 2; ++i) requests.push_back(Decode(bytes, &name));
  std::shared_ptr<Model> pair = NewModel(*batching, 2);
  accepted = Submit(*pair, requests, sink);
  pair->Stop();  // runs what it accepted (a held batch too), then joins its threads
  CheckResponses(sink->Wait(accepted));
  return 0;
}
