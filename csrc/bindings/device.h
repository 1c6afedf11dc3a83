// What Python backends see of GPU memory: the core's device copy of a batch input
// (DeviceTensor) and device memory a backend allocates for itself (DeviceBuffer).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace pyserve::bindings {

// A batch input that the core copied to the instance's GPU on the instance's stream. Valid
// only during the execute call it is handed to (the device buffer is the instance's, reused
// by its next batch). `host` is the same tensor in host memory, for what must be read there.
struct DeviceTensor {
  std::string name;
  uintptr_t data_ptr = 0;
  size_t byte_size = 0;
  std::vector<int64_t> shape;
  pybind11::dtype dtype;
  int device = 0;
  uintptr_t stream = 0;  // the copy was enqueued here: work on another stream must wait for it
  pybind11::object host;
};

}  // namespace pyserve::bindings
