#include "grpc_server.h"

#include <absl/synchronization/mutex.h>
#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <optional>
#include <regex>
#include <thread>
#include <unordered_set>
#include <vector>

#include "infer_codec.h"
#include "probes.h"
#include "trace.h"

namespace pyserve::grpcfront {

namespace {

const char kModelInfer[] = "/inference.GRPCInferenceService/ModelInfer";
const char kModelStreamInfer[] = "/inference.GRPCInferenceService/ModelStreamInfer";

grpc::StatusCode GrpcCode(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return grpc::StatusCode::OK;
    case StatusCode::kInvalidArg: return grpc::StatusCode::INVALID_ARGUMENT;
    case StatusCode::kNotFound: return grpc::StatusCode::NOT_FOUND;
    case StatusCode::kUnavailable: return grpc::StatusCode::UNAVAILABLE;
    case StatusCode::kUnsupported: return grpc::StatusCode::UNIMPLEMENTED;
    case StatusCode::kAlreadyExists: return grpc::StatusCode::ALREADY_EXISTS;
    case StatusCode::kCancelled: return grpc::StatusCode::CANCELLED;
    default: return grpc::StatusCode::INTERNAL;
  }
}

grpc::Status GrpcStatus(const Status& status) {
  return grpc::Status(GrpcCode(status.code()), status.message());
}

// A slice that takes the string without copying it.
grpc::Slice OwnedSlice(std::string data) {
  auto* owned = new std::string(std::move(data));
  return grpc::Slice(owned->data(), owned->size(),
                     [](void* p) { delete static_cast<std::string*>(p); }, owned);
}

grpc::ByteBuffer Buffer(std::string data) {
  grpc::Slice slice = OwnedSlice(std::move(data));
  return grpc::ByteBuffer(&slice, 1);
}

// A ModelStreamInferResponse around a serialized ModelInferResponse, without copying it.
grpc::ByteBuffer StreamResponse(std::string infer_response) {
  grpc::Slice slices[] = {OwnedSlice(StreamResponseHead(infer_response.size())),
                          OwnedSlice(std::move(infer_response))};
  return grpc::ByteBuffer(slices, 2);
}

std::string Bytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// A message's bytes in one piece: gRPC's own slice when it arrived in one (no copy).
class MessageBytes {
 public:
  explicit MessageBytes(const grpc::ByteBuffer& buffer) {
    std::vector<grpc::Slice> slices;
    if (buffer.Dump(&slices).ok() && slices.size() == 1) {
      slice_ = slices[0];
    } else {
      copy_ = Bytes(buffer);
    }
  }
  // The bytes as a string of their own (the copy, if there is one, is moved).
  std::string Take() { return copy_.empty() ? std::string(view()) : std::move(copy_); }
  std::string_view view() const {
    if (copy_.empty() && slice_.size() != 0) {
      return std::string_view(reinterpret_cast<const char*>(slice_.begin()), slice_.size());
    }
    return copy_;
  }

 private:
  grpc::Slice slice_;
  std::string copy_;
};

class Tag {
 public:
  virtual ~Tag() = default;
  virtual void Done(bool ok) = 0;
};

class Call;

// One inference request of a call, in flight in the core: owns the parsed message whose bytes
// the core's request views.
struct PendingInfer {
  PendingInfer(std::shared_ptr<Call> c, const grpc::ByteBuffer& buffer)
      : call(std::move(c)), bytes(buffer) {}
  std::shared_ptr<Call> call;
  MessageBytes bytes;
  InferMessage message;  // views of `bytes`
  std::vector<std::string> converted;
  std::shared_ptr<Model> model;  // the version that took the request (set before it did)
  std::shared_ptr<TraceRecord> trace;  // null unless sampled
  bool empty_final = false;      // triton_enable_empty_final_response (streams)
};

const char kDecoupledInfer[] =
    "ModelInfer RPC doesn't support models with decoupled transaction policy";

}  // namespace

class GrpcServer::Impl : public ResponseSink {
 public:
  Impl(std::shared_ptr<ModelTable> table, const GrpcOptions& options, Dispatch dispatch)
      : table_(std::move(table)), options_(options), dispatch_(std::move(dispatch)),
        response_delay_(std::chrono::seconds(EnvInt("TRITONSERVER_SERVER_DELAY_GRPC_RESPONSE_SEC"))),
        process_delay_(std::chrono::milliseconds(EnvInt("TRITONSERVER_DELAY_GRPC_PROCESS"))) {}
  ~Impl() override { Stop(0); }

  Status Start();
  void Stop(double grace_seconds);
  void Deliver(std::vector<Completion>& completions) override;

  ModelTable& table() { return *table_; }
  const Dispatch& dispatch() { return dispatch_; }
  const SharedMemoryRegistry* shared_memory() const { return options_.shared_memory.get(); }
  int InferCompressionLevel() const { return options_.infer_compression_level; }
  grpc::AsyncGenericService& service() { return service_; }
  // Calls are counted twice: until finished (live) and until freed (allocated).
  void CallStarted() {
    live_calls_.fetch_add(1);
    allocated_calls_.fetch_add(1);
  }
  void CallEnded() { Decrement(live_calls_); }
  void CallFreed() { Decrement(allocated_calls_); }
  // Started calls, until they end: those Stop answers itself when their requests outlive it.
  void Track(Call* call) {
    std::lock_guard<std::mutex> lock(calls_mutex_);
    started_.insert(call);
  }
  void Forget(Call* call) {
    std::lock_guard<std::mutex> lock(calls_mutex_);
    started_.erase(call);
  }
  // Why a call of `method` may not be served (empty: it may): a restricted method without
  // its metadata key and value.
  std::string Restriction(const std::string& method, const grpc::GenericServerContext& context) const {
    if (options_.restricted.empty()) return {};
    auto found = options_.restricted.find(method);
    if (found == options_.restricted.end()) return {};
    const auto& [key, value] = found->second;
    const auto& metadata = context.client_metadata();
    for (auto [it, end] = metadata.equal_range(key); it != end; ++it) {
      if (it->second == value) return {};
    }
    return "This protocol is restricted, expecting header '" + key + "'";
  }
  // Forwards the call's metadata that --grpc-header-forward-pattern finds as parameters; a
  // request parameter of the same name wins (binary "-bin" metadata is not text: skipped).
  void ForwardHeaders(const grpc::GenericServerContext& context, InferRequest* request) const {
    if (!forward_) return;
    for (const auto& [key, value] : context.client_metadata()) {
      const std::string name(key.data(), key.size());
      if (name.size() > 4 && name.compare(name.size() - 4, 4, "-bin") == 0) continue;
      if (!std::regex_search(name, *forward_)) continue;
      const bool given = std::any_of(request->parameters.begin(), request->parameters.end(),
                                     [&](const Parameter& p) { return p.key == name; });
      if (given) continue;
      Parameter parameter;
      parameter.key = name;
      parameter.string_value.assign(value.data(), value.size());
      request->parameters.push_back(std::move(parameter));
    }
  }
  // Triton's test builds' delays (0: none): how long the answers of RPCs other than inference
  // wait before they are written, and how long a ModelInfer call waits before it is taken.
  std::chrono::seconds response_delay() const { return response_delay_; }
  std::chrono::milliseconds process_delay() const { return process_delay_; }
  // Calls not freed yet: those of requests an abandoned (hung) model instance still holds.
  bool CallsOutstanding() const { return allocated_calls_.load() != 0; }
  int port = 0;

 private:
  void Serve(grpc::ServerCompletionQueue* cq);

  std::shared_ptr<ModelTable> table_;
  GrpcOptions options_;
  Dispatch dispatch_;
  grpc::AsyncGenericService service_;
  // The queues outlive the server (members are destroyed in reverse), as in gRPC's examples.
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::thread> threads_;
  void Decrement(std::atomic<int>& count) {
    if (count.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);
      idle_.notify_all();
    }
  }

  void AbandonStarted();

  // An environment variable of Triton's test builds (qa/L0_client_timeout,
  // L0_request_cancellation), read as Triton reads it (atoi), once, at start.
  static int EnvInt(const char* name) {
    const char* value = std::getenv(name);
    return value == nullptr ? 0 : std::max(0, std::atoi(value));
  }

  const std::chrono::seconds response_delay_;
  const std::chrono::milliseconds process_delay_;
  std::optional<std::regex> forward_;
  std::atomic<int> live_calls_{0}, allocated_calls_{0};
  std::mutex calls_mutex_;
  std::unordered_set<Call*> started_;
  std::mutex mutex_;
  std::condition_variable idle_;
  bool stopped_ = false;
};

namespace {

// One RPC, from its arrival to its status. Unary calls (ModelInfer, and every RPC handed to
// the shell) read one message and answer it with WriteAndFinish; ModelStreamInfer reads
// until the client is done, answers each message as it completes (writes queued, one in
// flight) and finishes once every message is answered. The call keeps itself alive (self_)
// until its Finish and gRPC's done notification have both completed; requests in the core
// keep it alive through PendingInfer. A client that cancels (or whose deadline passes) sets
// `cancelled_`, which its queued requests see: they are answered, not computed.
class Call : public std::enable_shared_from_this<Call> {
 public:
  // A call is live from its creation until it is finished (not until it is freed: a request
  // of an abandoned model instance may keep its memory for ever).
  Call(GrpcServer::Impl* server, grpc::ServerCompletionQueue* cq) : server_(server), cq_(cq) {
    server_->CallStarted();
  }
  ~Call() { server_->CallFreed(); }

  static void Listen(GrpcServer::Impl* server, grpc::ServerCompletionQueue* cq) {
    auto call = std::make_shared<Call>(server, cq);
    call->self_ = call;
    call->context_.AsyncNotifyWhenDone(&call->done_);
    server->service().RequestCall(&call->context_, &call->stream_, cq, cq, &call->started_);
  }

  // A response for an inference request of this call (any thread). On a stream, every
  // response carries `triton_final_response`; a decoupled model's bare final flag is sent
  // (as an empty response) only when the request asked for it.
  void Respond(PendingInfer& pending, const Completion& completion) {
    if (pending.trace) pending.trace->Stamp("INFER_RESPONSE_COMPLETE", SteadyNowNs());
    const InferResponse& response = completion.response;
    if (!streaming_ && !response.status.ok()) return Fail(response.status);
    const ModelSpec& spec = pending.model->spec();
    const std::string version = std::to_string(spec.version);
    if (streaming_) {
      const bool final = completion.final;
      if (!response.status.ok()) {
        return StreamFail(GrpcStatus(response.status),
                          StreamError(response.status.message(), spec.name, version,
                                      pending.message.id, final),
                          final);
      }
      if (completion.empty && !pending.empty_final) return StreamWrite(std::nullopt, final);
      return StreamWrite(StreamResponse(EncodeInferResponse(spec.name, version,
                                                            pending.message.id, response, final)),
                         final);
    }
    std::string encoded = EncodeInferResponse(spec.name, version, pending.message.id, response);
    grpc::ByteBuffer buffer = Buffer(std::move(encoded));  // what may throw comes first
    if (answered_.exchange(true)) return;
    if (pending.trace) {  // GRPC_SEND_END when the write completes (OnFinished)
      pending.trace->Stamp("GRPC_SEND_START", SteadyNowNs());
      send_trace_ = pending.trace;
    }
    stream_.WriteAndFinish(buffer, grpc::WriteOptions(), grpc::Status::OK, &finished_);
  }

  void Fail(const Status& status, bool final = true) {
    if (streaming_) return StreamFail(GrpcStatus(status), StreamError(status.message()), final);
    Finish(GrpcStatus(status));
  }

  // Stop gave up waiting for this call's requests: it is answered now (UNAVAILABLE, or the
  // stream finished), and what the core answers later is dropped, so that the completion
  // queues can be shut down under it.
  void Abandon() {
    if (!streaming_) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    abandoned_ = true;
    outstanding_ = 0;
    write_failed_ = true;  // the write in flight, if any, completes; none is queued after it
    if (writes_.size() > 1) writes_.erase(writes_.begin() + 1, writes_.end());
    MaybeFinish();
  }

 private:
  struct Op : Tag {
    Op(Call* c, void (Call::*f)(bool)) : call(c), fn(f) {}
    void Done(bool ok) override { (call->*fn)(ok); }
    Call* call;
    void (Call::*fn)(bool);
  };

  // A unary call's one answer, whoever gives it first (a response, a refusal, Stop).
  void Finish(const grpc::Status& status) {
    if (!answered_.exchange(true)) stream_.Finish(status, &finished_);
  }

  void OnStarted(bool ok) {
    if (!ok) {  // the server is shutting down; the call never started, so no done event
      server_->CallEnded();
      self_.reset();
      return;
    }
    server_->Track(this);
    Listen(server_, cq_);
    method_ = context_.method();
    streaming_ = method_ == kModelStreamInfer;
    if (const int level = server_->InferCompressionLevel();
        level != 0 && (streaming_ || method_ == kModelInfer)) {
      context_.set_compression_level(static_cast<grpc_compression_level>(level));
    }
    if (streaming_) {  // Triton's opt-in: the first error ends the stream with its status
      const auto& metadata = context_.client_metadata();
      auto found = metadata.find("triton_grpc_error");
      grpc_error_ = found != metadata.end() && found->second == "true";
    }
    if (const std::string refusal = server_->Restriction(method_, context_); !refusal.empty()) {
      if (!answered_.exchange(true)) {
        stream_.Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, refusal), &finished_);
      }
      return;
    }
    if (Tracer::Active()) read_start_ns_ = SteadyNowNs();
    stream_.Read(&request_, &read_);
  }

  void OnRead(bool ok) {
    if (read_start_ns_ != 0) read_end_ns_ = SteadyNowNs();
    if (streaming_) {
      if (!ok) {
        std::lock_guard<std::mutex> lock(mutex_);
        reads_done_ = true;
        MaybeFinish();
        return;
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (finishing_) return;  // ended by an error (triton_grpc_error): read no more
        ++outstanding_;
      }
      Infer(request_);
      request_.Clear();
      if (Tracer::Active()) read_start_ns_ = SteadyNowNs();
      std::lock_guard<std::mutex> lock(mutex_);
      if (!finishing_) stream_.Read(&request_, &read_);
      return;
    }
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INTERNAL, "the call carried no request"));
      return;
    }
    if (method_ == kModelInfer) {
      if (server_->process_delay().count() != 0 && !delay_rang_) {  // a cancel meanwhile is seen
        return After(server_->process_delay(), [self = shared_from_this()] { self->OnRead(true); });
      }
      return Infer(request_);
    }
    std::string bytes = Bytes(request_);
    if (auto probe = ProbeResponse(method_, bytes, server_->table())) {
      Answer(0, "", *probe);
    } else {
      ToShell(method_, std::move(bytes));
    }
  }

  // No exception leaves a completion-queue thread: a message that cannot be held (bad_alloc)
  // fails its own call.
  void Infer(grpc::ByteBuffer& buffer) {
    try {
      Submit(buffer);
    } catch (const std::exception& e) {
      Fail(Status(StatusCode::kInternal, std::string("failed to take the request: ") + e.what()));
    }
  }

  void Submit(grpc::ByteBuffer& buffer) {
    auto pending = std::make_shared<PendingInfer>(shared_from_this(), buffer);
    Status status = ParseInferRequest(pending->bytes.view(), &pending->message);
    if (!status.ok()) return Fail(status);
    const std::string_view name = pending->message.model_name;
    const std::string_view version = pending->message.model_version;
    pending->model = server_->table().Find(name, version);
    if (!pending->model) {  // the shell words the refusal
      return ToShell(kModelInfer, pending->bytes.Take());
    }
    if (pending->model->spec().decoupled && !streaming_) {
      return Fail(Status(StatusCode::kUnsupported, kDecoupledInfer));
    }
    if (streaming_) {
      status = EmptyFinalParameter(pending->message, &pending->empty_final);
      if (!status.ok()) return Fail(status);
    }
    auto request = std::make_unique<InferRequest>();
    request->sink = server_;
    request->owner = pending;
    request->cancelled = &cancelled_;
    status = DecodeInferRequest(pending->message, server_->shared_memory(), &pending->converted,
                                request.get());
    if (!status.ok()) return Fail(status);
    server_->ForwardHeaders(context_, request.get());
    if (Tracer::Active()) StartTrace(*pending, request.get());
    status = server_->table().Submit(name, version, &pending->model, request);
    if (!status.ok()) return Fail(status);
  }

  // Samples the request; a traced one gets the read's and the request's start.
  void StartTrace(PendingInfer& pending, InferRequest* request) {
    std::string_view traceparent;
    const auto& metadata = context_.client_metadata();
    if (auto it = metadata.find("traceparent"); it != metadata.end()) {
      traceparent = std::string_view(it->second.data(), it->second.size());
    }
    pending.trace = Tracer::Get().Sample(pending.message.model_name,
                                         pending.model->spec().version, pending.message.id,
                                         traceparent);
    if (!pending.trace) return;
    if (read_start_ns_ != 0) {
      pending.trace->Stamp("GRPC_WAITREAD_START", read_start_ns_);
      pending.trace->Stamp("GRPC_WAITREAD_END", read_end_ns_);
    }
    pending.trace->Stamp("REQUEST_START", SteadyNowNs());
    request->trace = pending.trace;
  }

  void ToShell(const std::string& method, std::string bytes) {
    auto self = shared_from_this();
    server_->dispatch()(method, std::move(bytes),
                        [self](int code, const std::string& message, const std::string& body) {
                          self->Answer(code, message, body);
                        });
  }

  // Triton's triton_enable_empty_final_response request parameter (a bool).
  static Status EmptyFinalParameter(const InferMessage& message, bool* enabled) {
    for (const auto& [key, value] : message.parameters) {
      if (key != "triton_enable_empty_final_response") continue;
      if (value.kind != InferParam::kBool) {
        return Status(StatusCode::kInvalidArg,
                      "invalid value type for 'triton_enable_empty_final_response' parameter, "
                      "expected bool_param.");
      }
      *enabled = value.bool_value;
    }
    return Status::OK();
  }

  void Answer(int code, const std::string& message, const std::string& body) {
    if (streaming_) {
      if (code == 0) return StreamWrite(StreamResponse(body), true);
      return StreamFail(grpc::Status(static_cast<grpc::StatusCode>(code), message),
                        StreamError(message), true);
    }
    if (server_->response_delay().count() != 0 && method_ != kModelInfer && !delay_rang_) {
      return After(server_->response_delay(),
                   [self = shared_from_this(), code, message, body] { self->Answer(code, message, body); });
    }
    if (code != 0) {
      Finish(grpc::Status(static_cast<grpc::StatusCode>(code), message));
    } else if (!answered_.exchange(true)) {
      stream_.WriteAndFinish(Buffer(body), grpc::WriteOptions(), grpc::Status::OK, &finished_);
    }
  }

  // Queues a response to one message of the stream (none: only the message's end); `final`
  // when the message is answered.
  void StreamWrite(std::optional<grpc::ByteBuffer> response, bool final) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (abandoned_) return;
    if (final) --outstanding_;
    if (response && !write_failed_ && !finishing_) writes_.push_back(std::move(*response));
    if (!writing_ && !writes_.empty()) {
      writing_ = true;
      stream_.Write(writes_.front(), &written_);
    }
    MaybeFinish();
  }

  // An error for one message: a response with its text, or, when the client asked for
  // triton_grpc_error, the end of the stream with its status (later responses are dropped
  // and the stream's requests cancelled, as Triton does).
  void StreamFail(const grpc::Status& status, std::string response, bool final) {
    if (!grpc_error_) return StreamWrite(Buffer(std::move(response)), final);
    cancelled_.store(true, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(mutex_);
    if (abandoned_) return;
    if (final) --outstanding_;
    if (!error_) error_ = status;
    if (writes_.size() > 1) writes_.erase(writes_.begin() + 1, writes_.end());
    MaybeFinish();
  }

  void OnWritten(bool ok) {
    std::lock_guard<std::mutex> lock(mutex_);
    writes_.pop_front();
    if (!ok) {  // the client went away: answer nothing more
      write_failed_ = true;
      writes_.clear();
    }
    if (!writes_.empty()) {
      stream_.Write(writes_.front(), &written_);
    } else {
      writing_ = false;
      MaybeFinish();
    }
  }

  void MaybeFinish() {  // mutex_ held
    if (finishing_ || writing_) return;
    if (error_) {
      finishing_ = true;
      stream_.Finish(*error_, &finished_);
    } else if (reads_done_ && outstanding_ == 0) {
      finishing_ = true;
      stream_.Finish(grpc::Status::OK, &finished_);
    }
  }

  void OnFinished(bool) {
    if (send_trace_) {
      send_trace_->Stamp("GRPC_SEND_END", SteadyNowNs());
      send_trace_.reset();
    }
    Unref();
  }

  // `then` once `delay` has passed, held on an alarm that keeps the call alive until it rings
  // (no thread asleep); once per call.
  template <typename Delay>
  void After(Delay delay, std::function<void()> then) {
    delayed_ = std::move(then);
    alarm_.Set(cq_, std::chrono::system_clock::now() + delay, &delay_);
  }

  void OnDelayed(bool) {
    delay_rang_ = true;
    auto answer = std::move(delayed_);
    delayed_ = nullptr;  // which held this call
    answer();  // answered_ keeps it from finishing a call Stop has answered
  }

  void OnDone(bool) {
    if (context_.IsCancelled()) cancelled_.store(true, std::memory_order_relaxed);
    Unref();
  }

  // Finish and the done notification each hold one reference of the started call.
  void Unref() {
    if (started_refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      server_->Forget(this);
      server_->CallEnded();
      self_.reset();
    }
  }

  GrpcServer::Impl* server_;
  grpc::ServerCompletionQueue* cq_;
  grpc::GenericServerContext context_;
  grpc::GenericServerAsyncReaderWriter stream_{&context_};
  grpc::ByteBuffer request_;
  std::string method_;
  bool streaming_ = false;
  Op started_{this, &Call::OnStarted};
  Op read_{this, &Call::OnRead};
  Op written_{this, &Call::OnWritten};
  Op finished_{this, &Call::OnFinished};
  Op done_{this, &Call::OnDone};
  Op delay_{this, &Call::OnDelayed};
  grpc::Alarm alarm_;
  std::function<void()> delayed_;  // the answer the alarm holds
  bool delay_rang_ = false;
  std::shared_ptr<Call> self_;
  std::atomic<int> started_refs_{2};
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> answered_{false};  // unary calls: Finish (or WriteAndFinish) was posted
  // Tracing: the read of the message (taken only while tracing is on), and the unary
  // answer's trace until its write completes.
  uint64_t read_start_ns_ = 0, read_end_ns_ = 0;
  std::shared_ptr<TraceRecord> send_trace_;

  // ModelStreamInfer only.
  std::mutex mutex_;
  std::deque<grpc::ByteBuffer> writes_;
  int outstanding_ = 0;  // messages read and not yet answered
  bool writing_ = false, reads_done_ = false, finishing_ = false, write_failed_ = false;
  bool abandoned_ = false;  // Stop answered the stream: later responses are dropped
  bool grpc_error_ = false;  // the client sent triton_grpc_error: true
  std::optional<grpc::Status> error_;  // the status that ends the stream (grpc_error_)
};

}  // namespace

namespace {

std::shared_ptr<grpc::ServerCredentials> Credentials(const GrpcOptions& options) {
  if (options.server_cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl(
      options.mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                     : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  ssl.pem_root_certs = options.root_cert;
  ssl.pem_key_cert_pairs.push_back({options.server_key, options.server_cert});
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

Status GrpcServer::Impl::Start() {
  if (!options_.header_forward_pattern.empty()) {
    try {
      forward_.emplace(options_.header_forward_pattern, std::regex::ECMAScript | std::regex::optimize);
    } catch (const std::regex_error& e) {
      return Status(StatusCode::kInvalidArg, "invalid --grpc-header-forward-pattern '" +
                                                 options_.header_forward_pattern + "': " + e.what());
    }
  }
  // Distributions build Abseil without NDEBUG, which turns on its lock-order (deadlock) graph:
  // every absl::Mutex lock in gRPC then updates one global graph, under one global lock.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.address, Credentials(options_), &port);
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
  builder.SetMaxSendMessageSize(options_.max_message_bytes);
  for (const auto& [name, value] : options_.channel_args) builder.AddChannelArgument(name, value);
  builder.RegisterAsyncGenericService(&service_);
  const int threads = std::max(1, options_.threads);
  for (int i = 0; i < threads; ++i) cqs_.push_back(builder.AddCompletionQueue());
  server_ = builder.BuildAndStart();
  if (!server_ || port == 0) {
    return Status(StatusCode::kUnavailable, "could not bind the gRPC frontend to " + options_.address);
  }
  for (auto& cq : cqs_) {
    grpc::ServerCompletionQueue* queue = cq.get();
    // A few calls wait on each queue so that arrivals never wait for a RequestCall.
    for (int i = 0; i < 8; ++i) Call::Listen(this, queue);
    threads_.emplace_back([this, queue] { Serve(queue); });
  }
  return Status::OK();
}

void GrpcServer::Impl::Serve(grpc::ServerCompletionQueue* cq) {
  NameThread("ps-grpc");
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) static_cast<Tag*>(tag)->Done(ok);
}

void GrpcServer::Impl::Deliver(std::vector<Completion>& completions) {
  for (Completion& c : completions) {
    auto* pending = static_cast<PendingInfer*>(c.owner.get());
    try {  // a response too large to encode fails alone; the batch's others are answered
      pending->call->Respond(*pending, c);
    } catch (const std::exception& e) {
      pending->call->Fail(Status(StatusCode::kInternal,
                                 std::string("failed to encode the response: ") + e.what()),
                          c.final);
    }
  }
}

void GrpcServer::Impl::Stop(double grace_seconds) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopped_ || !server_) return;
    stopped_ = true;
  }
  const auto deadline = std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000));
  server_->Shutdown(deadline);
  // Calls still waiting for the core hold no gRPC operation; their responses must be sent
  // before the queues close. Bounded: a call the core never answers is left behind.
  {
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait_until(lock, deadline + std::chrono::seconds(1),
                     [this] { return live_calls_.load() == 0; });
    // Finished calls are freed as their requests are (at once, but for the requests of an
    // abandoned model instance, which may never be).
    idle_.wait_for(lock, std::chrono::seconds(1), [this] { return allocated_calls_.load() == 0; });
  }
  if (live_calls_.load() != 0) {
    // Requests the core still holds past the deadline: their calls are answered now, the
    // answers' completions drained, and the core's late responses dropped.
    AbandonStarted();
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait_for(lock, std::chrono::seconds(5), [this] { return live_calls_.load() == 0; });
  }
  if (live_calls_.load() != 0) {  // a call gRPC never completes: leave its queue be
    for (auto& t : threads_) t.detach();
    return;
  }
  for (auto& cq : cqs_) cq->Shutdown();
  for (auto& t : threads_) t.join();
}

void GrpcServer::Impl::AbandonStarted() {
  std::lock_guard<std::mutex> lock(calls_mutex_);  // a call forgets itself before it ends
  for (Call* call : started_) call->Abandon();
}

GrpcServer::GrpcServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GrpcServer::~GrpcServer() {
  impl_->Stop(0);
  // A call freed later (if a hung instance ever returns) still reaches its server: the server
  // outlives it on purpose, a leak bounded by what the hung instances hold.
  if (impl_->CallsOutstanding()) (void)impl_.release();
}

Status GrpcServer::Create(std::shared_ptr<ModelTable> table, const GrpcOptions& options,
                          Dispatch dispatch, std::unique_ptr<GrpcServer>* server) {
  auto impl = std::make_unique<Impl>(std::move(table), options, std::move(dispatch));
  Status status = impl->Start();
  if (!status.ok()) return status;
  server->reset(new GrpcServer(std::move(impl)));
  return Status::OK();
}

int GrpcServer::port() const { return impl_->port; }
void GrpcServer::Stop(double grace_seconds) { impl_->Stop(grace_seconds); }

}  // namespace pyserve::grpcfront
