// A KServe v2 HTTP infer body as the native HTTP frontend takes it (http_server.cc): DecodeInfer
// with the request's Inference-Header-Content-Length. The input's first line is that header's
// value ("" = JSON only: the header is absent; anything else is passed as it is, digits or
// not), the rest is the body. An input with no newline in its first 24 bytes is a JSON-only
// body. What decodes is answered: an echo of the inputs through EncodeInfer.
#include <cstdint>
#include <string>
#include <string_view>

#include "echo_response.h"
#include "infer_json.h"
#include "small_limits.h"

using namespace pyserve;
using namespace pyserve::httpfront;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::string_view header_length;
  const size_t newline = input.substr(0, 24).find('\n');
  if (newline != std::string_view::npos) {
    header_length = input.substr(0, newline);
    input.remove_prefix(newline + 1);
  }
  // libFuzzer's copy of the input ends where its allocation ends: a read past the body is one
  // past the buffer, which ASan reports.
  HttpInfer infer;
  InferRequest request;
  if (!DecodeInfer(input, header_length, /*shared_memory=*/nullptr, &infer, &request)) return 0;

  const InferResponse response = EchoResponse(request);
  std::string answer;
  size_t answer_header_length = 0;
  (void)EncodeInfer("model", "1", infer, response, &answer, &answer_header_length);
  return 0;
}
