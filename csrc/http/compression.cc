#include "compression.h"

#include <zlib.h>

#include <cstdint>

namespace pyserve::httpfront {

const char* ResponseEncoding(std::string_view content_type, std::string_view accept_encoding) {
  const bool compressible = content_type == "application/json" ||
                            (content_type.substr(0, 5) == "text/" && content_type != "text/event-stream");
  if (!compressible) return "";
  if (accept_encoding.find("gzip") != std::string_view::npos) return "gzip";
  if (accept_encoding.find("deflate") != std::string_view::npos) return "deflate";
  return "";
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
