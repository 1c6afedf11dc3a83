// TorchServe's predictions path (csrc/http/predictions.cc) without a server. Its parsers are
// file-local, so this harness compiles predictions.cc itself and calls them directly:
//   - the backend's answer frame (ResponseFrame/ParseFrame: u32 meta length | meta JSON |
//     body) and what Answer/StatusAndHeaders make of it,
//   - intermediate frames (what Push carries, ParseFrame),
//   - the request side: PredictionKey (the path), HeadersJson, FormBody;
// and then the whole of Predictions::Handle for a request whose path names the one archive
// ("m", "m/1"): a real Model whose compute pushes the intermediate frames and answers the final
// one, written to an Exchange that records the answer (whole, or head, chunks and end).
//
// Input: "METHOD PATH\n", then header lines "Name: value\n" up to an empty line, then frames
// separated by "|chunk|": every piece but the last is an intermediate frame, the last is the
// final answer's BYTES element (u32 element length | frame); it is also the request body.
#include "predictions.cc"  // NOLINT: the file-local parsers are the target

#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "model.h"
#include "model_table.h"

using namespace pyserve;
using namespace pyserve::httpfront;

namespace {

constexpr std::string_view kSeparator = "|chunk|";
constexpr size_t kMaxResponseBytes = 1024;

// What the compute answers for the current input (set before Handle, read on the worker).
struct Script {
  std::mutex mutex;
  std::vector<std::string> chunks;
  std::string element;
  Predictions* predictions = nullptr;
} script;

// The client's side: what Handle and the core write, until the answer ends.
class RecordingExchange : public Exchange {
 public:
  void Answer(HttpResponse response) override { Ended(response.body.size()); }
  void Head(HttpResponse) override { Record(false); }
  void Chunk(std::string data) override { Record(data.empty()); }
  void End() override { Ended(0); }
  void OnGone(std::function<void()>) override {}
  void Timer(std::chrono::steady_clock::time_point, std::function<void()>) override {}
  void Run(std::function<void()> task) override { task(); }

  // Waits for the answer's end; aborts past 30 s (an answer that never ends is the bug).
  void Wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!cv_.wait_for(lock, std::chrono::seconds(30), [this] { return ended_; })) {
      std::fprintf(stderr, "the answer does not end\n");
      std::abort();
    }
  }

 private:
  void Record(bool empty_chunk) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ended_ || empty_chunk) {
      std::fprintf(stderr, "written after the answer's end, or an empty chunk\n");
      std::abort();
    }
  }
  void Ended(size_t) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ended_) {
      std::fprintf(stderr, "the answer ended twice\n");
      std::abort();
    }
    ended_ = true;
    cv_.notify_all();
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  bool ended_ = false;
};

class FrameCompute : public BatchCompute {
 public:
  Status Compute(Batch& batch, BatchOutputs* outputs) override {
    uint64_t token = 0;
    for (const Parameter& p : batch.requests.front()->parameters) {
      if (p.key == "torchserve.token") token = static_cast<uint64_t>(p.int_value);
    }
    script.predictions->Started({token});
    std::unique_lock<std::mutex> lock(script.mutex);
    for (const std::string& chunk : script.chunks) script.predictions->Push(token, chunk);
    auto memory = std::make_shared<std::string>(script.element);
    OutputTensor output;
    output.name = "output";
    output.dtype = DataType::kBytes;
    output.shape = {static_cast<int64_t>(batch.requests.size()), 1};
    output.data = reinterpret_cast<const uint8_t*>(memory->data());
    output.byte_size = memory->size();
    output.memory = std::move(memory);
    outputs->batch.push_back(std::move(output));
    return Status::OK();
  }
};

Predictions* Setup() {
  ModelSpec spec;
  spec.name = "m";
  spec.version = 1;
  spec.max_batch_size = 4;
  spec.inputs.push_back({"data", DataType::kBytes, {1}, false, false, {}});
  spec.outputs.push_back({"output", DataType::kBytes, {1}, false, false, {}});
  SchedulerOptions options;
  options.model_name = "m";
  std::shared_ptr<Model> model;
  Status status = Model::Create(spec, options, std::make_shared<FrameCompute>(), &model);
  if (!status.ok()) {
    std::fprintf(stderr, "Model::Create: %s\n", status.message().c_str());
    std::abort();
  }
  PredictionsOptions predictions;
  predictions.table = std::make_shared<ModelTable>();
  predictions.table->Publish("m", {model});
  predictions.table->Publish("m/1", {model});
  predictions.max_response_bytes = kMaxResponseBytes;
  predictions.response_headers = {{"Access-Control-Allow-Origin", "*"}};
  auto* out = new Predictions(std::move(predictions));  // lives as long as the process
  out->SetKey("fuzz-token", 0);
  return out;
}

// The request line and headers of `input` into `req`; returns the rest (the frames).
std::string_view ParseRequest(std::string_view input, HttpRequest* req) {
  size_t end = input.find('\n');
  std::string_view line = input.substr(0, end);
  input = end == std::string_view::npos ? std::string_view() : input.substr(end + 1);
  const size_t space = line.find(' ');
  req->method = std::string(line.substr(0, space));
  req->path = req->target = space == std::string_view::npos ? "" : std::string(line.substr(space + 1));
  while (!input.empty()) {
    end = input.find('\n');
    line = input.substr(0, end);
    input = end == std::string_view::npos ? std::string_view() : input.substr(end + 1);
    if (line.empty()) break;
    const size_t colon = line.find(':');
    std::string_view value = colon == std::string_view::npos ? "" : line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    req->headers.emplace_back(std::string(line.substr(0, colon)), std::string(value));
  }
  return input;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Predictions* predictions = script.predictions = Setup();

  HttpRequest req;
  std::string_view frames = ParseRequest(std::string_view(reinterpret_cast<const char*>(data), size), &req);
  std::vector<std::string> chunks;
  for (size_t at; (at = frames.find(kSeparator)) != std::string_view::npos;) {
    chunks.emplace_back(frames.substr(0, at));
    frames.remove_prefix(at + kSeparator.size());
  }
  // Exact-size copies: a read past a frame is a read past its allocation.
  std::unique_ptr<char[]> element(new char[frames.size()]);
  if (!frames.empty()) std::memcpy(element.get(), frames.data(), frames.size());

  // The parsers on their own.
  for (const std::string& chunk : chunks) {
    std::unique_ptr<char[]> copy(new char[chunk.size()]);
    if (!chunk.empty()) std::memcpy(copy.get(), chunk.data(), chunk.size());
    Frame frame;
    if (ParseFrame(std::string_view(copy.get(), chunk.size()), &frame)) {
      HttpResponse res;
      StatusAndHeaders(frame, res);
    }
  }
  {
    InferResponse response;
    OutputTensor output;
    output.name = "output";
    output.dtype = DataType::kBytes;
    output.shape = {1, 1};
    output.data = reinterpret_cast<const uint8_t*>(element.get());
    output.byte_size = frames.size();
    response.outputs.push_back(std::move(output));
    HttpResponse res;
    Frame frame;
    (void)Answer(response, kMaxResponseBytes, res, &frame);
  }
  const std::string key = PredictionKey(req.path);
  (void)HeadersJson(req);
  (void)FormBody(req);

  // The whole handler, for the archive's paths.
  if (key != "m" && key != "m/1") return 0;
  {
    std::lock_guard<std::mutex> lock(script.mutex);
    script.chunks = std::move(chunks);
    script.element.assign(element.get(), frames.size());
  }
  req.body.assign(element.get(), frames.size());
  auto exchange = std::make_shared<RecordingExchange>();
  if (predictions->Handle(req, exchange)) exchange->Wait();
  return 0;
}
