#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cuda_runtime.h"
#include "host_memory.h"
#include "register.h"

namespace py = pybind11;

namespace pyserve::bindings {

void RegisterMemory(py::module_& m) {
  m.def("set_cuda_search_paths", &CudaRuntime::SetSearchPaths, py::arg("paths"),
        "Folders to search for libcudart before the system's; only before first use.");
  m.def("cuda_device_count", [] {
    const CudaRuntime* cuda = CudaRuntime::Get();
    return cuda == nullptr ? 0 : cuda->device_count();
  });
  m.def("cuda_memory_info", [](int device) {
        const CudaRuntime* cuda = CudaRuntime::Get();
        size_t free = 0, total = 0;
        if (cuda == nullptr || !cuda->MemoryInfo(device, &free, &total)) {
          throw StatusError{Status(StatusCode::kInternal,
                                   "cannot read the memory of GPU " + std::to_string(device))};
        }
        return py::make_tuple(free, total);
      }, py::arg("device"), "(free, total) bytes of a GPU's memory (cudaMemGetInfo).");
  m.def("cuda_library", [] {
    const CudaRuntime* cuda = CudaRuntime::Get();
    return cuda == nullptr ? std::string() : cuda->library();
  });
  m.def("host_memory_usage", [] {
    HostMemoryPool& pool = HostMemoryPool::Global();
    HostMemoryPool::Usage usage = pool.usage();
    py::dict out;
    out["pinned"] = pool.pinned();
    out["cached_bytes"] = usage.cached_bytes;
    out["in_use_bytes"] = usage.in_use_bytes;
    out["allocations"] = usage.allocations;
    return out;
  });
  m.def("set_host_memory_pool_bytes", [](size_t bytes) { HostMemoryPool::Global().SetMaxCachedBytes(bytes); },
        py::arg("bytes"), py::call_guard<py::gil_scoped_release>(),
        "Bound the host memory (pinned with a GPU) the pool keeps for reuse.");
  m.def("reset_host_memory", [] { HostMemoryPool::Global().Reset(); },
        py::call_guard<py::gil_scoped_release>(),
        "Free the pool's idle buffers (called at exit, before CUDA is torn down).");
}

}  // namespace pyserve::bindings
