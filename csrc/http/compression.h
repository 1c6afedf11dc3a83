// Response compression as the server did it on cpp-httplib: gzip (or deflate, which Triton
// also speaks) for JSON and text answers, when the client's Accept-Encoding names it.
#pragma once

#include <string>
#include <string_view>

namespace pyserve::httpfront {

// The encoding to answer in ("gzip", "deflate"), or "" for none: by the answer's content type
// (error bodies, "application/json; charset=utf-8", are never compressed: Triton's are not,
// and tritonclient's asyncio client reads them as they come) and the request's Accept-Encoding.
const char* ResponseEncoding(std::string_view content_type, std::string_view accept_encoding);

// `body` compressed in `encoding`; false (body untouched) when zlib fails.
bool Compress(const char* encoding, std::string* body);

}  // namespace pyserve::httpfront
