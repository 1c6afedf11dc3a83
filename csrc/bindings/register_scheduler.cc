#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "device.h"
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
    default: return py::dtype::of<uint8_t>();
  }
}

// BYTES elements as a numpy object array of bytes. The frontend has checked the length
// prefixes; a short buffer leaves the remaining elements empty rather than reading past it.
py::array BytesArray(const TensorView& t) {
  std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
  py::array array(py::dtype("O"), shape);
  auto** items = static_cast<PyObject**>(array.mutable_data());
  const py::ssize_t count = array.size();
  size_t offset = 0;
  for (py::ssize_t i = 0; i < count; ++i) {
    uint32_t length = 0;
    if (offset + 4 <= t.byte_size) {
      std::memcpy(&length, t.data + offset, 4);
      offset += 4;
    }
    length = static_cast<uint32_t>(std::min<size_t>(length, t.byte_size - offset));
    PyObject* item = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(t.data + offset), length);
    if (item == nullptr) throw py::error_already_set();
    Py_XDECREF(items[i]);  // numpy filled the array with None
    items[i] = item;
    offset += length;
  }
  return array;
}

// A read-only numpy view of bytes the core does not own: no copy.
py::array View(const TensorView& t) {
  if (t.dtype == DataType::kBytes) return BytesArray(t);
  static const uint8_t kEmpty = 0;
  std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
  const void* data = t.data != nullptr ? t.data : &kEmpty;
  py::array array(NumpyDtype(t.dtype), shape, {}, data, py::none());
  py::detail::array_proxy(array.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return array;
}

// The trampoline into Python, with the GIL taken once per batch:
//   outputs = execute(instance, ids, batch_sizes, inputs)   the backend's compute
//   deliver(ids, batch_sizes, inputs, outputs, error)   split and hand to the event loop
// and reject(ids, code, message) for requests the core refuses after accepting them.
class PyExecutor : public Executor {
 public:
  PyExecutor(py::object execute, py::object deliver, py::object reject)
      : execute_(std::move(execute)), deliver_(std::move(deliver)), reject_(std::move(reject)) {}
  ~PyExecutor() override {
    py::gil_scoped_acquire gil;
    execute_ = deliver_ = reject_ = py::object();
  }

  Status Execute(Batch& batch) override {
    py::gil_scoped_acquire gil;
    py::list ids(batch.requests.size()), sizes(batch.requests.size());
    for (size_t i = 0; i < batch.requests.size(); ++i) {
      ids[i] = py::int_(batch.requests[i]->id);
      sizes[i] = py::int_(batch.requests[i]->batch_size);
    }
    py::dict inputs;
    py::object outputs = py::none(), error = py::none();
    try {
      for (const TensorView& t : batch.inputs) inputs[py::str(t.name)] = View(t);
      batch.times.infer_start = SteadyNowNs();
      outputs = execute_(batch.instance, ids, sizes, WithDeviceInputs(batch, inputs));
    } catch (py::error_already_set& e) {
      error = e.value();
    }
    batch.times.infer_end = SteadyNowNs();
    try {
      deliver_(ids, sizes, inputs, outputs, error);
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("pyserve deliver");  // a bug in the runner: show the traceback
    }
    batch.times.output_end = SteadyNowNs();
    if (error.is_none()) return Status::OK();
    return Status(StatusCode::kInternal, py::str(error).cast<std::string>());
  }

  void Reject(const std::vector<uint64_t>& request_ids, const Status& status) override {
    py::gil_scoped_acquire gil;
    try {
      reject_(request_ids, CodeName(status.code()), status.message());
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("pyserve reject");
    }
  }

 private:
  // What the backend computes on: the host views, with each input the core copied to the
  // GPU replaced by a DeviceTensor (whose `host` is the view).
  static py::dict WithDeviceInputs(const Batch& batch, const py::dict& inputs) {
    if (batch.device_inputs.empty()) return inputs;
    py::dict out = inputs.attr("copy")();
    for (const TensorView& t : batch.device_inputs) {
      py::str name(t.name);
      py::object host = inputs[name];
      out[name] = py::cast(DeviceTensor{t.name, reinterpret_cast<uintptr_t>(t.data), t.byte_size,
                                        t.shape, NumpyDtype(t.dtype), batch.device,
                                        reinterpret_cast<uintptr_t>(batch.stream), host});
    }
    return out;
  }

  py::object execute_, deliver_, reject_;
};

py::dict DurationDict(const Duration& d) {
  py::dict out;
  out["count"] = d.count;
  out["ns"] = d.ns;
  return out;
}

py::dict StatsDict(const ModelStats& s) {
  py::dict inference;
  inference["success"] = DurationDict(s.success);
  inference["fail"] = DurationDict(s.fail);
  inference["queue"] = DurationDict(s.queue);
  inference["compute_input"] = DurationDict(s.compute_input);
  inference["compute_infer"] = DurationDict(s.compute_infer);
  inference["compute_output"] = DurationDict(s.compute_output);
  py::list batches;
  for (const auto& [size, b] : s.batch_stats) {
    py::dict entry;
    entry["batch_size"] = size;
    entry["compute_input"] = DurationDict(b.compute_input);
    entry["compute_infer"] = DurationDict(b.compute_infer);
    entry["compute_output"] = DurationDict(b.compute_output);
    batches.append(entry);
  }
  py::dict out;
  out["last_inference"] = s.last_inference_ms;
  out["inference_count"] = s.inference_count;
  out["execution_count"] = s.execution_count;
  out["inference_stats"] = inference;
  out["batch_stats"] = batches;
  return out;
}

// Owns the core scheduler; stops it without the GIL so workers inside Python can finish.
class PyScheduler {
 public:
  PyScheduler(const SchedulerOptions& options, py::object execute, py::object deliver,
              py::object reject) {
    auto executor = std::make_shared<PyExecutor>(std::move(execute), std::move(deliver),
                                                 std::move(reject));
    ThrowIfError(Scheduler::Create(options, std::move(executor), &scheduler_));
  }

  ~PyScheduler() {
    py::gil_scoped_release nogil;
    scheduler_.reset();
  }

  // inputs: a sequence of (name, datatype code, shape, buffer). The buffers must stay alive
  // until the request's completion is delivered; the core keeps only pointers.
  void Enqueue(uint64_t request_id, const py::sequence& inputs, uint32_t batch_size,
               uint64_t priority, uint64_t timeout_us) {
    auto request = std::make_unique<InferRequest>();
    request->id = request_id;
    request->batch_size = batch_size;
    request->priority = priority;
    request->timeout_us = timeout_us;
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
  uint64_t PendingCount() const { return scheduler_->PendingCount(); }
  py::dict Statistics() const { return StatsDict(scheduler_->Statistics()); }

 private:
  std::unique_ptr<Scheduler> scheduler_;
};

}  // namespace

void RegisterScheduler(py::module_& m) {
  py::class_<QueuePolicy>(m, "QueuePolicy")
      .def(py::init<>())
      .def_readwrite("delay_on_timeout", &QueuePolicy::delay_on_timeout)
      .def_readwrite("default_timeout_us", &QueuePolicy::default_timeout_us)
      .def_readwrite("allow_timeout_override", &QueuePolicy::allow_timeout_override)
      .def_readwrite("max_queue_size", &QueuePolicy::max_queue_size);

  py::class_<BatchingOptions>(m, "BatchingOptions")
      .def(py::init<>())
      .def_readwrite("max_batch_size", &BatchingOptions::max_batch_size)
      .def_readwrite("preferred_batch_sizes", &BatchingOptions::preferred_batch_sizes)
      .def_readwrite("max_queue_delay_us", &BatchingOptions::max_queue_delay_us)
      .def_readwrite("priority_levels", &BatchingOptions::priority_levels)
      .def_readwrite("default_priority_level", &BatchingOptions::default_priority_level)
      .def_readwrite("default_policy", &BatchingOptions::default_policy)
      .def_readwrite("level_policies", &BatchingOptions::level_policies)
      .def_readwrite("equal_shape_inputs", &BatchingOptions::equal_shape_inputs)
      .def_readwrite("equal_input_sets", &BatchingOptions::equal_input_sets);

  py::class_<SchedulerOptions>(m, "SchedulerOptions")
      .def(py::init<>())
      .def_readwrite("model_name", &SchedulerOptions::model_name)
      .def_readwrite("instance_count", &SchedulerOptions::instance_count)
      .def_readwrite("instance_devices", &SchedulerOptions::instance_devices)
      .def_readwrite("device_inputs", &SchedulerOptions::device_inputs)
      .def_readwrite("queue_capacity", &SchedulerOptions::queue_capacity)
      .def_readwrite("dynamic_batching", &SchedulerOptions::dynamic_batching)
      .def_readwrite("batching", &SchedulerOptions::batching)
      .def_readwrite("delay_scheduler_count", &SchedulerOptions::delay_scheduler_count);

  py::class_<PyScheduler>(m, "Scheduler")
      .def(py::init<const SchedulerOptions&, py::object, py::object, py::object>(),
           py::arg("options"), py::arg("execute"), py::arg("deliver"), py::arg("reject"))
      .def("enqueue", &PyScheduler::Enqueue, py::arg("request_id"), py::arg("inputs"),
           py::arg("batch_size") = 1, py::arg("priority") = 0, py::arg("timeout_us") = 0)
      .def("stop", &PyScheduler::Stop)
      .def("statistics", &PyScheduler::Statistics)
      .def_property_readonly("inflight_count", &PyScheduler::InflightCount)
      .def_property_readonly("pending_count", &PyScheduler::PendingCount);
}

}  // namespace pyserve::bindings
