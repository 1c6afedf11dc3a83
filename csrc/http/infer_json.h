// KServe v2 HTTP inference bodies (JSON, with Triton's binary tensor extension) between the
// wire and the core. The decoder takes the common, well-formed cases; anything unusual (a
// malformed body, data of a type it does not convert, a compressed body) is left to the Python
// frontend, which words every refusal as Triton does.
#pragma once

#include <rapidjson/document.h>

#include <string>
#include <string_view>
#include <vector>

#include "model_spec.h"
#include "request.h"
#include "response.h"
#include "shared_memory.h"
#include "status.h"

namespace pyserve::httpfront {

// What the response needs to know of its request.
struct HttpInfer {
  rapidjson::Document header;
  std::vector<std::string> converted;  // bytes of inputs given as JSON `data`
  std::string id;
  bool binary_default = false;                   // binary_data_output
  std::vector<std::pair<std::string, bool>> binary;  // per requested output: binary_data
};

// True when `body` decodes into `request` (whose inputs view `body`, `infer->converted` and
// the shared-memory regions the request holds, resolved in `shared_memory`, which may be
// null); false when the Python frontend must take the request.
bool DecodeInfer(std::string_view body, std::string_view header_length,
                 const SharedMemoryRegistry* shared_memory, HttpInfer* infer,
                 InferRequest* request);

// Whether a request is a raw binary one, as Triton reads Inference-Header-Content-Length
// (atoi: text that is no number reads 0): the header says 0, or it is absent and the body empty.
bool IsRawRequest(std::string_view body, bool has_header_length, std::string_view header_length);

// A raw binary request: `body` is the bytes of the model's one input, whose shape is deduced
// from the config as Triton deduces it (the batch dimension 1, a variable dimension from the
// size; a BYTES input is one element); every output is answered as binary. A body that cannot
// be the input is refused with Triton's texts.
Status DecodeRawInfer(std::string_view body, const ModelSpec& spec, HttpInfer* infer,
                      InferRequest* request);

// The response body; `header_length` is set when binary outputs follow the JSON (else 0). An
// error (FP16 or BF16 asked for as JSON) is returned as a failed status.
Status EncodeInfer(const std::string& model_name, const std::string& model_version,
                   const HttpInfer& infer, const InferResponse& response, std::string* body,
                   size_t* header_length);

// Shared with the generate route (generate.cc).
// A JSON value, or an array of them, as tensor bytes of `dtype` appended to `out`, counting
// the elements; false for what the Python frontend must judge.
bool JsonToTensor(const rapidjson::Value& value, DataType dtype, std::string* out, int64_t* count);
// A request parameter from a JSON value; false for a type the core does not carry.
bool JsonToParameter(const char* key, const rapidjson::Value& value, Parameter* parameter);
// An output's elements as a JSON array.
std::string OutputJson(const OutputTensor& tensor);

// {"error": message}
std::string ErrorBody(const std::string& message);

// Triton's HTTP status for a status code.
int HttpStatus(StatusCode code);

}  // namespace pyserve::httpfront
