// Response compression as Triton's HTTP server does it: a successful inference answer (JSON or
// binary) is gzip- or deflate-compressed when the request's Accept-Encoding asks for it; other
// answers, errors included, never are.
#pragma once

#include <string>
#include <string_view>

namespace pyserve::httpfront {

// The encoding to answer an inference in ("gzip", "deflate"), or "" for identity, read from
// Accept-Encoding as Triton's CompressionTypeUsed reads it: comma-separated entries, each
// "type" or "type;q=weight" after leading spaces; of gzip, deflate and identity, the one of
// highest weight (the first of equal ones, identity at weight 0 when none is named) wins;
// entries it cannot read are skipped.
const char* ResponseEncoding(std::string_view accept_encoding);

// `body` compressed in `encoding` (zlib's defaults, as Triton's); false (body untouched) when
// zlib fails.
bool Compress(const char* encoding, std::string* body);

}  // namespace pyserve::httpfront
