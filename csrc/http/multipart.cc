#include "multipart.h"

#include "exchange.h"

namespace pyserve::httpfront {

namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The value of `key` among `; key="value"` parameters, unquoted; false when absent or in a
// form this splitter leaves to the shell (unquoted, escaped, RFC 2231's `key*=`).
bool Parameter(std::string_view params, std::string_view key, std::string* value, bool* simple) {
  bool found = false;
  while (!params.empty()) {
    const size_t semicolon = params.find(';');
    std::string_view param = Trim(params.substr(0, semicolon));
    params = semicolon == std::string_view::npos ? std::string_view() : params.substr(semicolon + 1);
    const size_t equals = param.find('=');
    if (equals == std::string_view::npos) continue;
    std::string_view name = Trim(param.substr(0, equals)), quoted = Trim(param.substr(equals + 1));
    if (!name.empty() && name.back() == '*') *simple = false;
    if (!EqualsIgnoringCase(name, key)) continue;
    if (quoted.size() < 2 || quoted.front() != '"' || quoted.back() != '"' ||
        quoted.substr(1, quoted.size() - 2).find_first_of("\"\\") != std::string_view::npos) {
      *simple = false;
      return false;
    }
    *value = std::string(quoted.substr(1, quoted.size() - 2));
    found = true;
  }
  return found;
}

// A part's head (its header lines) into `part`; false when it is not one this splitter takes.
bool ParseHead(std::string_view head, FormPart* part) {
  bool named = false, has_filename = false, simple = true;
  std::string content_type, filename;
  while (!head.empty()) {
    const size_t end = head.find("\r\n");
    std::string_view line = head.substr(0, end);
    head = end == std::string_view::npos ? std::string_view() : head.substr(end + 2);
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) return false;
    std::string_view name = line.substr(0, colon), value = Trim(line.substr(colon + 1));
    if (EqualsIgnoringCase(name, "Content-Disposition")) {
      const size_t semicolon = value.find(';');
      if (!EqualsIgnoringCase(Trim(value.substr(0, semicolon)), "form-data") || semicolon == std::string_view::npos) {
        return false;
      }
      const std::string_view params = value.substr(semicolon + 1);
      named = Parameter(params, "name", &part->name, &simple);
      has_filename = Parameter(params, "filename", &filename, &simple);
    } else if (EqualsIgnoringCase(name, "Content-Type")) {
      content_type = std::string(value);
    } else if (EqualsIgnoringCase(name, "Content-Transfer-Encoding")) {
      return false;  // the shell's parser knows what to make of it
    }
  }
  if (!named || !simple) return false;
  if (has_filename) part->content_type = content_type;
  return true;
}

}  // namespace

std::string FormDataBoundary(std::string_view content_type) {
  const size_t semicolon = content_type.find(';');
  if (!EqualsIgnoringCase(Trim(content_type.substr(0, semicolon)), "multipart/form-data") ||
      semicolon == std::string_view::npos) {
    return "";
  }
  std::string boundary;
  bool simple = true;
  if (Parameter(content_type.substr(semicolon + 1), "boundary", &boundary, &simple)) return boundary;
  // The common unquoted form: boundary=TOKEN.
  std::string_view params = content_type.substr(semicolon + 1);
  while (!params.empty()) {
    const size_t next = params.find(';');
    std::string_view param = Trim(params.substr(0, next));
    params = next == std::string_view::npos ? std::string_view() : params.substr(next + 1);
    if (param.size() > 9 && EqualsIgnoringCase(param.substr(0, 9), "boundary=")) {
      return std::string(param.substr(9));
    }
  }
  return "";
}

bool SplitFormData(std::string_view body, std::string_view boundary, std::vector<FormPart>* parts) {
  if (boundary.empty() || boundary.size() > 70) return false;
  const std::string delimiter = "--" + std::string(boundary);
  const std::string separator = "\r\n" + delimiter;
  // The first delimiter opens the body, or follows a preamble's CRLF.
  size_t at = body.compare(0, delimiter.size(), delimiter) == 0 ? 0 : body.find(separator);
  if (at == std::string_view::npos) return false;
  at += at == 0 ? delimiter.size() : separator.size();
  while (true) {
    if (body.compare(at, 2, "--") == 0) return !parts->empty();  // the closing delimiter
    // Transport padding, then the line's end.
    while (at < body.size() && (body[at] == ' ' || body[at] == '\t')) ++at;
    if (body.compare(at, 2, "\r\n") != 0) return false;
    at += 2;
    const size_t head_end = body.find("\r\n\r\n", at);
    FormPart part;
    if (head_end == std::string_view::npos || !ParseHead(body.substr(at, head_end - at), &part)) return false;
    part.offset = head_end + 4;
    const size_t end = body.find(separator, part.offset);
    if (end == std::string_view::npos) return false;
    part.size = end - part.offset;
    parts->push_back(std::move(part));
    at = end + separator.size();
  }
}

}  // namespace pyserve::httpfront
