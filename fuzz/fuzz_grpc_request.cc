// A ModelInferRequest as the native gRPC frontend takes it (grpc_server.cc, Call::Infer): the
// message of ModelInfer or of each ModelStreamInfer read is parsed as views of its bytes, then
// decoded into an InferRequest (no shared-memory regions registered). What decodes is then
// answered as the stream answers it: an echo of the inputs encoded as a ModelInferResponse
// behind StreamResponseHead, which must read back as well-formed protobuf.
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "echo_response.h"
#include "infer_codec.h"
#include "small_limits.h"
#include "wire.h"

using namespace pyserve;
using namespace pyserve::grpcfront;

namespace {

// Every field of `bytes` (and of the messages nested in fields 5, the outputs) must read.
void CheckWellFormed(std::string_view bytes, int depth = 0) {
  wire::Reader r(bytes);
  while (r.Next()) {
    if (depth == 0 && r.field() == 5 && r.type() == wire::kLength) CheckWellFormed(r.bytes(), 1);
  }
  if (!r.error().empty()) {
    std::fprintf(stderr, "encoded response does not parse: %s\n", r.error().c_str());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  InferMessage message;
  Status status = ParseInferRequest(bytes, &message);
  if (!status.ok()) return 0;
  InferRequest request;
  std::vector<std::string> converted;
  status = DecodeInferRequest(message, /*shared_memory=*/nullptr, &converted, &request);
  if (!status.ok()) {
    (void)StreamError(status.message());
    return 0;
  }

  const InferResponse response = EchoResponse(request);
  const std::string encoded =
      EncodeInferResponse(message.model_name, message.model_version, message.id, response);
  CheckWellFormed(encoded);
  const std::string head = StreamResponseHead(encoded.size());
  CheckWellFormed(head + encoded);
  return 0;
}
