// What one inference message may declare, bounded before anything is allocated by it, and the
// one element count of a shape the data path uses (checked: dims are a client's numbers).
// Triton itself has no such bounds; the defaults accept whatever Triton's own clients and QA
// tests send, and a server sets them once, before it serves (`--request-limit`).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "status.h"

namespace pyserve {

struct RequestLimits {
  size_t inputs = 4096;        // input tensors per request
  size_t outputs = 4096;       // requested outputs per request
  size_t parameters = 4096;    // request, input and output parameters together
  size_t rank = 64;            // dimensions of a tensor's shape
  uint64_t elements = uint64_t{1} << 36;  // elements of one tensor (at most 2^60)
  size_t name_bytes = 65536;   // a tensor name, datatype, request id or parameter key
};

// The server-wide limits (set before serving; read without a lock).
const RequestLimits& Limits();
void SetLimits(const RequestLimits& limits);

// INVALID_ARG naming the limit a message passes ("too many inputs: the limit is 4096
// (--request-limit inputs=N)"); a parser that stops there does not know by how much.
Status OverLimit(const std::string& what, const char* key, uint64_t limit);

// INVALID_ARG for a tensor name, datatype, request id or parameter key past name_bytes.
Status CheckName(std::string_view name);

// Elements of `shape`: false when a dimension is negative or the product passes `limit`
// (so the product never wraps).
bool CountElements(const int64_t* dims, size_t rank, uint64_t limit, uint64_t* count);
inline bool CountElements(const std::vector<int64_t>& shape, uint64_t limit, uint64_t* count) {
  return CountElements(shape.data(), shape.size(), limit, count);
}
inline bool CountElements(const std::vector<int64_t>& shape, uint64_t* count) {
  return CountElements(shape.data(), shape.size(), UINT64_MAX, count);
}

}  // namespace pyserve
