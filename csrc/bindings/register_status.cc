#include <pybind11/pybind11.h>

#include "register.h"

namespace py = pybind11;

namespace pyserve::bindings {

const char* CodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kInvalidArg: return "INVALID_ARG";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kInternal: return "INTERNAL";
    case StatusCode::kUnsupported: return "UNSUPPORTED";
    case StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case StatusCode::kCancelled: return "CANCELLED";
  }
  return "UNKNOWN";
}

void RegisterStatus(py::module_& m) {
  (void)m;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      py::object error_type = py::module_::import("pyserve.errors").attr("ServerError");
      py::object error = error_type(e.status.message(), CodeName(e.status.code()));
      PyErr_SetObject(error_type.ptr(), error.ptr());
    }
  });
}

}  // namespace pyserve::bindings
