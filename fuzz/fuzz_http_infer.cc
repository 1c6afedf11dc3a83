// A KServe v2 HTTP infer body as the native HTTP frontend takes it (routes.cc): DecodeInfer
// with the request's Inference-Header-Content-Length, or DecodeRawInfer when that header makes
// it a raw binary request (against one of a few model specs, picked by the body's size). The
// input's first line is that header's value ("" = JSON only: the header is absent; anything
// else is passed as it is, digits or not), the rest is the body. An input with no newline in
// its first 24 bytes is a JSON-only body. What decodes is answered: an echo of the inputs
// through EncodeInfer.
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "echo_response.h"
#include "infer_json.h"
#include "small_limits.h"

using namespace pyserve;
using namespace pyserve::httpfront;

namespace {

ModelSpec RawSpec(uint32_t max_batch_size, std::vector<std::pair<DataType, std::vector<int64_t>>> inputs) {
  ModelSpec spec;
  spec.name = "model";
  spec.max_batch_size = max_batch_size;
  for (auto& [dtype, dims] : inputs) {
    TensorSpec& input = spec.inputs.emplace_back();
    input.name = "X" + std::to_string(spec.inputs.size());
    input.dtype = dtype;
    input.dims = std::move(dims);
  }
  return spec;
}

}  // namespace

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
  if (IsRawRequest(input, newline != std::string_view::npos, header_length)) {
    static const ModelSpec kSpecs[] = {RawSpec(8, {{DataType::kFp32, {-1}}}),
                                       RawSpec(0, {{DataType::kInt16, {2, -1}}}),
                                       RawSpec(0, {{DataType::kInt8, {0, -1}}}),
                                       RawSpec(4, {{DataType::kBytes, {1}}}),
                                       RawSpec(0, {{DataType::kInt32, {-1, -1}}}),
                                       RawSpec(0, {{DataType::kInt32, {1}}, {DataType::kInt32, {1}}})};
    if (!DecodeRawInfer(input, kSpecs[input.size() % std::size(kSpecs)], &infer, &request).ok()) return 0;
  } else if (!DecodeInfer(input, header_length, /*shared_memory=*/nullptr, &infer, &request)) {
    return 0;
  }

  const InferResponse response = EchoResponse(request);
  std::string answer;
  size_t answer_header_length = 0;
  (void)EncodeInfer("model", "1", infer, response, &answer, &answer_header_length);
  return 0;
}
