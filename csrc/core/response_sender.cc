#include "response_sender.h"

#include <cstdio>
#include <exception>
#include <utility>

#include "outputs.h"
#include "sequence_state.h"

namespace pyserve {

ResponseSender::ResponseSender(std::shared_ptr<Host> host, const InferRequest& request)
    : host_(std::move(host)),
      tag_(request.id),
      sink_(request.sink),
      owner_(request.owner),
      held_(request.held),
      outputs_(request.outputs),
      cancelled_(request.cancelled),
      enqueue_ns_(request.enqueue_ns),
      last_ns_(SteadyNowNs()) {}

ResponseSender::~ResponseSender() {
  Close(Status(StatusCode::kInternal,
               "the model released the response sender of a request without sending the "
               "final response"));
}

Status ResponseSender::Send(const std::vector<OutputTensor>* outputs, const Status& error,
                            bool final) {
  if (outputs == nullptr && error.ok() && !final) {
    return Status(StatusCode::kInvalidArg,
                  "Inference Response object must be provided when the response flags is set "
                  "to zero.");
  }
  const uint64_t output_ns = SteadyNowNs();
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_.load(std::memory_order_acquire)) {
    return Status(StatusCode::kInternal, "Unable to send response. Response sender has been closed.");
  }
  InferResponse response;
  if (!error.ok()) {
    response.status = error;
  } else if (outputs != nullptr) {
    if (state_) state_->UpdateFrom(*outputs);
    RespondWith(host_->Spec(), outputs_, *outputs, &response);
  }
  const bool empty = outputs == nullptr && error.ok();
  Deliver(std::move(response), final, empty, empty || !error.ok() ? 0 : output_ns);
  return Status::OK();
}

void ResponseSender::Close(const Status& status) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_.load(std::memory_order_acquire)) return;
  Deliver(InferResponse{status, {}}, true, false, 0);
}

void ResponseSender::KeepState(std::shared_ptr<SequenceState> state) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_.load(std::memory_order_acquire)) return;
  state->Await();
  state_ = std::move(state);
}

void ResponseSender::ReleaseState() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (state_) state_->Settle();
  state_.reset();
}

void ResponseSender::Deliver(InferResponse response, bool final, bool empty, uint64_t output_ns) {
  if (!empty) ++responses_;
  const Status status = response.status;
  std::vector<Completion> completions;
  Completion completion{tag_, owner_, std::move(response), final};
  completion.empty = empty;
  completions.push_back(std::move(completion));
  if (final) closed_.store(true, std::memory_order_release);
  try {  // sinks do not throw; should one still, the sending thread (the model's) goes on
    sink_->Deliver(completions);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pyserve: a response sink failed: %s\n", e.what());
  }
  if (final && state_) {  // after the final response: the next request's answers follow it
    state_->Settle();
    state_.reset();
  }
  const uint64_t end_ns = SteadyNowNs();
  host_->Responded(index_++, status, empty, last_ns_, output_ns, end_ns);
  last_ns_ = end_ns;
  if (final) {
    host_->Closed(*this, status);
    owner_.reset();
    held_.clear();
  }
}

}  // namespace pyserve
