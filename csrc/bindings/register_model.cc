// pyserve._core.Model and friends: a served model version as the Python shell sees it. The
// backend's compute is called with the GIL once per batch (PyCompute); responses for requests
// submitted from Python come back through a PythonSink, one GIL hand-off per batch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "device.h"
#include "ensemble.h"
#include "host_memory.h"
#include "model.h"
#include "model_table.h"
#include "python_thread.h"
#include "rate_limiter.h"
#include "register.h"
#include "latency_summary.h"
#include "response_cache.h"
#include "response_sender.h"
#include "shared_memory.h"
#include "trace.h"
#include "bytes_tensor.h"

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
    case DataType::kBytes: return py::dtype("O");
    default: return py::dtype::of<uint8_t>();
  }
}

// BYTES elements as a numpy object array of bytes. Length prefixes were checked when the
// tensor entered the core; elements a short buffer lacks stay empty.
py::array BytesArray(const std::vector<int64_t>& dims, const uint8_t* data, size_t byte_size) {
  std::vector<py::ssize_t> shape(dims.begin(), dims.end());
  py::array array(py::dtype("O"), shape);
  auto** items = static_cast<PyObject**>(array.mutable_data());
  const py::ssize_t count = array.size();
  py::ssize_t i = 0;
  auto put = [&](const uint8_t* element, size_t length) {
    if (i == count) return;
    PyObject* item = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(element),
                                               static_cast<py::ssize_t>(length));
    if (item == nullptr) throw py::error_already_set();
    Py_XDECREF(items[i]);  // numpy filled the array with None
    items[i++] = item;
  };
  ForEachString(data, byte_size, put);
  while (i < count) put(data, 0);
  return array;
}

void MakeReadOnly(py::array& array) {
  py::detail::array_proxy(array.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
}

// Python objects whose memory a request's inputs view (the buffers a Python frontend
// submitted), held by the request and so by any input array a model keeps. A request may end
// on a core thread without the GIL: the references then wait for the next holder of the GIL
// (ReleasePending) instead of taking it there.
class HeldObjects {
 public:
  void Add(const py::handle& object) { objects_.push_back(object.inc_ref().ptr()); }
  ~HeldObjects() {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_.insert(pending_.end(), objects_.begin(), objects_.end());
  }
  static void ReleasePending() {  // GIL held
    std::vector<PyObject*> objects;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      objects.swap(pending_);
    }
    for (PyObject* object : objects) Py_DECREF(object);
  }

 private:
  std::vector<PyObject*> objects_;
  static inline std::mutex mutex_;
  static inline std::vector<PyObject*> pending_;
};

// The owner of a batch's input views: the gathered buffers and each request's own memory (its
// owner and held regions or objects), alive as long as the model keeps an array of them.
py::capsule BatchOwner(const Batch& batch) {
  auto* keep = new std::vector<std::shared_ptr<const void>>(batch.buffers.begin(),
                                                            batch.buffers.end());
  for (const auto& request : batch.requests) {
    keep->push_back(request->owner);
    keep->insert(keep->end(), request->held.begin(), request->held.end());
  }
  return py::capsule(keep, [](void* p) {
    delete static_cast<std::vector<std::shared_ptr<const void>>*>(p);
  });
}

// A read-only numpy view of a batch input: no copy; `owner` keeps its memory alive.
py::array View(const TensorView& t, const py::capsule& owner) {
  if (t.dtype == DataType::kBytes) return BytesArray(t.shape, t.data, t.byte_size);
  static const uint8_t kEmpty = 0;
  std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
  const void* data = t.data != nullptr ? t.data : &kEmpty;
  py::array array(NumpyDtype(t.dtype), shape, {}, data, owner);
  MakeReadOnly(array);
  return array;
}

// A read-only numpy array over an output's memory, which the array keeps alive.
py::array OutputArray(const OutputTensor& t) {
  if (t.dtype == DataType::kBytes) return BytesArray(t.shape, t.data, t.byte_size);
  static const uint8_t kEmpty = 0;
  auto* keep = new std::shared_ptr<const void>(t.memory);
  py::capsule owner(keep, [](void* p) { delete static_cast<std::shared_ptr<const void>*>(p); });
  std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
  py::array array(NumpyDtype(t.dtype), shape, {}, t.data != nullptr ? t.data : &kEmpty, owner);
  MakeReadOnly(array);
  return array;
}

StatusCode CodeOf(const std::string& name) {
  for (StatusCode code : {StatusCode::kInvalidArg, StatusCode::kNotFound, StatusCode::kUnavailable,
                          StatusCode::kInternal, StatusCode::kUnsupported,
                          StatusCode::kAlreadyExists, StatusCode::kCancelled}) {
    if (name == CodeName(code)) return code;
  }
  return StatusCode::kInternal;
}

// A Python exception as a Status: a ServerError keeps its code and text.
Status StatusOf(const py::handle& error) {
  static py::handle server_error = py::object(py::module_::import("pyserve.errors").attr("ServerError")).release();
  if (py::isinstance(error, server_error)) {
    return Status(CodeOf(py::str(error.attr("code").attr("value"))),
                  py::str(error.attr("message")).cast<std::string>());
  }
  return Status(StatusCode::kInternal, py::str(error).cast<std::string>());
}

// BYTES as Triton sends them: a 4-byte little-endian length, then the bytes (str as UTF-8).
Status SerializeStrings(const py::array& array, std::string* out) {
  auto* const* items = static_cast<PyObject* const*>(array.data());
  for (py::ssize_t i = 0; i < array.size(); ++i) {
    py::object item = py::reinterpret_borrow<py::object>(items[i]);
    if (!PyBytes_Check(item.ptr())) {
      item = PyUnicode_Check(item.ptr()) ? py::object(item.attr("encode")("utf-8"))
                                         : py::object(py::bytes(item));
    }
    char* data = nullptr;
    Py_ssize_t length = 0;
    if (PyBytes_AsStringAndSize(item.ptr(), &data, &length) != 0) throw py::error_already_set();
    const uint32_t prefix = static_cast<uint32_t>(length);
    out->append(reinterpret_cast<const char*>(&prefix), 4);
    out->append(data, static_cast<size_t>(length));
  }
  return Status::OK();
}

// The config's outputs among `outputs` (and the model's state outputs), in native memory.
Status Tensors(const ModelSpec& model, const py::handle& outputs,
               const std::vector<std::string>& wanted, std::vector<OutputTensor>* tensors) {
  // Leaked on purpose: a static py::object would be released after the interpreter is gone.
  static py::handle ascontiguousarray =
      py::object(py::module_::import("numpy").attr("ascontiguousarray")).release();
  const size_t declared = model.outputs.size();
  for (size_t index = 0; index < declared + model.state_outputs.size(); ++index) {
    const bool extra = index >= declared;
    const TensorSpec& spec = extra ? model.state_outputs[index - declared] : model.outputs[index];
    if (extra && model.FindOutput(spec.name) != nullptr) continue;  // taken as an output
    py::str key(spec.name);
    if (!outputs.contains(key)) continue;
    // A state output is kept for the sequence's state, whatever the clients ask for.
    if (!wanted.empty() && std::find(wanted.begin(), wanted.end(), spec.name) == wanted.end() &&
        !model.IsStateOutput(spec.name)) {
      continue;
    }
    OutputTensor t;
    t.name = spec.name;
    t.dtype = spec.dtype;
    py::object value = outputs[key];
    const py::dtype dtype = NumpyDtype(spec.dtype);
    // A C-contiguous array of the type is copied out as it is (no call); ascontiguousarray
    // also makes a 0-d array 1-d, so those still take the call.
    bool as_is = false;
    if (py::isinstance<py::array>(value)) {
      const auto given = py::reinterpret_borrow<py::array>(value);
      as_is = given.ndim() > 0 && (given.flags() & py::array::c_style) &&
              py::detail::npy_api::get().PyArray_EquivTypes_(given.dtype().ptr(), dtype.ptr());
    }
    py::array array = as_is ? py::reinterpret_borrow<py::array>(value)
                            : py::array(ascontiguousarray(value, dtype));
    t.shape.assign(array.shape(), array.shape() + array.ndim());
    if (spec.dtype == DataType::kBytes) {
      auto bytes = std::make_shared<std::string>();
      Status status = SerializeStrings(array, bytes.get());
      if (!status.ok()) return status;
      t.data = reinterpret_cast<const uint8_t*>(bytes->data());
      t.byte_size = bytes->size();
      t.memory = std::move(bytes);
    } else {
      t.byte_size = static_cast<size_t>(array.nbytes());
      std::shared_ptr<uint8_t> memory = HostMemoryPool::Global().Acquire(std::max<size_t>(t.byte_size, 1));
      if (!memory) return Status(StatusCode::kInternal, "out of host memory for outputs of model '" + model.name + "'");
      if (t.byte_size != 0) std::memcpy(memory.get(), array.data(), t.byte_size);
      t.data = memory.get();
      t.memory = std::move(memory);
    }
    tensors->push_back(std::move(t));
  }
  return Status::OK();
}

// What a backend returns for a request it released with RESCHEDULE (iterative sequences):
// the request is queued again instead of answered.
py::handle Reschedule() {
  static py::handle sentinel = py::module_::import("builtins").attr("object")().release();
  return sentinel;
}

// Whether the clients of a batch's requests went away, for models that ask while they run
// (pb_utils' request.is_cancelled()): one per batch, holding the requests' owners, in which
// the flags live.
class BatchCancellation {
 public:
  explicit BatchCancellation(const Batch& batch) {
    for (const auto& r : batch.requests) {
      owners_.push_back(r->owner);
      flags_.push_back(r->cancelled);
    }
  }
  bool IsCancelled(size_t index) const {
    return index < flags_.size() && flags_[index] != nullptr &&
           flags_[index]->load(std::memory_order_relaxed);
  }

 private:
  std::vector<std::shared_ptr<void>> owners_;
  std::vector<const std::atomic<bool>*> flags_;
};

// The backend's compute, with the GIL taken once per batch:
//   result = execute(instance, batch_sizes, inputs, requests)
// `requests` is None unless the spec asks for request_info: then one (tag, id, parameters,
// requested output names, correlation ID, sequence flags, ResponseSender or None,
// (BatchCancellation, index) or None) tuple per request; a decoupled model's answers go
// through the senders (which also say whether the request is cancelled), and its `result` is
// None. `result` is a dict of batch outputs or a list with one dict (or exception) per
// request; outputs are copied into native memory here. A list item may be RESCHEDULE
// (iterative sequences; for a decoupled model the list has RESCHEDULE or None per request).
class PyCompute : public BatchCompute {
 public:
  PyCompute(py::object execute, const ModelSpec& spec) : execute_(std::move(execute)), spec_(spec) {}
  ~PyCompute() override {
    if (!execute_) return;  // released on stop: no GIL needed (it may be finalizing)
    py::gil_scoped_acquire gil;
    execute_ = py::object();
  }

  void Release() { execute_ = py::object(); }  // GIL held; breaks the cycle runner -> model

  Status Compute(Batch& batch, BatchOutputs* out) override {
    PythonThreadGil gil;
    if (!execute_) return Status(StatusCode::kUnavailable, "model '" + spec_.name + "' is stopped");
    try {
      py::list sizes(batch.requests.size());
      for (size_t i = 0; i < batch.requests.size(); ++i) sizes[i] = py::int_(batch.requests[i]->batch_size);
      HeldObjects::ReleasePending();
      py::dict inputs;
      const py::capsule owner = BatchOwner(batch);
      for (const TensorView& t : batch.inputs) inputs[py::str(t.name)] = View(t, owner);
      batch.times.infer_start = SteadyNowNs();
      py::object result = execute_(batch.instance, sizes, WithDeviceInputs(batch, inputs),
                                   RequestInfos(batch));
      batch.times.infer_end = SteadyNowNs();
      return Convert(batch, result, out);
    } catch (py::error_already_set& e) {
      return StatusOf(e.value());
    }
  }

 private:
  py::object RequestInfos(const Batch& batch) const {
    if (!spec_.request_info) return py::none();
    py::list infos;
    py::object cancellation = batch.senders.empty()
                                  ? py::cast(std::make_shared<BatchCancellation>(batch))
                                  : py::none();
    for (size_t i = 0; i < batch.requests.size(); ++i) {
      const auto& r = batch.requests[i];
      py::dict parameters;
      for (const Parameter& p : r->parameters) {
        switch (p.kind) {
          case Parameter::Kind::kBool: parameters[py::str(p.key)] = py::bool_(p.bool_value); break;
          case Parameter::Kind::kInt: parameters[py::str(p.key)] = py::int_(p.int_value); break;
          case Parameter::Kind::kDouble: parameters[py::str(p.key)] = py::float_(p.double_value); break;
          case Parameter::Kind::kString: parameters[py::str(p.key)] = py::str(p.string_value); break;
        }
      }
      py::list outputs;
      for (const RequestedOutput& o : r->outputs) outputs.append(py::str(o.name));
      const CorrelationId& sequence = r->correlation_id;
      py::object correlation_id = sequence.is_text ? py::object(py::str(sequence.text))
                                                   : py::object(py::int_(sequence.number));
      py::object sender = i < batch.senders.size() ? py::cast(batch.senders[i]) : py::none();
      infos.append(py::make_tuple(r->id, py::str(r->request_id), parameters, outputs,
                                  correlation_id, r->flags, sender,
                                  sender.is_none() ? py::object(py::make_tuple(cancellation, i))
                                                   : py::none()));
    }
    return infos;
  }

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

  Status Convert(Batch& batch, const py::object& result, BatchOutputs* out) const {
    if (spec_.decoupled && result.is_none()) return Status::OK();  // answered by the senders
    if (py::isinstance<py::dict>(result)) return Tensors(spec_, result, Wanted(batch), &out->batch);
    if (!py::isinstance<py::list>(result)) {
      return Status(StatusCode::kInternal, "model '" + spec_.name + "' returned " +
                                               py::str(py::type::of(result).attr("__name__")).cast<std::string>() +
                                               ", not a dict of outputs");
    }
    py::list items = result;
    if (items.size() != batch.requests.size()) {
      return Status(StatusCode::kInternal, "model '" + spec_.name + "' returned " +
                                               std::to_string(items.size()) + " responses for " +
                                               std::to_string(batch.requests.size()) + " requests");
    }
    out->per_request = true;
    out->requests.resize(items.size());
    out->request_status.resize(items.size());
    static py::handle exception = py::reinterpret_borrow<py::object>(PyExc_Exception).release();
    for (size_t i = 0; i < items.size(); ++i) {
      py::handle item = items[i];
      if (item.is(Reschedule())) {
        batch.reschedule.resize(items.size());
        batch.reschedule[i] = 1;
      } else if (spec_.decoupled) {
        continue;  // answered by its sender
      } else if (py::isinstance<py::dict>(item)) {
        out->request_status[i] = Tensors(spec_, item, {}, &out->requests[i]);
      } else if (py::isinstance(item, exception)) {
        out->request_status[i] = StatusOf(item);
      } else {
        out->request_status[i] = Status(
            StatusCode::kInternal, "model '" + spec_.name + "' returned " +
                                       py::str(py::type::of(item).attr("__name__")).cast<std::string>() +
                                       " for a request");
      }
    }
    return Status::OK();
  }

  // The outputs some request of the batch asks for (empty = all).
  std::vector<std::string> Wanted(const Batch& batch) const {
    std::vector<std::string> names;
    for (const auto& r : batch.requests) {
      if (r->outputs.empty()) return {};
      for (const RequestedOutput& o : r->outputs) names.push_back(o.name);
    }
    return names;
  }

  py::object execute_;
  const ModelSpec spec_;
};

// Responses for requests submitted from Python: the batch's completions go to `callback` in
// one call, as a list of (tag, outputs, error, final): outputs a list of (name, datatype,
// array), or None for an error or a decoupled model's bare final flag; error None or (code
// name, message); final False for a decoupled model's responses before its last.
class PythonSink : public ResponseSink {
 public:
  explicit PythonSink(py::object callback) : callback_(std::move(callback)) {}
  ~PythonSink() override {
    if (!callback_) return;
    py::gil_scoped_acquire gil;
    callback_ = py::object();
  }

  void Close() { callback_ = py::object(); }  // GIL held

  void Deliver(std::vector<Completion>& completions) override {
    PythonThreadGil gil;
    HeldObjects::ReleasePending();
    if (!callback_) return;
    try {
      py::list results;
      for (Completion& c : completions) {
        const InferResponse& r = c.response;
        if (!r.status.ok()) {
          results.append(py::make_tuple(c.tag, py::none(),
                                        py::make_tuple(CodeName(r.status.code()), r.status.message()),
                                        c.final));
          continue;
        }
        if (c.empty) {
          results.append(py::make_tuple(c.tag, py::none(), py::none(), c.final));
          continue;
        }
        py::list outputs;
        for (const OutputTensor& t : r.outputs) {
          outputs.append(py::make_tuple(t.name, WireName(t.dtype), OutputArray(t)));
        }
        results.append(py::make_tuple(c.tag, outputs, py::none(), c.final));
      }
      callback_(results);
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("pyserve response delivery");
    } catch (const std::exception& e) {  // pybind11's own errors (a cast, an array's shape)
      PyErr_SetString(PyExc_RuntimeError, e.what());
      PyErr_WriteUnraisable(nullptr);
    }
  }

 private:
  py::object callback_;
};

// Set when the caller of a Python-submitted request goes away: the core then answers the
// request CANCELLED instead of computing it, if it is still queued.
struct CancelFlag {
  std::atomic<bool> value{false};
};

class PyModel {
 public:
  PyModel(const ModelSpec& spec, const SchedulerOptions& options, py::object execute)
      : compute_(std::make_shared<PyCompute>(std::move(execute), spec)) {
    ThrowIfError(Model::Create(spec, options, compute_, &model_));
  }

  // An ensemble: its steps run on the models `table` serves (no compute of its own).
  PyModel(const ModelSpec& spec, std::vector<EnsembleStep> steps, std::shared_ptr<ModelTable> table) {
    std::weak_ptr<const ModelTable> models = table;
    ThrowIfError(Model::Create(
        spec,
        [&](std::shared_ptr<ModelResponder> responder, std::unique_ptr<RequestScheduler>* scheduler) {
          return EnsembleScheduler::Create(spec, std::move(steps), models, std::move(responder),
                                           scheduler);
        },
        &model_));
  }

  ~PyModel() {
    if (stopped_) return;  // nothing left to wait for (and it may be finalizing)
    py::gil_scoped_release nogil;
    model_.reset();
  }

  // inputs: (name, datatype, shape, buffer) each; the buffers must stay alive until the
  // response is delivered (the core keeps only pointers). outputs: (name, classification k)
  // or (name, k, SharedMemoryBlock) for an output written into a client's region.
  void Submit(uint64_t tag, PythonSink& sink, const py::sequence& inputs,
              const std::string& request_id, const py::sequence& outputs,
              const py::dict& parameters, uint64_t priority, uint64_t timeout_us,
              std::shared_ptr<CancelFlag> cancel, const std::string& traceparent,
              const py::object& correlation_id, uint32_t flags) {
    auto request = std::make_unique<InferRequest>();
    request->id = tag;
    if (cancel) request->cancelled = &cancel->value;
    request->owner = std::move(cancel);
    request->sink = &sink;
    request->request_id = request_id;
    request->priority = priority;
    request->timeout_us = timeout_us;
    if (py::isinstance<py::str>(correlation_id)) {
      request->correlation_id.text = correlation_id.cast<std::string>();
      request->correlation_id.is_text = true;
    } else if (!correlation_id.is_none()) {
      request->correlation_id.number = correlation_id.cast<uint64_t>();
    }
    request->flags = flags;
    for (const py::handle item : outputs) {
      auto output = item.cast<py::tuple>();
      RequestedOutput requested{output[0].cast<std::string>(), output[1].cast<uint32_t>(),
                                nullptr};
      if (output.size() > 2 && !output[2].is_none()) {
        requested.shared_memory = output[2].cast<std::shared_ptr<SharedMemoryBlock>>();
      }
      request->outputs.push_back(std::move(requested));
    }
    request->inputs.reserve(inputs.size());
    auto objects = std::make_shared<HeldObjects>();
    for (const py::handle item : inputs) {
      auto tuple = item.cast<py::tuple>();
      objects->Add(tuple[3]);
      TensorView view;
      view.name = tuple[0].cast<std::string>();
      view.dtype = DataTypeFromWire(tuple[1].cast<std::string>());
      view.shape = tuple[2].cast<std::vector<int64_t>>();
      py::buffer_info info = tuple[3].cast<py::buffer>().request();
      ssize_t expected = info.itemsize;
      for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
        if (info.shape[d] != 1 && info.strides[d] != expected) {
          ThrowIfError(Status(StatusCode::kInvalidArg,
                              "input '" + view.name + "' is not a contiguous buffer"));
        }
        expected *= info.shape[d];
      }
      view.data = static_cast<const uint8_t*>(info.ptr);
      view.byte_size = static_cast<size_t>(info.size * info.itemsize);
      request->inputs.push_back(std::move(view));
    }
    request->held.push_back(std::move(objects));
    for (const auto& [key, value] : parameters) {
      Parameter p;
      p.key = py::str(key);
      if (py::isinstance<py::bool_>(value)) {
        p.kind = Parameter::Kind::kBool;
        p.bool_value = value.cast<bool>();
      } else if (py::isinstance<py::int_>(value)) {
        p.kind = Parameter::Kind::kInt;
        p.int_value = value.cast<int64_t>();
      } else if (py::isinstance<py::float_>(value)) {
        p.kind = Parameter::Kind::kDouble;
        p.double_value = value.cast<double>();
      } else {
        p.string_value = py::str(value);
      }
      request->parameters.push_back(std::move(p));
    }
    if (Tracer::Active()) {
      request->trace = Tracer::Get().Sample(model_->spec().name, model_->spec().version,
                                            request_id, traceparent);
      if (request->trace) request->trace->Stamp("REQUEST_START", SteadyNowNs());
    }
    Status status;
    {
      py::gil_scoped_release nogil;  // preserve_ordering may deliver to sinks from here
      status = model_->Submit(request);
    }
    ThrowIfError(status);
  }

  // False when the timeout passed with an instance still executing (abandoned).
  bool Stop(double timeout_seconds) {
    bool stopped;
    {
      py::gil_scoped_release nogil;
      stopped = model_->Stop(timeout_seconds);
    }
    if (stopped && compute_) compute_->Release();  // an abandoned instance may still be calling it
    stopped_ = true;
    return stopped;
  }

  py::dict Statistics() const;
  const std::shared_ptr<Model>& model() const { return model_; }

 private:
  std::shared_ptr<PyCompute> compute_;
  std::shared_ptr<Model> model_;
  bool stopped_ = false;
};

py::dict DurationDict(const Duration& d) {
  py::dict out;
  out["count"] = d.count;
  out["ns"] = d.ns;
  return out;
}

py::dict PyModel::Statistics() const {
  const ModelStats s = model_->Statistics();
  py::dict inference;
  inference["success"] = DurationDict(s.success);
  inference["fail"] = DurationDict(s.fail);
  inference["queue"] = DurationDict(s.queue);
  inference["compute_input"] = DurationDict(s.compute_input);
  inference["compute_infer"] = DurationDict(s.compute_infer);
  inference["compute_output"] = DurationDict(s.compute_output);
  inference["cache_hit"] = DurationDict(s.cache_hit);
  inference["cache_miss"] = DurationDict(s.cache_miss);
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
  py::dict responses;  // Triton's response_stats, keyed by the response's index
  for (const auto& [index, r] : model_->ResponseStatistics()) {
    py::dict entry;
    entry["compute_infer"] = DurationDict(r.compute_infer);
    entry["compute_output"] = DurationDict(r.compute_output);
    entry["success"] = DurationDict(r.success);
    entry["fail"] = DurationDict(r.fail);
    entry["empty_response"] = DurationDict(r.empty_response);
    entry["cancel"] = DurationDict(r.cancel);
    responses[py::str(std::to_string(index))] = entry;
  }
  out["response_stats"] = responses;
  return out;
}

TensorSpec MakeTensorSpec(const py::tuple& t) {
  // (name, datatype, dims, optional, reshape or None)
  TensorSpec spec;
  spec.name = t[0].cast<std::string>();
  spec.dtype = DataTypeFromWire(t[1].cast<std::string>());
  spec.dims = t[2].cast<std::vector<int64_t>>();
  spec.optional = t[3].cast<bool>();
  if (!t[4].is_none()) {
    spec.has_reshape = true;
    spec.reshape = t[4].cast<std::vector<int64_t>>();
  }
  return spec;
}

}  // namespace

void RegisterModel(py::module_& m) {
  m.attr("RESCHEDULE") = Reschedule();
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

  // kind: model_config.proto's Control.Kind number (START 0, READY 1, END 2, CORRID 3);
  // dtype: the protocol's type name.
  py::class_<SequenceControl>(m, "SequenceControl")
      .def(py::init([](const std::string& name, int kind, const std::string& dtype,
                       double false_value, double true_value) {
             if (kind < 0 || kind > 3) throw py::value_error("unknown sequence control kind");
             SequenceControl control;
             control.name = name;
             control.kind = static_cast<SequenceControl::Kind>(kind);
             control.dtype = DataTypeFromWire(dtype);
             control.false_value = false_value;
             control.true_value = true_value;
             return control;
           }),
           py::arg("name"), py::arg("kind"), py::arg("dtype"), py::arg("false_value") = 0.0,
           py::arg("true_value") = 1.0);

  // One implicit state: its initial tensor (shape with the batch dimension where the model
  // batches, and bytes) is what every sequence starts from.
  py::class_<StateSpec>(m, "StateSpec")
      .def(py::init([](const std::string& input_name, const std::string& output_name,
                       const std::string& dtype, std::vector<int64_t> initial_shape,
                       const py::bytes& initial) {
             StateSpec spec;
             spec.input_name = input_name;
             spec.output_name = output_name;
             spec.dtype = DataTypeFromWire(dtype);
             spec.initial_shape = std::move(initial_shape);
             spec.initial = std::make_shared<const std::string>(initial);
             return spec;
           }),
           py::arg("input_name"), py::arg("output_name"), py::arg("dtype"),
           py::arg("initial_shape"), py::arg("initial"))
      .def_readonly("input_name", &StateSpec::input_name)
      .def_readonly("initial_shape", &StateSpec::initial_shape);

  py::class_<SequenceBatchingOptions>(m, "SequenceBatchingOptions")
      .def(py::init<>())
      .def_readwrite("oldest", &SequenceBatchingOptions::oldest)
      .def_readwrite("max_batch_size", &SequenceBatchingOptions::max_batch_size)
      .def_readwrite("max_candidate_sequences", &SequenceBatchingOptions::max_candidate_sequences)
      .def_readwrite("preferred_batch_sizes", &SequenceBatchingOptions::preferred_batch_sizes)
      .def_readwrite("max_queue_delay_us", &SequenceBatchingOptions::max_queue_delay_us)
      .def_readwrite("minimum_slot_utilization",
                     &SequenceBatchingOptions::minimum_slot_utilization)
      .def_readwrite("max_sequence_idle_us", &SequenceBatchingOptions::max_sequence_idle_us)
      .def_readwrite("iterative", &SequenceBatchingOptions::iterative)
      .def_readwrite("backlog_delay_count", &SequenceBatchingOptions::backlog_delay_count)
      .def_readwrite("controls", &SequenceBatchingOptions::controls)
      .def_readwrite("states", &SequenceBatchingOptions::states);

  py::class_<SchedulerOptions>(m, "SchedulerOptions")
      .def(py::init<>())
      .def_readwrite("model_name", &SchedulerOptions::model_name)
      .def_readwrite("instance_count", &SchedulerOptions::instance_count)
      .def_readwrite("instance_devices", &SchedulerOptions::instance_devices)
      .def_readwrite("device_inputs", &SchedulerOptions::device_inputs)
      .def_readwrite("queue_capacity", &SchedulerOptions::queue_capacity)
      .def_readwrite("max_pending", &SchedulerOptions::max_pending)
      .def_readwrite("dynamic_batching", &SchedulerOptions::dynamic_batching)
      .def_readwrite("batching", &SchedulerOptions::batching)
      .def_readwrite("sequence_batching", &SchedulerOptions::sequence_batching)
      .def_readwrite("sequence", &SchedulerOptions::sequence)
      .def_readwrite("delay_scheduler_count", &SchedulerOptions::delay_scheduler_count)
      .def_readwrite("instance_policies", &SchedulerOptions::instance_policies)
      .def_readwrite("rate_limiter", &SchedulerOptions::rate_limiter)
      .def_readwrite("instance_rate_limits", &SchedulerOptions::instance_rate_limits);

  // resources: --rate-limit-resource's (name, count, device; -1 = every device).
  py::class_<RateLimiter, std::shared_ptr<RateLimiter>>(m, "RateLimiter")
      .def(py::init([](const std::vector<std::tuple<std::string, uint64_t, int>>& resources) {
             std::vector<ServerResource> server;
             for (const auto& [name, count, device] : resources) {
               server.push_back({name, count, device});
             }
             return std::make_shared<RateLimiter>(server);
           }),
           py::arg("resources") = std::vector<std::tuple<std::string, uint64_t, int>>{})
      .def("capacity", &RateLimiter::Capacity, py::arg("name"), py::arg("device"),
           "A resource's count on a device (-2: a global one), 0 when unknown.");

  // resources: an instance group's rate_limiter resources as (name, global, count).
  py::class_<InstanceRateLimit>(m, "InstanceRateLimit")
      .def(py::init([](const std::vector<std::tuple<std::string, bool, uint64_t>>& resources,
                       uint32_t priority, int device) {
             InstanceRateLimit limit;
             for (const auto& [name, global, count] : resources) {
               limit.resources.push_back({name, global, count});
             }
             limit.priority = priority;
             limit.device = device;
             return limit;
           }),
           py::arg("resources"), py::arg("priority") = 0, py::arg("device") = 0);

  py::class_<HostPolicy>(m, "HostPolicy")
      .def(py::init([](std::vector<int> cpus, int numa_node) {
             return HostPolicy{std::move(cpus), numa_node};
           }),
           py::arg("cpus") = std::vector<int>{}, py::arg("numa_node") = -1)
      .def_readonly("cpus", &HostPolicy::cpus)
      .def_readonly("numa_node", &HostPolicy::numa_node);
  m.def("apply_host_policy", [](const HostPolicy& policy) { ThrowIfError(ApplyHostPolicy(policy)); },
        "Applies a host policy to the calling thread.");
  m.def("reset_numa_memory_policy", [] { ThrowIfError(ResetNumaMemoryPolicy()); },
        "The system's default memory policy for the calling thread.");

  py::class_<ModelSpec>(m, "ModelSpec")
      .def(py::init([](const std::string& name, int64_t version, uint32_t max_batch_size,
                       const std::vector<py::tuple>& inputs, const std::vector<py::tuple>& outputs,
                       std::map<std::string, std::vector<std::string>> labels,
                       bool preserve_ordering, bool request_info, bool decoupled,
                       const std::vector<py::tuple>& state_outputs) {
             ModelSpec spec;
             spec.name = name;
             spec.version = version;
             spec.max_batch_size = max_batch_size;
             for (const auto& t : inputs) spec.inputs.push_back(MakeTensorSpec(t));
             for (const auto& t : outputs) spec.outputs.push_back(MakeTensorSpec(t));
             for (const auto& t : state_outputs) spec.state_outputs.push_back(MakeTensorSpec(t));
             spec.labels = std::move(labels);
             spec.preserve_ordering = preserve_ordering;
             spec.request_info = request_info;
             spec.decoupled = decoupled;
             return spec;
           }),
           py::arg("name"), py::arg("version"), py::arg("max_batch_size"), py::arg("inputs"),
           py::arg("outputs"), py::arg("labels") = std::map<std::string, std::vector<std::string>>{},
           py::arg("preserve_ordering") = false, py::arg("request_info") = false,
           py::arg("decoupled") = false, py::arg("state_outputs") = std::vector<py::tuple>{})
      .def_property_readonly("name", [](const ModelSpec& s) { return s.name; })
      .def_property_readonly("version", [](const ModelSpec& s) { return s.version; });

  py::class_<CancelFlag, std::shared_ptr<CancelFlag>>(m, "CancelFlag")
      .def(py::init<>())
      .def("set", [](CancelFlag& f) { f.value.store(true); })
      .def_property_readonly("is_set", [](const CancelFlag& f) { return f.value.load(); });

  // A decoupled model's sender for one request (the Python backend's response sender wraps
  // it): send(outputs dict or None, error (code name, message) or None, final).
  py::class_<ResponseSender, std::shared_ptr<ResponseSender>>(m, "ResponseSender")
      .def("send", [](ResponseSender& sender, const py::object& outputs, const py::object& error,
                      bool final) {
        std::vector<OutputTensor> tensors;
        Status failure;
        if (!error.is_none()) {
          auto pair = error.cast<py::tuple>();
          failure = Status(CodeOf(pair[0].cast<std::string>()), pair[1].cast<std::string>());
        } else if (!outputs.is_none()) {
          ThrowIfError(Tensors(sender.spec(), outputs, {}, &tensors));
        }
        Status status;
        {
          py::gil_scoped_release nogil;
          status = sender.Send(error.is_none() && !outputs.is_none() ? &tensors : nullptr,
                               failure, final);
        }
        ThrowIfError(status);
      }, py::arg("outputs"), py::arg("error"), py::arg("final"))
      .def("is_cancelled", &ResponseSender::Cancelled)
      .def_property_readonly("closed", &ResponseSender::IsClosed);

  py::class_<BatchCancellation, std::shared_ptr<BatchCancellation>>(m, "BatchCancellation")
      .def("is_cancelled", &BatchCancellation::IsCancelled, py::arg("index"));

  py::class_<PythonSink>(m, "PythonSink")
      .def(py::init<py::object>(), py::arg("callback"))
      .def("close", &PythonSink::Close);

  py::class_<PyModel>(m, "Model")
      .def(py::init<const ModelSpec&, const SchedulerOptions&, py::object>(), py::arg("spec"),
           py::arg("options"), py::arg("execute"))
      .def_static("ensemble", [](const ModelSpec& spec, const std::vector<py::tuple>& steps,
                                 std::shared_ptr<ModelTable> table) {
        // steps: (model_name, model_version or -1, input_map, output_map, model_namespace)
        // each, the maps as {model tensor: ensemble tensor}
        std::vector<EnsembleStep> plan;
        for (const py::tuple& s : steps) {
          EnsembleStep step;
          step.model_name = s[0].cast<std::string>();
          step.model_version = s[1].cast<int64_t>();
          for (const auto& [k, v] : s[2].cast<py::dict>()) step.input_map.emplace_back(py::str(k), py::str(v));
          for (const auto& [k, v] : s[3].cast<py::dict>()) step.output_map.emplace_back(py::str(k), py::str(v));
          step.model_namespace = s[4].cast<std::string>();
          plan.push_back(std::move(step));
        }
        return std::make_unique<PyModel>(spec, std::move(plan), std::move(table));
      }, py::arg("spec"), py::arg("steps"), py::arg("table"))
      .def("submit", &PyModel::Submit, py::arg("tag"), py::arg("sink"), py::arg("inputs"),
           py::arg("request_id") = "", py::arg("outputs") = py::tuple(),
           py::arg("parameters") = py::dict(), py::arg("priority") = 0, py::arg("timeout_us") = 0,
           py::arg("cancel") = nullptr, py::arg("traceparent") = "",
           py::arg("correlation_id") = py::none(), py::arg("flags") = 0)
      .def("stop", &PyModel::Stop, py::arg("timeout") = -1.0)
      .def("enable_cache", [](PyModel& m, std::shared_ptr<ResponseCache> cache) {
        m.model()->EnableCache(std::move(cache));
      }, py::arg("cache"))
      .def("enable_summaries", [](PyModel& m) { m.model()->EnableSummaries(); })
      .def("latency_summaries", [](const PyModel& m, const std::vector<double>& quantiles) {
        py::dict out;  // phase -> (count, sum in us, the quantiles' values); empty when off
        const LatencySummaries* summaries = m.model()->Summaries();
        if (summaries == nullptr) return out;
        const uint64_t now = SteadyNowNs();
        for (int i = 0; i < static_cast<int>(LatencyPhase::kCount); ++i) {
          const auto phase = static_cast<LatencyPhase>(i);
          LatencySummaries::Summary s = summaries->Read(phase, quantiles, now);
          out[LatencyPhaseName(phase)] = py::make_tuple(s.count, s.sum_us, s.values);
        }
        return out;
      }, py::arg("quantiles"))
      .def("statistics", &PyModel::Statistics)
      .def("request_counts", [](const PyModel& m) {
        const RequestCounts c = m.model()->Counts();
        py::dict out;
        py::dict failures;  // by Triton's reason label
        uint64_t failure = 0;
        for (int i = 0; i < static_cast<int>(FailureReason::kCount); ++i) {
          failures[FailureReasonName(static_cast<FailureReason>(i))] = c.failure[i];
          failure += c.failure[i];
        }
        out["success"] = c.success;
        out["failure"] = failure;
        out["failures"] = failures;
        out["success_ns"] = c.success_ns;
        return out;
      })
      .def_property_readonly("inflight_count", [](const PyModel& m) { return m.model()->InflightCount(); })
      .def_property_readonly("pending_count", [](const PyModel& m) { return m.model()->scheduler().PendingCount(); });

  py::class_<ResponseCache, std::shared_ptr<ResponseCache>>(m, "ResponseCache")
      .def(py::init<size_t>(), py::arg("byte_size"))
      .def("usage", [](const ResponseCache& cache) {
        const ResponseCache::Usage u = cache.usage();
        py::dict out;
        out["capacity"] = u.capacity;
        out["used"] = u.used;
        out["entries"] = u.entries;
        out["hits"] = u.hits;
        out["misses"] = u.misses;
        out["evictions"] = u.evictions;
        out["lookup_ns"] = u.lookup_ns;
        out["insertion_ns"] = u.insertion_ns;
        return out;
      });

  py::class_<ModelTable, std::shared_ptr<ModelTable>>(m, "ModelTable")
      .def(py::init<>())
      // With `namespace`, the versions of `name` in that namespace (what ensembles' steps
      // resolve to with --model-namespacing); without, what requests naming `name` reach.
      .def("publish", [](ModelTable& table, const std::string& name, const std::vector<PyModel*>& versions,
                         const std::string& model_namespace) {
        std::vector<std::shared_ptr<Model>> models;
        for (PyModel* v : versions) models.push_back(v->model());
        table.PublishIn(model_namespace, name, std::move(models));
      }, py::arg("name"), py::arg("versions"), py::arg("namespace") = "")
      .def_property("server_ready", &ModelTable::ServerReady, &ModelTable::SetServerReady);
}

}  // namespace pyserve::bindings
