// UTF-8 as protobuf and Python read it: the one walker of it in native code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pyserve {

// The length of the well-formed UTF-8 character at p[0..n), or 0 when it is not one
// (overlong forms, surrogates and code points past U+10FFFF are not).
inline size_t Utf8CharLength(const uint8_t* p, size_t n) {
  const uint8_t c = p[0];
  if (c < 0x80) return 1;
  const size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || len > n) return 0;
  uint32_t code = c & (0x7f >> len);
  for (size_t k = 1; k < len; ++k) {
    if ((p[k] & 0xc0) != 0x80) return 0;
    code = (code << 6) | (p[k] & 0x3f);
  }
  static const uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (code < kMin[len] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return 0;
  return len;
}

// Protobuf's rule for proto3 strings.
inline bool ValidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  for (size_t i = 0, n = s.size(); i < n;) {
    const size_t len = Utf8CharLength(p + i, n - i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

// Python's "replace" decoding, appended to `out`: each byte that starts no character
// becomes U+FFFD.
inline void AppendUtf8Replacing(const uint8_t* p, size_t n, std::string* out) {
  for (size_t i = 0; i < n;) {
    const size_t len = Utf8CharLength(p + i, n - i);
    if (len == 0) {
      out->append("\xef\xbf\xbd");
      ++i;
    } else {
      out->append(reinterpret_cast<const char*>(p + i), len);
      i += len;
    }
  }
}

}  // namespace pyserve
