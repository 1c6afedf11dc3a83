// The generate extension's request mapping (csrc/http/generate.cc), without a server: keys
// that name inputs become tensors shaped by the input's dims, the rest request parameters;
// what it does not convert is left to the shell (false), never half-built.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "generate.h"

using namespace pyserve;
using namespace pyserve::httpfront;

namespace {

ModelSpec Spec() {
  ModelSpec spec;
  spec.name = "g";
  spec.max_batch_size = 4;
  spec.inputs = {{"X", DataType::kFp32, {-1, 2}}, {"TEXT", DataType::kBytes, {1}}};
  return spec;
}

bool Decode(const std::string& body, PendingGenerate* pending, InferRequest* request) {
  pending->body = body;
  return DecodeGenerate(Spec(), pending, request);
}

}  // namespace

TEST(Generate, KeysAreInputsOrParameters) {
  PendingGenerate pending;
  InferRequest request;
  ASSERT_TRUE(Decode(R"({"id":"7","X":[1,2,3,4],"TEXT":"hi","parameters":{"k":3,"b":true}})",
                     &pending, &request));
  EXPECT_EQ(request.request_id, "7");
  ASSERT_EQ(request.inputs.size(), 2u);
  EXPECT_EQ(request.inputs[0].name, "X");
  EXPECT_EQ(request.inputs[0].shape, (std::vector<int64_t>{1, 2, 2}));  // batch 1, the rest 2x2
  float values[4];
  ASSERT_EQ(request.inputs[0].byte_size, sizeof(values));
  std::memcpy(values, request.inputs[0].data, sizeof(values));
  EXPECT_EQ(values[3], 4.0f);
  EXPECT_EQ(request.inputs[1].shape, (std::vector<int64_t>{1, 1}));
  ASSERT_EQ(request.parameters.size(), 3u);  // "id" is a parameter too, as Triton has it
  EXPECT_EQ(request.parameters[0].key, "id");
  EXPECT_EQ(request.parameters[1].key, "k");
  EXPECT_EQ(request.parameters[1].int_value, 3);
  EXPECT_TRUE(request.parameters[2].bool_value);
}

TEST(Generate, WhatItDoesNotConvertGoesToTheShell) {
  for (const char* body : {
           R"({"X":[1,2,3]})",            // does not fill the fixed dimension
           R"({"X":[[1,2],[3,4]]})",      // more than one dimension
           R"({"X":["a","b"]})",          // not numbers
           R"({"p":[1]})",                // a parameter of no parameter type
           R"({"parameters":[1]})",       // parameters that are not an object
           R"({"id":7})",                 // an id that is not a string
           R"([1,2])", R"({"X":)", ""}) { // not an object, not JSON
    PendingGenerate pending;
    InferRequest request;
    EXPECT_FALSE(Decode(body, &pending, &request)) << body;
  }
}
