// multipart/form-data bodies split into their parts (RFC 7578), for TorchServe's predictions:
// each part becomes one entry of the handler's request dict, as TorchServe's frontend hands
// them over. Only the common form is taken (a quoted name, an optional quoted filename, an
// optional Content-Type); anything else is left to the shell's parser, so that unusual
// bodies keep its answers.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace pyserve::httpfront {

struct FormPart {
  std::string name;
  std::string content_type;  // "" unless the part has a filename (as TorchServe's worker reads it)
  size_t offset = 0;         // its content, in the body
  size_t size = 0;
};

// The boundary parameter of a multipart/form-data Content-Type, or "" for another type.
std::string FormDataBoundary(std::string_view content_type);

// The parts of `body`; false when it is not a form this splitter takes.
bool SplitFormData(std::string_view body, std::string_view boundary, std::vector<FormPart>* parts);

}  // namespace pyserve::httpfront
