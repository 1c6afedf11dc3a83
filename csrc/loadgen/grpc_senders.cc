#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>

#include "senders.h"

namespace pyserve::loadgen {
namespace {

constexpr char kInfer[] = "/inference.GRPCInferenceService/ModelInfer";
constexpr char kStreamInfer[] = "/inference.GRPCInferenceService/ModelStreamInfer";
constexpr unsigned char kStreamErrorTag = 0x0A;  // ModelStreamInferResponse.error_message

std::shared_ptr<grpc::Channel> MakeChannel(const Target& target) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // a connection per thread, as perf_analyzer's clients have, rather than one shared subchannel
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto credentials = target.tls ? grpc::SslCredentials(grpc::SslCredentialsOptions())
                                : grpc::InsecureChannelCredentials();
  return grpc::CreateCustomChannel(target.host + ":" + std::to_string(target.port), credentials,
                                   args);
}

std::shared_ptr<const std::vector<grpc::ByteBuffer>> ToBuffers(
    const std::vector<std::string>& messages) {
  auto buffers = std::make_shared<std::vector<grpc::ByteBuffer>>();
  for (const auto& message : messages) {
    grpc::Slice slice(message.data(), message.size());
    buffers->emplace_back(&slice, 1);
  }
  return buffers;
}

// Waits for the one operation in flight on a thread's own completion queue.
bool Wait(grpc::CompletionQueue& cq) {
  void* tag;
  bool ok = false;
  return cq.Next(&tag, &ok) && ok;
}

class GrpcUnary : public Sender {
 public:
  GrpcUnary(const Target& target, std::shared_ptr<const std::vector<grpc::ByteBuffer>> messages)
      : stub_(MakeChannel(target)), messages_(std::move(messages)), timeout_(target.timeout_s) {}

  ~GrpcUnary() override {
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  bool Send(size_t i) override {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::microseconds(int64_t(timeout_ * 1e6)));
    auto call = stub_.PrepareUnaryCall(&context, kInfer, (*messages_)[i], &cq_);
    call->StartCall();
    grpc::ByteBuffer response;
    grpc::Status status;
    call->Finish(&response, &status, this);
    return Wait(cq_) && status.ok();
  }

 private:
  grpc::GenericStub stub_;
  std::shared_ptr<const std::vector<grpc::ByteBuffer>> messages_;
  double timeout_;
  grpc::CompletionQueue cq_;
};

class GrpcStream : public Sender {
 public:
  GrpcStream(const Target& target, std::shared_ptr<const std::vector<grpc::ByteBuffer>> messages)
      : stub_(MakeChannel(target)), messages_(std::move(messages)), timeout_(target.timeout_s) {}

  ~GrpcStream() override {
    if (stream_) Fail();  // cancelled: the load is over, whatever the server still owes
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  bool Send(size_t i) override {
    if (!stream_ && !Open()) return false;
    stream_->Write((*messages_)[i], this);
    if (!WaitOrCancel()) return Fail();
    grpc::ByteBuffer response;
    stream_->Read(&response, this);
    if (!WaitOrCancel()) return Fail();
    std::vector<grpc::Slice> slices;
    if (!response.Dump(&slices).ok()) return false;
    return slices.empty() || slices[0].size() == 0 || slices[0].begin()[0] != kStreamErrorTag;
  }

 private:
  bool Open() {
    context_ = std::make_unique<grpc::ClientContext>();
    stream_ = stub_.PrepareCall(context_.get(), kStreamInfer, &cq_);
    stream_->StartCall(this);
    if (Wait(cq_)) return true;
    Close();
    return false;
  }

  // A stream has no per-message deadline: a message not answered within the timeout cancels
  // the stream (the next request opens another), so that no thread waits forever.
  bool WaitOrCancel() {
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(int64_t(timeout_ * 1e6));
    void* tag;
    bool ok = false;
    auto next = cq_.AsyncNext(&tag, &ok, deadline);
    if (next == grpc::CompletionQueue::TIMEOUT) {
      context_->TryCancel();
      Wait(cq_);  // the cancelled operation's event
      return false;
    }
    return next == grpc::CompletionQueue::GOT_EVENT && ok;
  }

  bool Fail() {
    context_->TryCancel();
    Close();
    return false;
  }

  void Close() {
    grpc::Status status;
    stream_->Finish(&status, this);
    Wait(cq_);
    stream_.reset();
    context_.reset();
  }

  grpc::GenericStub stub_;
  std::shared_ptr<const std::vector<grpc::ByteBuffer>> messages_;
  double timeout_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> stream_;
};

}  // namespace

SenderFactory GrpcUnarySenders(const Target& target, const std::vector<std::string>& messages) {
  auto buffers = ToBuffers(messages);
  return [target, buffers](size_t) { return std::make_unique<GrpcUnary>(target, buffers); };
}

SenderFactory GrpcStreamSenders(const Target& target, const std::vector<std::string>& messages) {
  auto buffers = ToBuffers(messages);
  return [target, buffers](size_t) { return std::make_unique<GrpcStream>(target, buffers); };
}

}  // namespace pyserve::loadgen
