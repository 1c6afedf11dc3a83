// pyserve._core.SharedMemoryRegistry: the one registry of client shared-memory regions, which
// the Python control plane manages and every frontend (native or Python) resolves tensors in.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "register.h"
#include "shared_memory.h"

namespace py = pybind11;

namespace pyserve::bindings {

namespace {

SharedMemoryKind KindOf(const std::string& kind) {
  if (kind == "system") return SharedMemoryKind::kSystem;
  if (kind == "cuda") return SharedMemoryKind::kCuda;
  throw py::value_error("shared memory kind must be 'system' or 'cuda', not '" + kind + "'");
}

// A block of a region, resolved for the Python frontends: a buffer (read-write, host memory)
// for inputs, a target (host or device) for outputs. Holds its region while it lives.
std::shared_ptr<SharedMemoryBlock> Resolve(const SharedMemoryRegistry& registry,
                                           const std::string& name, uint64_t offset,
                                           uint64_t byte_size, bool on_host) {
  auto block = std::make_shared<SharedMemoryBlock>();
  Status status;
  {
    py::gil_scoped_release nogil;
    status = registry.Find(name, offset, byte_size, block.get());
    if (status.ok() && on_host) status = ReadOnHost(*block, block.get());
  }
  ThrowIfError(status);
  return block;
}

py::dict RegionStatus(const SharedMemoryRegion& region) {
  py::dict out;
  out["name"] = region.name;
  if (region.kind == SharedMemoryKind::kSystem) {
    out["key"] = region.key;
    out["offset"] = region.offset;
  } else {
    out["device_id"] = region.device_id;
  }
  out["byte_size"] = region.byte_size;
  return out;
}

}  // namespace

void RegisterSharedMemory(py::module_& m) {
  py::class_<SharedMemoryBlock, std::shared_ptr<SharedMemoryBlock>>(m, "SharedMemoryBlock",
                                                                    py::buffer_protocol())
      .def_property_readonly("byte_size", [](const SharedMemoryBlock& b) { return b.byte_size; })
      .def_property_readonly("device", [](const SharedMemoryBlock& b) { return b.device; })
      .def_buffer([](SharedMemoryBlock& b) -> py::buffer_info {
        if (b.device >= 0) throw py::buffer_error("a CUDA shared memory block is not host memory");
        return py::buffer_info(b.data, 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.byte_size)}, {1});
      });

  using Registry = SharedMemoryRegistry;
  py::class_<Registry, std::shared_ptr<Registry>>(m, "SharedMemoryRegistry")
      .def(py::init<>())
      .def("register_system",
           [](Registry& r, const std::string& name, const std::string& key, uint64_t offset,
              uint64_t byte_size) { ThrowIfError(r.RegisterSystem(name, key, offset, byte_size)); },
           py::arg("name"), py::arg("key"), py::arg("offset"), py::arg("byte_size"),
           py::call_guard<py::gil_scoped_release>())
      .def("register_cuda",
           [](Registry& r, const std::string& name, const py::bytes& raw_handle, int64_t device_id,
              uint64_t byte_size) {
             const std::string handle = raw_handle;
             Status status;
             {
               py::gil_scoped_release nogil;
               status = r.RegisterCuda(name, handle, device_id, byte_size);
             }
             ThrowIfError(status);
           },
           py::arg("name"), py::arg("raw_handle"), py::arg("device_id"), py::arg("byte_size"))
      .def("unregister",
           [](Registry& r, const std::string& name, const std::string& kind) {
             const SharedMemoryKind k = KindOf(kind);
             py::gil_scoped_release nogil;  // unmapping may take a while
             ThrowIfError(r.Unregister(name, k));
           },
           py::arg("name"), py::arg("kind"),
           "Forget a region (every region of the kind when name is empty); requests in flight "
           "keep using it until they are done.")
      .def("status",
           [](const Registry& r, const std::string& name, const std::string& kind) {
             std::vector<std::shared_ptr<const SharedMemoryRegion>> regions;
             ThrowIfError(r.List(name, KindOf(kind), &regions));
             py::list out;
             for (const auto& region : regions) out.append(RegionStatus(*region));
             return out;
           },
           py::arg("name"), py::arg("kind"))
      .def("input",
           [](const Registry& r, const std::string& name, uint64_t offset, uint64_t byte_size) {
             return Resolve(r, name, offset, byte_size, true);
           },
           py::arg("name"), py::arg("offset"), py::arg("byte_size"),
           "An input's bytes as a buffer of host memory (a copy for CUDA regions).")
      .def("output",
           [](const Registry& r, const std::string& name, uint64_t offset, uint64_t byte_size) {
             return Resolve(r, name, offset, byte_size, false);
           },
           py::arg("name"), py::arg("offset"), py::arg("byte_size"),
           "Where an output is to be written, for Model.submit's outputs.");
}

}  // namespace pyserve::bindings
