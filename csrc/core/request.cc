#include "request.h"

#include <pthread.h>

#include <chrono>

namespace pyserve {

size_t ElementSize(DataType dtype) {
  switch (dtype) {
    case DataType::kBool:
    case DataType::kUint8:
    case DataType::kInt8:
      return 1;
    case DataType::kUint16:
    case DataType::kInt16:
    case DataType::kFp16:
    case DataType::kBf16:
      return 2;
    case DataType::kUint32:
    case DataType::kInt32:
    case DataType::kFp32:
      return 4;
    case DataType::kUint64:
    case DataType::kInt64:
    case DataType::kFp64:
      return 8;
    default:
      return 0;
  }
}

namespace {
const char* const kWireNames[] = {"INVALID", "BOOL",  "UINT8", "UINT16", "UINT32",
                                  "UINT64",  "INT8",  "INT16", "INT32",  "INT64",
                                  "FP16",    "FP32",  "FP64",  "BYTES",  "BF16"};
constexpr int kTypeCount = sizeof(kWireNames) / sizeof(kWireNames[0]);
}  // namespace

const char* WireName(DataType dtype) {
  const int index = static_cast<int>(dtype);
  return index < kTypeCount ? kWireNames[index] : "INVALID";
}

DataType DataTypeFromWire(std::string_view name) {
  for (int i = 1; i < kTypeCount; ++i) {
    if (name == kWireNames[i]) return static_cast<DataType>(i);
  }
  return DataType::kInvalid;
}

void NameThread(const char* name) { pthread_setname_np(pthread_self(), name); }

uint64_t SteadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace pyserve
