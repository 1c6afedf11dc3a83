// BYTES tensors as Triton lays them out: each element a 4-byte little-endian length, then its
// bytes. The one walker of that layout in native code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace pyserve {

// Calls fn(data, length) for each whole element, in order, and stops at the end or at an
// element that runs past the buffer. Returns the bytes walked (byte_size when all were whole).
template <typename Fn>
size_t ForEachString(const uint8_t* data, size_t byte_size, Fn&& fn) {
  size_t offset = 0;
  while (byte_size - offset >= 4) {
    uint32_t length = 0;
    std::memcpy(&length, data + offset, 4);
    if (length > byte_size - offset - 4) break;
    fn(data + offset + 4, static_cast<size_t>(length));
    offset += 4 + static_cast<size_t>(length);
  }
  return offset;
}

}  // namespace pyserve
