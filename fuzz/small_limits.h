// Request limits small enough for a fuzzer's inputs of a few kilobytes to pass them: the
// defaults (thousands of inputs, 64 dims) are out of their reach, and each limit's refusal,
// counted while the parser reads, is a path to explore too. Below every limit the parsers
// behave as at the defaults.
#pragma once

#include "request_limits.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  pyserve::RequestLimits limits;
  limits.inputs = 8;
  limits.outputs = 8;
  limits.parameters = 16;
  limits.rank = 8;
  limits.elements = uint64_t{1} << 24;
  limits.name_bytes = 256;
  pyserve::SetLimits(limits);
  return 0;
}
