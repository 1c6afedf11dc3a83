#include "request_limits.h"

namespace pyserve {

namespace {
RequestLimits& Current() {
  static RequestLimits limits;
  return limits;
}
}  // namespace

const RequestLimits& Limits() { return Current(); }
void SetLimits(const RequestLimits& limits) { Current() = limits; }

Status OverLimit(const std::string& what, const char* key, uint64_t limit) {
  return Status(StatusCode::kInvalidArg, "too many " + what + ": the limit is " +
                                             std::to_string(limit) + " (--request-limit " + key +
                                             "=N)");
}

Status CheckName(std::string_view name) {
  const size_t limit = Limits().name_bytes;
  if (name.size() <= limit) return Status::OK();
  return Status(StatusCode::kInvalidArg,
                "a name, id or parameter key of the request is longer than " +
                    std::to_string(limit) + " bytes (--request-limit name_bytes=N)");
}

bool CountElements(const int64_t* dims, size_t rank, uint64_t limit, uint64_t* count) {
  uint64_t product = 1;
  for (size_t i = 0; i < rank; ++i) {
    if (dims[i] < 0 || __builtin_mul_overflow(product, static_cast<uint64_t>(dims[i]), &product)) {
      return false;
    }
  }
  if (product > limit) return false;
  *count = product;
  return true;
}

}  // namespace pyserve
