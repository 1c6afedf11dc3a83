#include "compression.h"

#include <zlib.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>

namespace pyserve::httpfront {

const char* ResponseEncoding(std::string_view accept_encoding) {
  const char* chosen = "";  // identity
  double chosen_weight = 0;
  size_t begin = 0;
  while (begin <= accept_encoding.size()) {
    size_t end = accept_encoding.find(',', begin);
    if (end == std::string_view::npos) end = accept_encoding.size();
    const std::string_view entry = accept_encoding.substr(begin, end - begin);
    begin = end + 1;
    const size_t start = entry.find_first_not_of(' ');
    const size_t q = entry.find(";q=");
    if (start == std::string_view::npos || (q != std::string_view::npos && start >= q)) continue;
    const std::string_view type = entry.substr(start, q == std::string_view::npos ? q : q - start);
    double weight = 1;
    if (q != std::string_view::npos) {  // read as std::stod reads it: a leading number
      const std::string text(entry.substr(q + 3));
      char* parsed = nullptr;
      errno = 0;
      weight = std::strtod(text.c_str(), &parsed);
      if (parsed == text.c_str() || errno == ERANGE) continue;
    }
    const char* known = type == "gzip" ? "gzip" : type == "deflate" ? "deflate" : type == "identity" ? "" : nullptr;
    if (known != nullptr && weight > chosen_weight) {
      chosen = known;
      chosen_weight = weight;
    }
  }
  return chosen;
}

bool Compress(const char* encoding, std::string* body) {
  if (body->size() > UINT32_MAX) return false;  // zlib counts in 32 bits; no answer is that large
  z_stream stream{};
  const int window_bits = std::string_view(encoding) == "gzip" ? 15 + 16 : 15;  // +16: gzip's wrapper
  if (deflateInit2(&stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    return false;
  }
  std::string out(deflateBound(&stream, body->size()), '\0');
  stream.next_in = reinterpret_cast<Bytef*>(body->data());
  stream.avail_in = static_cast<uInt>(body->size());
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  const bool done = deflate(&stream, Z_FINISH) == Z_STREAM_END;
  out.resize(stream.total_out);
  deflateEnd(&stream);
  if (!done) return false;
  body->swap(out);
  return true;
}

}  // namespace pyserve::httpfront
