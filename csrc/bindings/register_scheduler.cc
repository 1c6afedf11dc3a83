#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "executor.h"
#include "register.h"
#include "scheduler.h"

namespace py = pybind11;

namespace pyserve::bindings {

namespace {

py::dtype NumpyDtype(DataType dtype) {
  switch (dtype) {
    case DataType::kBool: return py::dtype::of<bool>();
    case DataType::kUint8: return py::dtype::of<uint8_t>();
    case DataType::kUint16: return py::dtype::of<uint16_t>();
    case DataType::kUint32: return py::dtype::of<uint32_t>();
    case DataType::kUint64: return py::dtype::of<uint64_t>();
    case DataType::kInt8: return py::dtype::of<int8_t>();
    case DataType::kInt16: return py::dtype::of<int16_t>();
    case DataType::kInt32: return py::dtype::of<int32_t>();
    case DataType::kInt64: return py::dtype::of<int64_t>();
    case DataType::kFp16: return py::dtype("float16");
    case DataType::kFp32: return py::dtype::of<float>();
    case DataType::kFp64: return py::dtype::of<double>();
    case DataType::kBf16: return py::dtype::of<uint16_t>();  // raw bits; numpy has no bfloat16
    default: return py::dtype::of<uint8_t>();                // BYTES: the serialized elements
  }
}

// A read-only numpy view of bytes the core does not own: no copy.
py::array View(const TensorView& t) {
  static const uint8_t kEmpty = 0;
  std::vector<py::ssize_t> shape;
  if (t.dtype == DataType::kBytes) {
    shape.push_back(static_cast<py::ssize_t>(t.byte_size));
  } else {
    shape.assign(t.shape.begin(), t.shape.end());
  }
  const void* data = t.data != nullptr ? t.data : &kEmpty;
  py::array array(NumpyDtype(t.dtype), shape, {}, data, py::none());
  py::detail::array_proxy(array.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return array;
}

// Runs a Python callable per batch: `execute(instance, request_ids, inputs)`, with the GIL
// taken once for the whole batch. The callable delivers every completion itself.
class PyExecutor : public Executor {
 public:
  explicit PyExecutor(py::object execute) : execute_(std::move(execute)) {}
  ~PyExecutor() override {
    py::gil_scoped_acquire gil;
    execute_ = py::object();
  }

  void Execute(Batch& batch) override {
    py::gil_scoped_acquire gil;
    try {
      py::list ids(batch.requests.size());
      for (size_t i = 0; i < batch.requests.size(); ++i) {
        ids[i] = py::int_(batch.requests[i]->id);
      }
      py::dict inputs;
      for (const TensorView& t : batch.inputs) inputs[py::str(t.name)] = View(t);
      execute_(batch.instance, ids, inputs);
    } catch (py::error_already_set& e) {
      // The callable owns error delivery; an exception here is a bug worth a traceback.
      e.discard_as_unraisable("pyserve executor");
    }
  }

 private:
  py::object execute_;
};

// Owns the core scheduler; stops it without the GIL so workers inside Python can finish.
class PyScheduler {
 public:
  PyScheduler(const std::string& model_name, int instance_count, py::object execute,
              size_t queue_capacity) {
    SchedulerOptions options;
    options.model_name = model_name;
    options.instance_count = instance_count;
    options.queue_capacity = queue_capacity;
    ThrowIfError(Scheduler::Create(options, std::make_shared<PyExecutor>(std::move(execute)),
                                   &scheduler_));
  }

  ~PyScheduler() {
    py::gil_scoped_release nogil;
    scheduler_.reset();
  }

  // inputs: a sequence of (name, datatype code, shape, buffer). The buffers must stay alive
  // until the request's completion is delivered; the core keeps only pointers.
  void Enqueue(uint64_t request_id, const py::sequence& inputs) {
    auto request = std::make_unique<InferRequest>();
    request->id = request_id;
    request->inputs.reserve(inputs.size());
    for (const py::handle item : inputs) {
      auto tuple = item.cast<py::tuple>();
      TensorView view;
      view.name = tuple[0].cast<std::string>();
      view.dtype = static_cast<DataType>(tuple[1].cast<int>());
      view.shape = tuple[2].cast<std::vector<int64_t>>();
      py::buffer_info info = tuple[3].cast<py::buffer>().request();
      view.data = static_cast<const uint8_t*>(info.ptr);
      view.byte_size = static_cast<size_t>(info.size * info.itemsize);
      request->inputs.push_back(std::move(view));
    }
    ThrowIfError(scheduler_->Enqueue(request));
  }

  void Stop() {
    py::gil_scoped_release nogil;
    scheduler_->Stop();
  }

  uint64_t InflightCount() const { return scheduler_->InflightCount(); }

 private:
  std::unique_ptr<Scheduler> scheduler_;
};

}  // namespace

void RegisterScheduler(py::module_& m) {
  py::class_<PyScheduler>(m, "Scheduler")
      .def(py::init<const std::string&, int, py::object, size_t>(), py::arg("model_name"),
           py::arg("instance_count"), py::arg("execute"), py::arg("queue_capacity") = 4096)
      .def("enqueue", &PyScheduler::Enqueue, py::arg("request_id"), py::arg("inputs"))
      .def("stop", &PyScheduler::Stop)
      .def_property_readonly("inflight_count", &PyScheduler::InflightCount);
}

}  // namespace pyserve::bindings
