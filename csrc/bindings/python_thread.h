// Native threads that call into Python again and again (a model's workers, the fallback
// frontend's dispatcher) keep one Python thread state for their whole life, as a Python thread
// does. Without it, pybind11 gives a thread that has none a new state for each
// gil_scoped_acquire and deletes it after. Each new state maps its frame stack and each
// deletion unmaps it, and the unmap is a TLB shootdown across cores. Python-side
// threading.local() and current_thread() would also start over on every call.
//
// A kept state is deleted when its thread ends, under the GIL: whoever joins such a thread
// must not hold the GIL meanwhile (the model's Stop and the frontends' stops release it).
#pragma once

#include <pybind11/pybind11.h>

namespace pyserve {

// gil_scoped_acquire on a thread state kept until the thread ends.
class PythonThreadGil {
 private:
  class Kept {
   public:
    Kept() : owned_(PyGILState_GetThisThreadState() == nullptr) {  // else Python's own thread
      if (!owned_) return;
      pybind11::gil_scoped_acquire first;
      first.inc_ref();  // its count stays above 0 until ~Kept: the state is not deleted
    }
    ~Kept() {
      if (!owned_ || !Py_IsInitialized() || Finalizing()) return;  // Python went first
      pybind11::gil_scoped_acquire last;
      last.dec_ref();  // to 0 as `last` ends: the state is cleared and deleted
    }

   private:
    static bool Finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
      return Py_IsFinalizing();
#else
      return _Py_IsFinalizing();
#endif
    }
    bool owned_;
  };
  struct Keep {
    Keep() { thread_local Kept kept; }
  };
  Keep keep_;  // first, so that gil_ finds the kept state
  pybind11::gil_scoped_acquire gil_;
};

}  // namespace pyserve
