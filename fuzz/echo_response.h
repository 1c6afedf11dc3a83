// A response that answers every input of a decoded request as an output of the same name,
// for the harnesses that run a response encoder on what the decoder accepted.
#pragma once

#include <utility>

#include "request.h"
#include "response.h"

inline pyserve::InferResponse EchoResponse(const pyserve::InferRequest& request) {
  pyserve::InferResponse response;
  for (const pyserve::TensorView& input : request.inputs) {
    pyserve::OutputTensor output;
    output.name = input.name;
    output.dtype = input.dtype;
    output.shape = input.shape;
    output.data = input.data;
    output.byte_size = input.byte_size;
    response.outputs.push_back(std::move(output));
  }
  return response;
}
