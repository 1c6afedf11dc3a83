// pyserve._core: the private extension module. Only wiring lives here; each area registers
// itself from its own file.
#include <pybind11/pybind11.h>

#include "register.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyserve's C++ serving core (private; use the pyserve package)";
  pyserve::bindings::RegisterStatus(m);
  pyserve::bindings::RegisterModel(m);
  pyserve::bindings::RegisterMemory(m);
  pyserve::bindings::RegisterDevice(m);
  pyserve::bindings::RegisterSharedMemory(m);
  pyserve::bindings::RegisterLimits(m);
  pyserve::bindings::RegisterTrace(m);
}
