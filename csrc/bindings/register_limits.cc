// The server's request limits (request_limits.h), read and set from the shell as a dict.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <string>

#include "register.h"
#include "request_limits.h"

namespace py = pybind11;

namespace pyserve::bindings {

void RegisterLimits(py::module_& m) {
  m.def("request_limits", [] {
    const RequestLimits& l = Limits();
    return std::map<std::string, uint64_t>{
        {"inputs", l.inputs},         {"outputs", l.outputs}, {"parameters", l.parameters},
        {"rank", l.rank},             {"elements", l.elements}, {"name_bytes", l.name_bytes}};
  });
  m.def("set_request_limits", [](const std::map<std::string, uint64_t>& values) {
    RequestLimits l;  // the defaults, but for those named
    for (const auto& [key, value] : values) {
      if (key == "inputs") l.inputs = value;
      else if (key == "outputs") l.outputs = value;
      else if (key == "parameters") l.parameters = value;
      else if (key == "rank") l.rank = value;
      else if (key == "elements") {
        // Byte sizes are elements times at most 8 bytes: past 2^60 they would wrap.
        if (value > (uint64_t{1} << 60)) throw py::value_error("the elements limit is at most 2^60");
        l.elements = value;
      }
      else if (key == "name_bytes") l.name_bytes = value;
      else throw py::key_error("unknown request limit '" + key + "'");
    }
    SetLimits(l);
  }, "Sets the limits named in the dict, the others to their defaults; before serving.");
}

}  // namespace pyserve::bindings
