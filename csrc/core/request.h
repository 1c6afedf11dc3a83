// The request path's data: views of tensors the core does not own, requests that carry them,
// and the batch an instance executes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pyserve {

// Values are those of Triton's model_config.proto DataType enum.
enum class DataType : uint8_t {
  kInvalid = 0,
  kBool = 1,
  kUint8 = 2,
  kUint16 = 3,
  kUint32 = 4,
  kUint64 = 5,
  kInt8 = 6,
  kInt16 = 7,
  kInt32 = 8,
  kInt64 = 9,
  kFp16 = 10,
  kFp32 = 11,
  kFp64 = 12,
  kBytes = 13,  // length-prefixed elements: no fixed element size
  kBf16 = 14,
};

// Bytes per element; 0 for BYTES and invalid types.
size_t ElementSize(DataType dtype);

// A view of a tensor's bytes. The owner (the frontend that received them) keeps the memory
// alive until the request's completion has been delivered.
struct TensorView {
  std::string name;
  DataType dtype = DataType::kInvalid;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t byte_size = 0;
};

struct InferRequest {
  uint64_t id = 0;  // the frontend's key for delivering the completion
  std::vector<TensorView> inputs;
  uint64_t enqueue_ns = 0;  // steady clock, stamped by the scheduler
};

// What one model instance runs at once. `inputs` are the batch's tensors: for a batch of a
// single request they alias that request's bytes (no copy).
struct Batch {
  std::vector<std::unique_ptr<InferRequest>> requests;
  std::vector<TensorView> inputs;
  int instance = 0;
};

}  // namespace pyserve
