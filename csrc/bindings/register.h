#pragma once

#include <pybind11/pybind11.h>

#include "status.h"

namespace pyserve::bindings {

// Thrown by binding code for a failed core Status; translated to pyserve.errors.ServerError.
struct StatusError {
  Status status;
};

inline void ThrowIfError(const Status& status) {
  if (!status.ok()) throw StatusError{status};
}

// The Triton code name of a status ("INVALID_ARG", ...), as pyserve.errors.ErrorCode spells it.
const char* CodeName(StatusCode code);

void RegisterStatus(pybind11::module_& m);
void RegisterModel(pybind11::module_& m);
void RegisterMemory(pybind11::module_& m);
void RegisterDevice(pybind11::module_& m);
void RegisterSharedMemory(pybind11::module_& m);
void RegisterLimits(pybind11::module_& m);
void RegisterTrace(pybind11::module_& m);

}  // namespace pyserve::bindings
