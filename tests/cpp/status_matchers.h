// GoogleTest helpers for the core's Status: ASSERT_OK/EXPECT_OK report the failed status's code
// and message, and gtest prints StatusCode and Status by name in any failed comparison.
#pragma once

#include <gtest/gtest.h>

#include <ostream>

#include "status.h"

namespace pyserve {

inline const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "kOk";
    case StatusCode::kInvalidArg: return "kInvalidArg";
    case StatusCode::kNotFound: return "kNotFound";
    case StatusCode::kUnavailable: return "kUnavailable";
    case StatusCode::kInternal: return "kInternal";
    case StatusCode::kUnsupported: return "kUnsupported";
    case StatusCode::kAlreadyExists: return "kAlreadyExists";
    case StatusCode::kCancelled: return "kCancelled";
  }
  return "StatusCode(?)";
}

// Found by argument-dependent lookup: gtest's printer for values in failure messages.
inline void PrintTo(StatusCode code, std::ostream* os) {
  *os << StatusCodeName(code) << " (" << static_cast<int>(code) << ")";
}
inline void PrintTo(const Status& status, std::ostream* os) {
  *os << StatusCodeName(status.code());
  if (!status.message().empty()) *os << ": \"" << status.message() << "\"";
}

}  // namespace pyserve

namespace pyserve_test {

inline ::testing::AssertionResult IsOk(const char* expression, const pyserve::Status& status) {
  if (status.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << expression << " returned " << ::testing::PrintToString(status);
}

}  // namespace pyserve_test

#define ASSERT_OK(expression) ASSERT_PRED_FORMAT1(::pyserve_test::IsOk, expression)
#define EXPECT_OK(expression) EXPECT_PRED_FORMAT1(::pyserve_test::IsOk, expression)
