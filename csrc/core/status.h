// Status: the error currency of the core. Codes mirror Triton's so that frontends map
// them to gRPC codes and HTTP statuses through one table.
#pragma once

#include <string>
#include <utility>

namespace pyserve {

enum class StatusCode {
  kOk = 0,
  kInvalidArg,
  kNotFound,
  kUnavailable,
  kInternal,
  kUnsupported,
  kAlreadyExists,
  kCancelled,
};

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status OK() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

}  // namespace pyserve
