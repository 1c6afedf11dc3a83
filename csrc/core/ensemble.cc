#include "ensemble.h"

#include <algorithm>
#include <chrono>

#include "model_table.h"

namespace pyserve {

namespace {

uint64_t Span(uint64_t from, uint64_t to) { return to > from && from != 0 ? to - from : 0; }

bool SameDims(const std::vector<int64_t>& config, const std::vector<int64_t>& shape) {
  if (config.size() != shape.size()) return false;
  for (size_t i = 0; i < config.size(); ++i) {
    if (config[i] != -1 && shape[i] != -1 && config[i] != shape[i]) return false;
  }
  return true;
}

// Triton's ReshapeTensorDims: between a batching and a non-batching model, a tensor gains a
// batch dimension of 1 (when it matches the config without one) or loses one of 1 (when it
// does not match the config as it is). `batch_size` is 0 for a tensor without a batch dim.
std::vector<int64_t> StepShape(const std::vector<int64_t>& config_dims, bool batching,
                               uint32_t batch_size, const std::vector<int64_t>& shape) {
  if (batching == (batch_size != 0)) return shape;
  if (batching) {
    if (!SameDims(config_dims, shape)) return shape;
    std::vector<int64_t> batched{1};
    batched.insert(batched.end(), shape.begin(), shape.end());
    return batched;
  }
  if (SameDims(config_dims, shape) || batch_size != 1 || shape.empty()) return shape;
  return std::vector<int64_t>(shape.begin() + 1, shape.end());
}

std::string RequestLabel(const InferRequest& request) {  // Triton's LogRequest()
  return request.request_id.empty() ? "" : "[request id: " + request.request_id + "] ";
}

}  // namespace

// One ensemble request in flight.
struct EnsembleScheduler::Context {
  struct Tensor {
    bool ready = false;
    bool present = false;  // an optional ensemble input the request left out is ready, absent
    TensorView view;
    std::shared_ptr<const void> memory;  // a step output's memory; null for request inputs
    uint32_t batch_size = 0;             // 0: the tensor has no batch dimension
  };

  std::unique_ptr<InferRequest> request;
  std::mutex mutex;  // guards what follows; tensors are written once, before their readers run
  std::vector<Tensor> tensors;
  std::vector<uint32_t> waiting;  // per step: inputs not yet ready
  std::vector<uint8_t> batching;  // per step: its model batches (set before it is submitted)
  uint32_t running = 0;           // steps submitted and not yet answered
  Status status;                  // the first step error
  bool answered = false;
  uint64_t input_ns = 0, infer_ns = 0, output_ns = 0;  // the steps' compute, summed
};

Status EnsembleScheduler::Create(const ModelSpec& spec, std::vector<EnsembleStep> steps,
                                 std::weak_ptr<const ModelTable> table,
                                 std::shared_ptr<ModelResponder> responder,
                                 std::unique_ptr<RequestScheduler>* scheduler) {
  if (steps.empty()) {
    return Status(StatusCode::kInvalidArg, "must specify 'step' for ensemble '" + spec.name + "'");
  }
  std::unique_ptr<EnsembleScheduler> created(new EnsembleScheduler());
  created->name_ = spec.name;
  created->spec_ = spec;
  created->table_ = std::move(table);
  created->responder_ = std::move(responder);
  for (const TensorSpec& input : spec.inputs) created->inputs_.push_back(created->TensorIndex(input.name));
  for (const TensorSpec& output : spec.outputs) created->outputs_.push_back(created->TensorIndex(output.name));
  for (const EnsembleStep& step : steps) {
    Plan plan;
    plan.model_namespace = step.model_namespace;
    plan.model_name = step.model_name;
    if (step.model_version > 0) plan.version = std::to_string(step.model_version);
    const size_t index = created->steps_.size();
    for (const auto& [input, tensor] : step.input_map) {
      const size_t t = created->TensorIndex(tensor);
      plan.inputs.emplace_back(input, t);
      created->consumers_[t].push_back(index);
    }
    for (const auto& [output, tensor] : step.output_map) {
      plan.outputs.emplace_back(output, created->TensorIndex(tensor));
    }
    created->steps_.push_back(std::move(plan));
  }
  *scheduler = std::move(created);
  return Status::OK();
}

EnsembleScheduler::~EnsembleScheduler() { Stop(); }

size_t EnsembleScheduler::TensorIndex(const std::string& name) {
  auto found = std::find(tensor_names_.begin(), tensor_names_.end(), name);
  if (found != tensor_names_.end()) return static_cast<size_t>(found - tensor_names_.begin());
  tensor_names_.push_back(name);
  consumers_.emplace_back();
  return tensor_names_.size() - 1;
}

Status EnsembleScheduler::Enqueue(std::unique_ptr<InferRequest>& request) {
  if (stopping_.load(std::memory_order_seq_cst)) {
    return Status(StatusCode::kUnavailable, "model '" + name_ + "' is not accepting requests");
  }
  auto context = std::make_shared<Context>();
  context->tensors.resize(tensor_names_.size());
  context->batching.resize(steps_.size());
  for (const Plan& plan : steps_) context->waiting.push_back(static_cast<uint32_t>(plan.inputs.size()));
  request->enqueue_ns = SteadyNowNs();
  const uint32_t batch_size = spec_.max_batch_size > 0 ? request->batch_size : 0;
  for (const TensorView& input : request->inputs) {  // the model checked the names
    for (size_t index : inputs_) {
      if (tensor_names_[index] != input.name) continue;
      Context::Tensor& tensor = context->tensors[index];
      tensor.present = true;
      tensor.view = input;
      tensor.batch_size = batch_size;
    }
  }
  std::vector<size_t> ready;
  for (size_t index : inputs_) {
    context->tensors[index].ready = true;
    for (size_t step : consumers_[index]) {
      if (--context->waiting[step] == 0) ready.push_back(step);
    }
  }
  inflight_.fetch_add(1, std::memory_order_acq_rel);
  context->request = std::move(request);
  context->running = static_cast<uint32_t>(ready.size());
  Launch(context, ready);
  FinishIfDone(context);
  return Status::OK();
}

void EnsembleScheduler::Launch(const std::shared_ptr<Context>& context,
                               const std::vector<size_t>& steps) {
  for (size_t step : steps) {
    Status status = Submit(context, step);
    if (status.ok()) continue;
    {
      std::lock_guard<std::mutex> lock(context->mutex);
      StepDone(*context, step, nullptr, status);
    }
    FinishIfDone(context);
  }
}

Status EnsembleScheduler::Submit(const std::shared_ptr<Context>& context, size_t step) {
  const Plan& plan = steps_[step];
  std::shared_ptr<const ModelTable> table = table_.lock();
  std::shared_ptr<Model> model =
      table ? table->FindIn(plan.model_namespace, plan.model_name, plan.version) : nullptr;
  if (!model) {
    return Status(StatusCode::kUnavailable,
                  "Request for unknown model: '" + plan.model_name + "' " +
                      (plan.version.empty() ? "has no available versions"
                                            : "version " + plan.version + " is not found"));
  }
  const ModelSpec& spec = model->spec();
  const bool batching = spec.max_batch_size > 0;
  context->batching[step] = batching;
  const InferRequest& original = *context->request;  // kept until every step has answered
  auto request = std::make_unique<InferRequest>();
  request->id = step;
  request->sink = this;
  request->owner = context;
  request->request_id = original.request_id;
  request->parameters = original.parameters;
  request->priority = original.priority;
  request->timeout_us = original.timeout_us;
  request->correlation_id = original.correlation_id;
  request->flags = original.flags;
  request->cancelled = original.cancelled;
  for (const auto& [input, index] : plan.inputs) {
    const Context::Tensor& tensor = context->tensors[index];
    if (!tensor.present) continue;  // an optional input left out: the step's is optional too
    TensorView view = tensor.view;
    view.name = input;
    if (const TensorSpec* config = spec.FindInput(input)) {
      view.shape = StepShape(config->dims, batching, tensor.batch_size, view.shape);
    }
    request->inputs.push_back(std::move(view));
    if (tensor.memory) request->held.push_back(tensor.memory);
  }
  for (const auto& [output, index] : plan.outputs) {
    request->outputs.push_back(RequestedOutput{output, 0, nullptr});
  }
  return table->SubmitIn(plan.model_namespace, plan.model_name, plan.version, &model, request);
}

void EnsembleScheduler::Deliver(std::vector<Completion>& completions) {
  for (Completion& completion : completions) {
    auto context = std::static_pointer_cast<Context>(completion.owner);
    std::vector<size_t> ready;
    {
      std::lock_guard<std::mutex> lock(context->mutex);
      ready = StepDone(*context, completion.tag, &completion, Status::OK());
    }
    Launch(context, ready);
    FinishIfDone(context);
  }
}

std::vector<size_t> EnsembleScheduler::StepDone(Context& context, size_t step,
                                                Completion* completion, const Status& refusal) {
  if (completion != nullptr && !completion->final) {  // a decoupled step's responses
    if (context.status.ok()) {
      context.status = Status(StatusCode::kUnsupported,
                              "model '" + steps_[step].model_name +
                                  "' is decoupled: pyserve's ensembles take one response per step");
    }
    return {};  // its final completion ends the step
  }
  --context.running;
  const Status& status = completion != nullptr ? completion->response.status : refusal;
  if (!status.ok() && context.status.ok()) context.status = status;
  if (!context.status.ok()) return {};  // failed: no further steps
  const BatchTimes& times = completion->times;
  context.input_ns += Span(times.input_start, times.infer_start);
  context.infer_ns += Span(times.infer_start, times.infer_end);
  context.output_ns += Span(times.infer_end, SteadyNowNs());
  std::vector<size_t> ready;
  for (OutputTensor& output : completion->response.outputs) {
    for (const auto& [name, index] : steps_[step].outputs) {
      if (name != output.name) continue;
      Context::Tensor& tensor = context.tensors[index];
      if (tensor.ready) continue;
      tensor.ready = tensor.present = true;
      tensor.view = TensorView{"", output.dtype, output.shape, output.data, output.byte_size};
      tensor.memory = output.memory;
      tensor.batch_size =
          context.batching[step] ? static_cast<uint32_t>(output.shape.empty() ? 1 : output.shape[0]) : 0;
      for (size_t next : consumers_[index]) {
        if (--context.waiting[next] == 0) ready.push_back(next);
      }
    }
  }
  context.running += static_cast<uint32_t>(ready.size());
  return ready;
}

void EnsembleScheduler::FinishIfDone(const std::shared_ptr<Context>& context) {
  std::unique_ptr<InferRequest> request;
  Status status;
  BatchOutputs outputs;
  uint64_t input_ns, infer_ns, output_ns;
  {
    std::lock_guard<std::mutex> lock(context->mutex);
    // Every step that ran has answered: nothing views the request's inputs any more.
    if (context->answered || context->running != 0) return;
    context->answered = true;
    request = std::move(context->request);
    status = context->status;
    input_ns = context->input_ns;
    infer_ns = context->infer_ns;
    output_ns = context->output_ns;
    for (size_t index : outputs_) {
      const Context::Tensor& tensor = context->tensors[index];
      if (!tensor.present) {
        if (status.ok()) {
          status = Status(StatusCode::kInvalidArg,
                          RequestLabel(*request) +
                              "unexpected deadlock, at least one output is not set while no "
                              "more ensemble steps can be made");
        }
        break;
      }
      outputs.batch.push_back(OutputTensor{tensor_names_[index], tensor.view.dtype,
                                           tensor.view.shape, tensor.memory, tensor.view.data,
                                           tensor.view.byte_size, false});
    }
  }
  const uint64_t now = SteadyNowNs();
  const uint64_t total_ns = Span(request->enqueue_ns, now);
  {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    if (status.ok()) {  // Triton's: the whole ensemble, its steps' compute summed
      const uint32_t size = std::max<uint32_t>(1, request->batch_size);
      stats_.success.Add(total_ns);
      stats_.queue.Add(0);
      stats_.compute_input.Add(input_ns);
      stats_.compute_infer.Add(infer_ns);
      stats_.compute_output.Add(output_ns);
      stats_.inference_count += size;
      stats_.execution_count += 1;
      stats_.last_inference_ms = static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(
              std::chrono::system_clock::now().time_since_epoch()).count());
      BatchStats& by_size = stats_.batch_stats[size];
      by_size.compute_input.Add(input_ns);
      by_size.compute_infer.Add(infer_ns);
      by_size.compute_output.Add(output_ns);
    } else {
      stats_.fail.Add(total_ns);
    }
  }
  if (status.ok()) {
    Batch batch;
    batch.requests.push_back(std::move(request));
    batch.times.input_start = batch.times.infer_start = batch.times.infer_end = now;
    responder_->Respond(batch, outputs);
  } else {
    responder_->Reject({request.get()},
                       Status(status.code(), "in ensemble '" + name_ + "', " + status.message()));
  }
  Finished();
}

void EnsembleScheduler::Finished() {
  std::lock_guard<std::mutex> lock(done_mutex_);
  if (inflight_.fetch_sub(1, std::memory_order_acq_rel) == 1) all_done_.notify_all();
}

ModelStats EnsembleScheduler::Statistics() const {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  return stats_;
}

bool EnsembleScheduler::Stop(double timeout_seconds) {
  stopping_.store(true, std::memory_order_seq_cst);
  std::unique_lock<std::mutex> lock(done_mutex_);
  auto done = [&] { return inflight_.load(std::memory_order_acquire) == 0; };
  if (timeout_seconds < 0) {
    all_done_.wait(lock, done);
    return true;
  }
  return all_done_.wait_for(lock, std::chrono::duration<double>(timeout_seconds), done);
}

}  // namespace pyserve
