// ResponseSender: a decoupled model's way back to one request's client. A decoupled model
// sends any number of responses per request, then exactly one final completion, from any
// thread and after the batch that carried the request has ended. The sender keeps what
// delivering needs (sink, tag, owner and held memory, the outputs asked for), so the request's
// bytes and its frontend's call stay alive until the final completion.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "model_spec.h"
#include "request.h"
#include "response.h"
#include "status.h"

namespace pyserve {

class ResponseSender {
 public:
  // The model version the request belongs to: it counts the request as in flight until
  // Closed (Stop waits for it) and records how it ended.
  class Host {
   public:
    virtual ~Host() = default;
    virtual const ModelSpec& Spec() const = 0;
    virtual void Closed(ResponseSender& sender, const Status& final_status) = 0;
    // The `index`th response of a request went out: sent at `start_ns` (the end of the one
    // before, or the start of the batch), its outputs taken at `output_ns` (0: it had none),
    // handed to the sink by `end_ns`.
    virtual void Responded(uint64_t index, const Status& status, bool empty, uint64_t start_ns,
                           uint64_t output_ns, uint64_t end_ns) = 0;
  };

  ResponseSender(std::shared_ptr<Host> host, const InferRequest& request);
  // A sender dropped before its final response ends its request with an error.
  ~ResponseSender();
  ResponseSender(const ResponseSender&) = delete;
  ResponseSender& operator=(const ResponseSender&) = delete;

  // One response: `outputs` (null: none, a bare final flag) filtered to what the request
  // asked for as batch outputs are, or `error`. Refused once the final one was sent.
  Status Send(const std::vector<OutputTensor>* outputs, const Status& error, bool final);
  // Ends the request with `status` unless it has ended (a failed execute, Stop's timeout).
  void Close(const Status& status);

  // Implicit state of a decoupled model's request: each response's state outputs go into
  // `state` (Await'ed here) until the final response settles it; ReleaseState settles it
  // earlier, when the backend releases the request for RESCHEDULE.
  void KeepState(std::shared_ptr<SequenceState> state);
  void ReleaseState();

  const ModelSpec& spec() const { return host_->Spec(); }
  bool Cancelled() const { return cancelled_ != nullptr && cancelled_->load(std::memory_order_relaxed); }
  bool IsClosed() const { return closed_.load(std::memory_order_acquire); }
  uint64_t enqueue_ns() const { return enqueue_ns_; }
  // Responses sent with outputs (or an error), the final one included if it had any.
  uint64_t responses() const { return responses_; }

 private:
  void Deliver(InferResponse response, bool final, bool empty, uint64_t output_ns);  // mutex_ held

  std::shared_ptr<Host> host_;
  uint64_t tag_;
  ResponseSink* sink_;
  std::shared_ptr<void> owner_;
  std::vector<std::shared_ptr<const void>> held_;
  std::vector<RequestedOutput> outputs_;
  std::shared_ptr<SequenceState> state_;  // guarded by mutex_
  const std::atomic<bool>* cancelled_;  // lives in owner_
  uint64_t enqueue_ns_;
  std::mutex mutex_;  // one response at a time, in the order they are sent
  std::atomic<bool> closed_{false};
  uint64_t responses_ = 0;  // guarded by mutex_, as the rest below
  uint64_t index_ = 0;      // responses delivered, empty ones included
  uint64_t last_ns_;        // when the last response went out (first: the sender's creation)
};

}  // namespace pyserve
