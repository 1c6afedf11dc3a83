// The Tracer (trace.h) for the shell: the sampling half of each trace setting in, the
// finished records out (drained in batches by pyserve.trace's writer thread).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "register.h"
#include "request.h"
#include "trace.h"

namespace py = pybind11;

namespace pyserve::bindings {

void RegisterTrace(py::module_& m) {
  m.def("trace_configure",
        [](const std::string& model, uint64_t setting, bool enabled, uint32_t rate,
           int32_t count, bool opentelemetry, bool tensors) {
          Tracer::Get().Configure(
              model, TraceSampling{setting, enabled, rate, count, opentelemetry, tensors});
        },
        py::arg("model"), py::arg("setting"), py::arg("enabled"), py::arg("rate"),
        py::arg("count"), py::arg("opentelemetry"), py::arg("tensors"),
        "Sets the global trace setting (model '') or a model's own.");
  m.def("trace_forget", [](const std::string& model) { Tracer::Get().Forget(model); },
        "Puts a model back on the global trace setting.");
  m.def("trace_count", [](const std::string& model) { return Tracer::Get().Count(model); },
        "The traces the setting of a model may still sample (-1: unlimited).");
  m.def("trace_drain", [](int timeout_ms) {
    std::vector<std::unique_ptr<TraceRecord>> records;
    {
      py::gil_scoped_release nogil;
      records = Tracer::Get().Drain(timeout_ms);
    }
    py::list out;
    for (const auto& r : records) {
      py::list stamps;
      for (const auto& [name, ns] : r->Timestamps()) stamps.append(py::make_tuple(name, ns));
      py::list tensors;
      for (const TracedTensor& t : r->Tensors()) {
        tensors.append(py::make_tuple(t.activity, t.name, WireName(t.dtype), t.shape,
                                      py::bytes(t.data)));
      }
      out.append(py::make_tuple(r->id, r->setting, r->model_name, r->model_version,
                                r->request_id, r->traceparent, stamps, r->sample, r->last,
                                tensors));
    }
    return out;
  }, py::arg("timeout_ms"),
  "The finished traces as (id, setting, model, version, request_id, traceparent, "
  "[(name, ns)], sample, last, [(activity, name, datatype, shape, bytes)]), waiting up "
  "to timeout_ms for the first.");
}

}  // namespace pyserve::bindings
