// ModelInferRequest and ModelInferResponse between the gRPC wire and the core. A request is
// parsed as views of its bytes; its tensors become views of raw_input_contents (or bytes
// converted from typed `contents`). A response is encoded with each output copied once,
// straight from the core's output memory.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "request.h"
#include "response.h"
#include "shared_memory.h"
#include "status.h"

namespace pyserve::grpcfront {

// InferParameter: one of bool, int64, string, double, uint64.
struct InferParam {
  enum Kind { kNone, kBool, kInt64, kString, kDouble, kUint64 } kind = kNone;
  bool bool_value = false;
  int64_t int_value = 0;
  uint64_t uint_value = 0;
  double double_value = 0;
  std::string_view string_value;
};
using ParamMap = std::vector<std::pair<std::string_view, InferParam>>;  // later keys win

// ModelInferRequest's fields, as views of the serialized message.
struct InferMessage {
  struct Input {
    std::string_view name, datatype;
    std::vector<int64_t> shape;
    bool has_contents = false;
    std::string_view contents;  // a serialized InferTensorContents
    ParamMap parameters;
  };
  struct Output {
    std::string_view name;
    ParamMap parameters;
  };
  std::string_view model_name, model_version, id;
  ParamMap parameters;
  std::vector<Input> inputs;
  std::vector<Output> outputs;
  std::vector<std::string_view> raw_input_contents;
};

// INVALID_ARG ("failed to parse ModelInferRequest: ...") for bytes that are not one.
Status ParseInferRequest(std::string_view bytes, InferMessage* message);

// Fills `request` from `message` (whose bytes must outlive it). `converted` keeps the bytes of
// inputs given as typed contents; tensors in shared memory are resolved in `shared_memory`
// (null: none registered) and their regions held by the request. Checks what Triton's gRPC
// frontend checks before the core.
Status DecodeInferRequest(const InferMessage& message, const SharedMemoryRegistry* shared_memory,
                          std::vector<std::string>* converted, InferRequest* request);

// A serialized ModelInferResponse (outputs written into shared memory carry no data: an empty
// raw_output_contents entry each, as Triton sends).
// On a stream, `final_response` adds Triton's `triton_final_response` parameter.
std::string EncodeInferResponse(std::string_view model_name, std::string_view model_version,
                                std::string_view id, const InferResponse& response,
                                std::optional<bool> final_response = std::nullopt);

// What precedes a serialized ModelInferResponse of that size to make it a serialized
// ModelStreamInferResponse (sent as two slices: the response is not copied again).
std::string StreamResponseHead(size_t infer_response_size);
// A serialized ModelStreamInferResponse carrying an error; a request's error also carries the
// request's id, model and version and `triton_final_response`, as Triton's do.
std::string StreamError(std::string_view message);
std::string StreamError(std::string_view message, std::string_view model_name,
                        std::string_view model_version, std::string_view id, bool final_response);

}  // namespace pyserve::grpcfront
