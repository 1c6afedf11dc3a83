// The frontends' codecs between the wire and the core, without their servers: the gRPC
// protobuf wire codec (csrc/grpc/infer_codec.cc) and the KServe v2 JSON codec
// (csrc/http/infer_json.cc); and the core's checks of what they decode (validate.cc,
// request_limits.cc).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "infer_codec.h"
#include "compression.h"
#include "infer_json.h"
#include "request_limits.h"
#include "status_matchers.h"
#include "validate.h"
#include "wire.h"

using namespace pyserve;

// An empty message is a valid ModelInferRequest with every field at its default.
TEST(GrpcCodec, EmptyRequestParsesWithNoInputs) {
  grpcfront::InferMessage message;
  ASSERT_OK(grpcfront::ParseInferRequest("", &message));
  EXPECT_TRUE(message.model_name.empty());
  EXPECT_TRUE(message.inputs.empty());
  EXPECT_TRUE(message.outputs.empty());
  EXPECT_TRUE(message.raw_input_contents.empty());
}

// ---------------------------------------------------------------- the gRPC wire, as protobuf

namespace {

namespace wire = grpcfront::wire;

std::string Key(uint64_t field, uint32_t type) {
  std::string out;
  wire::PutVarint(&out, field << 3 | type);
  return out;
}

std::string Field(uint32_t number, std::string_view data) {
  std::string out;
  wire::PutBytes(&out, number, data);
  return out;
}

std::string Varint(uint64_t value) {
  std::string out;
  wire::PutVarint(&out, value);
  return out;
}

// InferInputTensor INPUT (INT32, shape [1, 4]) with `extra` fields appended.
std::string Input(std::string_view name, std::string_view extra = "") {
  return Field(1, name) + Field(2, "INT32") + Field(3, Varint(1) + Varint(4)) + std::string(extra);
}

// A map<string, InferParameter> entry holding int64_param.
std::string IntParameter(std::string_view key, int64_t value) {
  return Field(1, key) + Field(2, Key(2, wire::kVarint) + Varint(static_cast<uint64_t>(value)));
}

// Restores the default limits when a test that changed them ends.
class LimitsGuard {
 public:
  explicit LimitsGuard(const RequestLimits& limits) { SetLimits(limits); }
  ~LimitsGuard() { SetLimits(RequestLimits{}); }
};

Status Parse(const std::string& bytes, grpcfront::InferMessage* message) {
  return grpcfront::ParseInferRequest(bytes, message);
}

}  // namespace

TEST(GrpcCodec, FieldNumberPast29BitsIsRefused) {
  grpcfront::InferMessage message;
  // Field (2^32 | 3): its low 32 bits name the request id.
  const Status status = Parse(Key((uint64_t{1} << 32) | 3, wire::kLength) + Varint(1) + "x",
                              &message);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArg);
  EXPECT_TRUE(message.id.empty());
  // The largest field number is an unknown field, skipped.
  EXPECT_OK(Parse(Key(wire::kMaxField, wire::kVarint) + Varint(1), &message));
}

TEST(GrpcCodec, FieldsOfAnotherWireTypeAreSkipped) {
  grpcfront::InferMessage message;
  // A shape entry as fixed32, an input as a varint, a parameter as fixed64: unknown fields.
  const std::string fixed32_dim = Key(3, wire::kFixed32) + std::string("\x09\0\0\0", 4);
  const std::string bytes = Field(5, Input("IN", fixed32_dim)) +
                            Key(5, wire::kVarint) + Varint(7) +
                            Key(4, wire::kFixed64) + std::string(8, '\0');
  ASSERT_OK(Parse(bytes, &message));
  ASSERT_EQ(message.inputs.size(), 1u);
  EXPECT_EQ(message.inputs[0].shape, (std::vector<int64_t>{1, 4}));
  EXPECT_TRUE(message.parameters.empty());
}

TEST(GrpcCodec, BytesContentsOfAnotherWireTypeAreSkipped) {
  const std::string contents = Field(8, "one") + Key(8, wire::kVarint) + Varint(5) + Field(8, "two");
  const std::string input = Field(1, "TEXT") + Field(2, "BYTES") + Field(3, Varint(2)) +
                            Field(5, contents);
  grpcfront::InferMessage message;
  const std::string bytes = Field(5, input);
  ASSERT_OK(Parse(bytes, &message));
  std::vector<std::string> converted;
  InferRequest request;
  ASSERT_OK(grpcfront::DecodeInferRequest(message, nullptr, &converted, &request));
  ASSERT_EQ(converted.size(), 1u);
  EXPECT_EQ(converted[0], std::string("\3\0\0\0one\3\0\0\0two", 14));
}

TEST(GrpcCodec, LimitsAreCountedWhileParsing) {
  RequestLimits limits;
  limits.inputs = 2;
  limits.parameters = 3;
  limits.rank = 2;
  limits.name_bytes = 8;
  LimitsGuard guard(limits);
  grpcfront::InferMessage message;
  EXPECT_OK(Parse(Field(5, Input("A")) + Field(5, Input("B")), &message));

  message = {};
  Status status = Parse(Field(5, Input("A")) + Field(5, Input("B")) + Field(5, Input("C")), &message);
  EXPECT_EQ(status.message(), "too many inputs: the limit is 2 (--request-limit inputs=N)");
  EXPECT_EQ(message.inputs.size(), 2u);  // nothing held past the limit

  message = {};
  std::string parameters;  // two on the request, two on its input: four in all
  for (const char* key : {"a", "b"}) parameters += Field(4, IntParameter(key, 1));
  status = Parse(parameters + Field(5, Input("A", Field(4, IntParameter("c", 1)) +
                                                      Field(4, IntParameter("d", 1)))),
                 &message);
  EXPECT_EQ(status.message(), "too many parameters: the limit is 3 (--request-limit parameters=N)");

  message = {};
  status = Parse(Field(5, Field(1, "A") + Field(3, Varint(1) + Varint(2) + Varint(3))), &message);
  EXPECT_EQ(status.message(), "too many dimensions in a shape: the limit is 2 (--request-limit rank=N)");

  message = {};
  status = Parse(Field(5, Input("NINECHARS")), &message);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArg);
  EXPECT_NE(status.message().find("name_bytes"), std::string::npos) << status.message();
}

// A repeated parameter key: the last one wins, whether the keys are scanned (few) or hashed.
TEST(GrpcCodec, RepeatedParameterKeysKeepTheLast) {
  for (int count : {4, 1000}) {
    std::string bytes;
    for (int i = 0; i < count; ++i) bytes += Field(4, IntParameter("k" + std::to_string(i % 3), i));
    grpcfront::InferMessage message;
    ASSERT_OK(Parse(bytes, &message));
    std::vector<std::string> converted;
    InferRequest request;
    ASSERT_OK(grpcfront::DecodeInferRequest(message, nullptr, &converted, &request));
    ASSERT_EQ(request.parameters.size(), 3u) << count;
    for (const auto& p : request.parameters) {
      const int remainder = std::stoi(p.key.substr(1));
      int last = count - 1;
      while (last % 3 != remainder) --last;
      EXPECT_EQ(p.int_value, last) << p.key;
    }
  }
}

// sequence_id (int64 or string), sequence_start and sequence_end are the server's, in Triton's
// words when their types are wrong; they do not reach the model's parameters.
TEST(GrpcCodec, SequenceParametersSetTheCorrelationIdAndFlags) {
  auto parameter = [](std::string_view key, const std::string& value) {
    return Field(4, Field(1, key) + Field(2, value));
  };
  const std::string yes = Key(1, wire::kVarint) + Varint(1);
  auto decode = [](const std::string& bytes, InferRequest* request) {
    grpcfront::InferMessage message;
    Status status = Parse(bytes, &message);
    std::vector<std::string> converted;
    return status.ok() ? grpcfront::DecodeInferRequest(message, nullptr, &converted, request)
                       : status;
  };
  InferRequest numbered;
  ASSERT_OK(decode(Field(4, IntParameter("sequence_id", 42)) + parameter("sequence_start", yes),
                   &numbered));
  EXPECT_EQ(numbered.correlation_id.number, 42u);
  EXPECT_FALSE(numbered.correlation_id.is_text);
  EXPECT_EQ(numbered.flags, uint32_t{kSequenceStart});
  EXPECT_TRUE(numbered.parameters.empty());

  InferRequest text;
  ASSERT_OK(decode(parameter("sequence_id", Field(3, "abc")) + parameter("sequence_end", yes),
                   &text));
  EXPECT_EQ(text.correlation_id.text, "abc");
  EXPECT_TRUE(text.correlation_id.is_text);
  EXPECT_EQ(text.flags, uint32_t{kSequenceEnd});

  InferRequest refused;
  Status status = decode(parameter("sequence_id", Key(5, wire::kVarint) + Varint(3)), &refused);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArg);
  EXPECT_EQ(status.message(),
            "invalid value type for 'sequence_id' parameter, expected int64_param or "
            "string_param.");
  status = decode(Field(4, IntParameter("sequence_end", 1)), &refused);
  EXPECT_EQ(status.message(), "invalid value type for 'sequence_end' parameter, expected bool_param.");
  status = decode(parameter("sequence_id", Field(3, std::string(129, 'x'))), &refused);
  EXPECT_EQ(status.code(), StatusCode::kUnsupported);
  EXPECT_EQ(status.message(), "string correlation ID cannot be longer than 128 characters");
}

TEST(JsonCodec, SequenceParametersSetTheCorrelationIdAndFlags) {
  auto decode = [](const std::string& parameters, InferRequest* request) {
    httpfront::HttpInfer infer;
    return httpfront::DecodeInfer("{\"inputs\":[],\"parameters\":" + parameters + "}", "", nullptr,
                                  &infer, request);
  };
  InferRequest numbered;
  ASSERT_TRUE(decode(R"({"sequence_id":18446744073709551615,"sequence_start":true})", &numbered));
  EXPECT_EQ(numbered.correlation_id.number, 18446744073709551615u);
  EXPECT_EQ(numbered.flags, uint32_t{kSequenceStart});
  EXPECT_TRUE(numbered.parameters.empty());
  InferRequest text;
  ASSERT_TRUE(decode(R"({"sequence_id":"abc","sequence_end":true,"sequence_start":false})", &text));
  EXPECT_EQ(text.correlation_id.text, "abc");
  EXPECT_EQ(text.flags, uint32_t{kSequenceEnd});
  // What Triton refuses is left to the Python frontend, which words it.
  InferRequest other;
  for (const char* refused : {R"({"sequence_id":-1})", R"({"sequence_id":1.5})",
                              R"({"sequence_start":1})"}) {
    EXPECT_FALSE(decode(refused, &other)) << refused;
  }
  EXPECT_FALSE(decode("{\"sequence_id\":\"" + std::string(129, 'x') + "\"}", &other));
}

// ------------------------------------------------------------------------------ validation

namespace {

ModelSpec AnyShape() {  // INT32 of rank 3, any dims; no batching
  ModelSpec spec;
  spec.name = "any";
  TensorSpec input;
  input.name = "IN";
  input.dtype = DataType::kInt32;
  input.dims = {-1, -1, -1};
  spec.inputs = {input};
  return spec;
}

void SetShape(InferRequest* request, std::vector<int64_t> shape, size_t byte_size) {
  static const std::vector<uint8_t> bytes(1024);
  TensorView view;
  view.name = "IN";
  view.dtype = DataType::kInt32;
  view.shape = std::move(shape);
  view.data = bytes.data();
  view.byte_size = byte_size;
  request->inputs = {std::move(view)};
}

}  // namespace

TEST(Validate, ElementCountsDoNotWrap) {
  int64_t batch = 0;
  // 2^59 * 2^60 * 2^62 is 0 modulo 2^64: it matched an empty tensor.
  InferRequest request;
  SetShape(&request, {int64_t{1} << 59, int64_t{1} << 60, int64_t{1} << 62}, 0);
  Status status = ValidateRequest(AnyShape(), request, &batch);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArg);
  EXPECT_NE(status.message().find("elements=N"), std::string::npos) << status.message();
  SetShape(&request, {2, 4, 8}, 256);
  EXPECT_OK(ValidateRequest(AnyShape(), request, &batch));
  SetShape(&request, {0, int64_t{1} << 62, 3}, 0);
  EXPECT_OK(ValidateRequest(AnyShape(), request, &batch));
}

TEST(Validate, DuplicateInputsAreFoundInLinearTime) {
  ModelSpec spec = AnyShape();
  InferRequest request;
  for (int i = 0; i < 200000; ++i) {
    TensorView view;
    view.name = "IN" + std::to_string(i);
    request.inputs.push_back(std::move(view));
  }
  request.inputs.push_back(request.inputs[7]);
  RequestLimits limits;
  limits.inputs = 1 << 20;
  LimitsGuard guard(limits);
  int64_t batch = 0;
  const Status status = ValidateRequest(spec, request, &batch);
  EXPECT_EQ(status.message(), "[request id: <id_unknown>] input 'IN7' already exists in request");
}

TEST(CountElements, RefusesNegativeDimsAndOverflow) {
  uint64_t count = 0;
  EXPECT_TRUE(CountElements({}, &count));
  EXPECT_EQ(count, 1u);
  EXPECT_TRUE(CountElements({3, 0, int64_t{1} << 62}, &count));
  EXPECT_EQ(count, 0u);
  EXPECT_FALSE(CountElements({-1, 4}, &count));
  EXPECT_FALSE(CountElements({int64_t{1} << 32, int64_t{1} << 32}, &count));
  EXPECT_FALSE(CountElements({1 << 10, 1 << 10}, (1 << 20) - 1, &count));
}

// ------------------------------------------------- the KServe v2 HTTP details Triton's clients use

// Triton's http_server.cc (HttpCodeFromError): every status code to its HTTP status.
TEST(HttpCodec, StatusPerCodeIsTritons) {
  const std::pair<StatusCode, int> table[] = {
      {StatusCode::kInvalidArg, 400}, {StatusCode::kNotFound, 404},   {StatusCode::kUnavailable, 503},
      {StatusCode::kInternal, 500},   {StatusCode::kUnsupported, 501}, {StatusCode::kAlreadyExists, 400},
      {StatusCode::kCancelled, 400},
  };
  for (const auto& [code, status] : table) EXPECT_EQ(httpfront::HttpStatus(code), status);
}

// Inference-Header-Content-Length as atoi reads it: 0, or text that is no number, is raw.
TEST(HttpCodec, RawRequestsAsTritonReadsTheHeader) {
  EXPECT_TRUE(httpfront::IsRawRequest("abcd", true, "0"));
  EXPECT_TRUE(httpfront::IsRawRequest("abcd", true, " 00x"));
  EXPECT_TRUE(httpfront::IsRawRequest("abcd", true, "abc"));
  EXPECT_TRUE(httpfront::IsRawRequest("abcd", true, ""));
  EXPECT_TRUE(httpfront::IsRawRequest("", false, ""));  // no header, no body
  EXPECT_FALSE(httpfront::IsRawRequest("{}", false, ""));
  EXPECT_FALSE(httpfront::IsRawRequest("abcd", true, "2"));
  EXPECT_FALSE(httpfront::IsRawRequest("abcd", true, " -1"));
}

namespace {

ModelSpec RawSpec(uint32_t max_batch_size, std::vector<TensorSpec> inputs) {
  ModelSpec spec;
  spec.name = "m";
  spec.max_batch_size = max_batch_size;
  spec.inputs = std::move(inputs);
  return spec;
}

TensorSpec Input(DataType dtype, std::vector<int64_t> dims) {
  TensorSpec t;
  t.name = "X";
  t.dtype = dtype;
  t.dims = std::move(dims);
  return t;
}

Status DecodeRaw(std::string_view body, const ModelSpec& spec, std::vector<int64_t>* shape,
                 std::string* bytes = nullptr) {
  httpfront::HttpInfer infer;
  InferRequest request;
  Status status = httpfront::DecodeRawInfer(body, spec, &infer, &request);
  if (status.ok()) {
    EXPECT_EQ(request.inputs.size(), 1u);
    EXPECT_EQ(request.inputs[0].name, "X");
    EXPECT_TRUE(infer.binary_default);  // every output answered as binary, as Triton does
    *shape = request.inputs[0].shape;
    if (bytes) bytes->assign(reinterpret_cast<const char*>(request.inputs[0].data), request.inputs[0].byte_size);
  }
  return status;
}

void ExpectInvalid(const Status& status, const std::string& message) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArg);
  EXPECT_EQ(status.message(), message);
}

}  // namespace

TEST(HttpCodec, RawInputShapeIsDeducedAsTritonDeducesIt) {
  std::vector<int64_t> shape;
  ASSERT_OK(DecodeRaw(std::string(12, '\0'), RawSpec(8, {Input(DataType::kFp32, {-1})}), &shape));
  EXPECT_EQ(shape, (std::vector<int64_t>{1, 3}));
  ASSERT_OK(DecodeRaw(std::string(8, '\0'), RawSpec(0, {Input(DataType::kInt16, {2, -1})}), &shape));
  EXPECT_EQ(shape, (std::vector<int64_t>{2, 2}));
  ASSERT_OK(DecodeRaw("", RawSpec(0, {Input(DataType::kInt16, {0, -1})}), &shape));  // no division by 0
  EXPECT_EQ(shape, (std::vector<int64_t>{0, 0}));
  std::string bytes;
  ASSERT_OK(DecodeRaw("hello", RawSpec(4, {Input(DataType::kBytes, {1})}), &shape, &bytes));
  EXPECT_EQ(shape, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(bytes, std::string("\x05\0\0\0hello", 9));  // one element, length-prefixed
}

TEST(HttpCodec, RawInputRefusalsAreTritons) {
  std::vector<int64_t> shape;
  const std::string prefix = "[request id: <id_unknown>] ";
  ExpectInvalid(DecodeRaw(std::string(11, '\0'), RawSpec(8, {Input(DataType::kFp32, {-1})}), &shape),
                prefix + "input byte size mismatch for input 'raw_input' for model 'm'. Expected 8, got 11");
  ExpectInvalid(DecodeRaw("", RawSpec(0, {Input(DataType::kInt32, {2, 3})}), &shape),
                prefix + "input byte size mismatch for input 'raw_input' for model 'm'. Expected 24, got 0");
  ExpectInvalid(DecodeRaw("", RawSpec(0, {Input(DataType::kInt32, {1}), Input(DataType::kInt32, {1})}), &shape),
                prefix + "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in 'm' "
                         "model configuration");
  ExpectInvalid(DecodeRaw("", RawSpec(0, {Input(DataType::kFp32, {-1, -1})}), &shape),
                prefix + "The shape of the raw input 'X' can not be deduced because there are more than one "
                         "variable-sized dimension");
  ExpectInvalid(DecodeRaw("a", RawSpec(0, {Input(DataType::kBytes, {-1})}), &shape),
                prefix + "For BYTE datatype raw input 'X', the model must have input shape [1]");
}

// A JSON header without "inputs" is left to the shell, which words Triton's refusal.
TEST(HttpCodec, InputsAreRequired) {
  httpfront::HttpInfer infer;
  InferRequest request;
  EXPECT_FALSE(httpfront::DecodeInfer("{}", "", nullptr, &infer, &request));
}

// Accept-Encoding read as Triton's CompressionTypeUsed reads it ("" for identity).
TEST(HttpCodec, ResponseEncodingIsTritons) {
  const std::pair<const char*, const char*> table[] = {
      {"gzip", "gzip"}, {"deflate", "deflate"}, {"gzip, deflate", "gzip"}, {"deflate, gzip", "deflate"},
      {"gzip;q=0.5, deflate", "deflate"}, {"gzip;q=0", ""}, {"identity, gzip", ""},
      {"gzip;q=0.5, identity;q=0.6", ""}, {"*", ""}, {"GZIP", ""}, {"gzip ;q=1", ""}, {"x-gzip", ""},
      {"br, deflate;q=0.1", "deflate"}, {"gzip;q=abc, deflate;q=0.2", "deflate"},
      {"gzip; q=0.5, deflate;q=0.6", "deflate"}, {" gzip", "gzip"}, {"", ""}, {",,", ""},
      {"gzip;q=1e999, deflate;q=0.1", "deflate"},  // out of a double's range: skipped
  };
  for (const auto& [accept, encoding] : table) {
    EXPECT_STREQ(httpfront::ResponseEncoding(accept), encoding) << "Accept-Encoding: " << accept;
  }
}
