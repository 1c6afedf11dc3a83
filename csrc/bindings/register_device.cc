#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "device.h"
#include "register.h"

namespace py = pybind11;

namespace pyserve::bindings {

namespace {

const CudaRuntime& Cuda() {
  const CudaRuntime* cuda = CudaRuntime::Get();
  if (cuda == nullptr) throw StatusError{Status(StatusCode::kUnavailable, "CUDA is not available")};
  return *cuda;
}

CudaStream AsStream(uintptr_t stream) { return reinterpret_cast<CudaStream>(stream); }

void Synchronize(uintptr_t stream) {
  bool ok;
  {
    py::gil_scoped_release release;
    ok = Cuda().Synchronize(AsStream(stream));
  }
  if (!ok) throw StatusError{Status(StatusCode::kInternal, "CUDA stream synchronize failed")};
}

// Device memory a backend owns (e.g. TensorRT's output bindings), freed with the object.
class DeviceBuffer {
 public:
  DeviceBuffer(int device, size_t byte_size) : device_(device), byte_size_(byte_size) {
    ptr_ = Cuda().DeviceAlloc(device, std::max<size_t>(byte_size, 1));
    if (ptr_ == nullptr) {
      throw StatusError{Status(StatusCode::kInternal, "failed to allocate " +
                                                          std::to_string(byte_size) +
                                                          " bytes on GPU " + std::to_string(device))};
    }
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) Cuda().DeviceFree(device_, ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(ptr_); }
  size_t byte_size() const { return byte_size_; }
  int device() const { return device_; }

  void CopyFromHost(const py::array& array, uintptr_t stream, bool wait) {
    Check(array, false);
    // Read the array before the GIL goes: nbytes() touches its dtype's refcount.
    const void* source = array.data();
    const size_t byte_size = array.nbytes();
    bool ok;
    {
      py::gil_scoped_release release;
      ok = Cuda().CopyToDeviceAsync(ptr_, source, byte_size, AsStream(stream));
    }
    if (!ok) throw StatusError{Status(StatusCode::kInternal, "copy to GPU failed")};
    if (wait) Synchronize(stream);
  }

  void CopyToHost(py::array& array, uintptr_t stream, bool wait) {
    Check(array, true);
    void* target = array.mutable_data();
    const size_t byte_size = array.nbytes();
    bool ok;
    {
      py::gil_scoped_release release;
      ok = Cuda().CopyToHostAsync(target, ptr_, byte_size, AsStream(stream));
    }
    if (!ok) throw StatusError{Status(StatusCode::kInternal, "copy from GPU failed")};
    if (wait) Synchronize(stream);
  }

 private:
  void Check(const py::array& array, bool writable) const {
    if (!(array.flags() & py::array::c_style)) throw py::value_error("array must be C-contiguous");
    if (writable && !array.writeable()) throw py::value_error("array must be writable");
    if (static_cast<size_t>(array.nbytes()) > byte_size_) {
      throw py::value_error("array of " + std::to_string(array.nbytes()) +
                            " bytes does not fit a device buffer of " +
                            std::to_string(byte_size_));
    }
  }

  void* ptr_ = nullptr;
  int device_;
  size_t byte_size_;
};

// Numba's __cuda_array_interface__ (version 3), which torch, CuPy and others consume.
py::dict CudaArrayInterface(const DeviceTensor& t) {
  py::dict out;
  out["shape"] = py::tuple(py::cast(t.shape));
  out["typestr"] = t.dtype.attr("str");
  out["data"] = py::make_tuple(t.data_ptr, false);
  out["version"] = 3;
  out["strides"] = py::none();
  // The interface's 1 names the legacy default stream, which is what a null handle is here.
  out["stream"] = py::int_(t.stream == 0 ? 1 : t.stream);
  return out;
}

}  // namespace

void RegisterDevice(py::module_& m) {
  py::class_<DeviceTensor>(m, "DeviceTensor")
      .def(py::init([](std::string name, uintptr_t data_ptr, size_t byte_size,
                       std::vector<int64_t> shape, py::object dtype, int device,
                       uintptr_t stream, py::object host) {
             return DeviceTensor{std::move(name), data_ptr, byte_size, std::move(shape),
                                 py::dtype::from_args(dtype), device, stream, std::move(host)};
           }),
           py::arg("name"), py::arg("data_ptr"), py::arg("byte_size"), py::arg("shape"),
           py::arg("dtype"), py::arg("device"), py::arg("stream"), py::arg("host"))
      .def_readonly("name", &DeviceTensor::name)
      .def_readonly("data_ptr", &DeviceTensor::data_ptr)
      .def_readonly("byte_size", &DeviceTensor::byte_size)
      .def_property_readonly("shape", [](const DeviceTensor& t) { return py::tuple(py::cast(t.shape)); })
      .def_readonly("dtype", &DeviceTensor::dtype)
      .def_readonly("device", &DeviceTensor::device)
      .def_readonly("stream", &DeviceTensor::stream)
      .def_readonly("host", &DeviceTensor::host)
      .def_property_readonly("__cuda_array_interface__", &CudaArrayInterface)
      .def("__repr__", [](const DeviceTensor& t) {
        return "DeviceTensor('" + t.name + "', shape=" + py::str(py::cast(t.shape)).cast<std::string>() +
               ", dtype=" + py::str(t.dtype).cast<std::string>() + ", device=" +
               std::to_string(t.device) + ")";
      });

  py::class_<DeviceBuffer>(m, "DeviceBuffer")
      .def(py::init<int, size_t>(), py::arg("device"), py::arg("byte_size"))
      .def_property_readonly("ptr", &DeviceBuffer::ptr)
      .def_property_readonly("byte_size", &DeviceBuffer::byte_size)
      .def_property_readonly("device", &DeviceBuffer::device)
      .def("copy_from_host", &DeviceBuffer::CopyFromHost, py::arg("array"), py::arg("stream") = 0,
           py::arg("wait") = true)
      .def("copy_to_host", &DeviceBuffer::CopyToHost, py::arg("array"), py::arg("stream") = 0,
           py::arg("wait") = true);

  m.def("cuda_set_device", [](int device) {
        if (!Cuda().SetDevice(device)) {
          throw StatusError{Status(StatusCode::kInvalidArg, "cannot use GPU " + std::to_string(device))};
        }
      }, py::arg("device"), "Make `device` current for the calling thread (cudaSetDevice).");
  m.def("cuda_synchronize", &Synchronize, py::arg("stream") = 0,
        "Wait (without the GIL) for the work enqueued on a CUDA stream (0: the default one).");
}

}  // namespace pyserve::bindings
