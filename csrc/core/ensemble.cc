#include "ensemble.h"

#include <algorithm>
#include <chrono>
#include <map>

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

// One ensemble request in flight. A tensor holds one value per iteration: the request's
// inputs and what steps run for them are iteration 0; each response of a decoupled step starts
// a new iteration of its outputs, and the steps that read them run once per iteration (Triton's
// rule, checked at load: a step reads tensors of one decoupled lineage only).
struct EnsembleScheduler::Value {
  bool present = false;  // false: an optional input left out, or an output a response lacked
  TensorView view;
  std::shared_ptr<const void> memory;  // a step output's memory; null for request inputs
  uint32_t batch_size = 0;             // 0: the tensor has no batch dimension
};

struct EnsembleScheduler::Context {
  using Values = std::map<uint64_t, Value>;  // by iteration

  std::unique_ptr<InferRequest> request;
  std::shared_ptr<ResponseSender> sender;  // a decoupled ensemble's way to its client
  std::mutex mutex;  // guards what follows; a value is written once, before its readers run
  std::vector<Values> tensors;
  std::vector<uint64_t> iterations;  // per tensor: the next iteration a decoupled step starts
  std::vector<uint8_t> batching;     // per step: its model batches (set before it is submitted)
  std::vector<uint8_t> decoupled;    // per step: its model is decoupled (likewise)
  uint32_t running = 0;              // steps submitted and not yet finally answered
  Status status;                     // the first step error
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
      std::vector<size_t>& consumers = created->consumers_[t];
      if (consumers.empty() || consumers.back() != index) consumers.push_back(index);
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
  // Counted before the check, so that a Stop that began sees it, or it sees the Stop.
  inflight_.fetch_add(1, std::memory_order_seq_cst);
  if (stopping_.load(std::memory_order_seq_cst)) {
    Finished();
    return Status(StatusCode::kUnavailable, "model '" + name_ + "' is not accepting requests");
  }
  auto context = std::make_shared<Context>();
  context->tensors.resize(tensor_names_.size());
  context->iterations.resize(tensor_names_.size());
  context->batching.resize(steps_.size());
  context->decoupled.resize(steps_.size());
  request->enqueue_ns = SteadyNowNs();
  const uint32_t batch_size = spec_.max_batch_size > 0 ? request->batch_size : 0;
  std::vector<Value> inputs(inputs_.size());  // absent unless the request has it
  for (const TensorView& input : request->inputs) {  // the model checked the names
    for (size_t i = 0; i < inputs_.size(); ++i) {
      if (tensor_names_[inputs_[i]] == input.name) inputs[i] = {true, input, nullptr, batch_size};
    }
  }
  if (spec_.decoupled) context->sender = responder_->OpenSender(*request);
  context->request = std::move(request);
  Steps ready;
  {
    std::lock_guard<std::mutex> lock(context->mutex);
    for (size_t i = 0; i < inputs_.size(); ++i) Store(*context, inputs_[i], 0, inputs[i], &ready);
    context->running = static_cast<uint32_t>(ready.size());
  }
  Launch(context, ready);
  FinishIfDone(context);
  return Status::OK();
}

void EnsembleScheduler::Launch(const std::shared_ptr<Context>& context, const Steps& steps) {
  for (const auto& [step, iteration] : steps) {
    Status status = Submit(context, step, iteration);
    if (status.ok()) continue;
    {
      std::lock_guard<std::mutex> lock(context->mutex);
      StepDone(*context, step, iteration, nullptr, status);
    }
    FinishIfDone(context);
  }
}

Status EnsembleScheduler::Submit(const std::shared_ptr<Context>& context, size_t step,
                                 uint64_t iteration) {
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
  auto request = std::make_unique<InferRequest>();
  {
    // Other iterations' values may be stored meanwhile: the tensors are read under the lock,
    // the request submitted without it (a refusal comes straight back through Deliver).
    std::lock_guard<std::mutex> lock(context->mutex);
    context->batching[step] = batching;
    context->decoupled[step] = spec.decoupled;
    const InferRequest& original = *context->request;  // kept until every step has answered
    request->id = iteration * steps_.size() + step;
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
      const Value& tensor = context->tensors[index].at(iteration);
      if (!tensor.present) continue;  // left out or not answered: the step's input is optional
      TensorView view = tensor.view;
      view.name = input;
      if (const TensorSpec* config = spec.FindInput(input)) {
        view.shape = StepShape(config->dims, batching, tensor.batch_size, view.shape);
      }
      request->inputs.push_back(std::move(view));
      if (tensor.memory) request->held.push_back(tensor.memory);
    }
  }
  for (const auto& [output, index] : plan.outputs) {
    request->outputs.push_back(RequestedOutput{output, 0, nullptr});
  }
  return table->SubmitIn(plan.model_namespace, plan.model_name, plan.version, &model, request);
}

void EnsembleScheduler::Deliver(std::vector<Completion>& completions) {
  for (Completion& completion : completions) {
    auto context = std::static_pointer_cast<Context>(completion.owner);
    Steps ready;
    {
      std::lock_guard<std::mutex> lock(context->mutex);
      ready = StepDone(*context, completion.tag % steps_.size(), completion.tag / steps_.size(),
                       &completion, Status::OK());
    }
    Launch(context, ready);
    FinishIfDone(context);
  }
}

EnsembleScheduler::Steps EnsembleScheduler::StepDone(Context& context, size_t step,
                                                     uint64_t iteration, Completion* completion,
                                                     const Status& refusal) {
  if (completion == nullptr || completion->final) --context.running;
  const Status& status = completion != nullptr ? completion->response.status : refusal;
  if (!status.ok() && context.status.ok()) context.status = status;
  // Failed: no further steps. A decoupled step's bare final flag carries nothing.
  if (!context.status.ok() || completion == nullptr || completion->empty) return {};
  const BatchTimes& times = completion->times;
  context.input_ns += Span(times.input_start, times.infer_start);
  context.infer_ns += Span(times.infer_start, times.infer_end);
  context.output_ns += Span(times.infer_end, SteadyNowNs());
  const bool decoupled = context.decoupled[step];
  Steps ready;
  for (const auto& [name, index] : steps_[step].outputs) {
    Value value;
    for (const OutputTensor& output : completion->response.outputs) {
      if (output.name != name) continue;
      const uint32_t batch_size =
          context.batching[step] ? static_cast<uint32_t>(output.shape.empty() ? 1 : output.shape[0]) : 0;
      value = {true, TensorView{"", output.dtype, output.shape, output.data, output.byte_size},
               output.memory, batch_size};
    }
    // A response's outputs share an iteration, so a decoupled step's missing ones are stored
    // absent; another step's leave their readers waiting (the ensemble then fails, as Triton).
    if (!value.present && !decoupled) continue;
    Store(context, index, decoupled ? context.iterations[index]++ : iteration, value, &ready);
  }
  context.running += static_cast<uint32_t>(ready.size());
  return ready;
}

void EnsembleScheduler::Store(Context& context, size_t tensor, uint64_t iteration,
                              const Value& value, Steps* ready) {
  context.tensors[tensor].emplace(iteration, value);
  for (size_t step : consumers_[tensor]) {
    const auto& inputs = steps_[step].inputs;
    if (std::all_of(inputs.begin(), inputs.end(), [&](const auto& input) {
          return context.tensors[input.second].count(iteration) != 0;
        })) {
      ready->emplace_back(step, iteration);
    }
  }
  if (context.sender && context.status.ok() &&
      std::find(outputs_.begin(), outputs_.end(), tensor) != outputs_.end()) {
    Respond(context, iteration);
  }
}

bool EnsembleScheduler::CollectOutputs(const Context& context, uint64_t iteration,
                                       std::vector<OutputTensor>* outputs) const {
  for (size_t index : outputs_) {
    auto found = context.tensors[index].find(iteration);
    if (found == context.tensors[index].end()) return false;
    const Value& tensor = found->second;
    if (!tensor.present) return false;
    outputs->push_back(OutputTensor{tensor_names_[index], tensor.view.dtype, tensor.view.shape,
                                    tensor.memory, tensor.view.data, tensor.view.byte_size,
                                    false});
  }
  return true;
}

void EnsembleScheduler::Respond(Context& context, uint64_t iteration) {
  std::vector<OutputTensor> outputs;
  // Sent under the context's lock: responses go out one at a time, the final one last.
  if (CollectOutputs(context, iteration, &outputs)) context.sender->Send(&outputs, Status::OK(), false);
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
    if (!status.ok()) {
      status = Status(status.code(), "in ensemble '" + name_ + "', " + status.message());
    }
    if (context->sender) {  // decoupled: its responses went out as they were ready
      context->sender->Send(nullptr, status, true);
    } else if (status.ok() && !CollectOutputs(*context, 0, &outputs.batch)) {
      status = Status(StatusCode::kInvalidArg,
                      "in ensemble '" + name_ + "', " + RequestLabel(*request) +
                          "unexpected deadlock, at least one output is not set while no more "
                          "ensemble steps can be made");
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
  if (!context->sender) {  // a decoupled ensemble has answered through it
    if (status.ok()) {
      Batch batch;
      batch.requests.push_back(std::move(request));
      batch.times.input_start = batch.times.infer_start = batch.times.infer_end = now;
      responder_->Respond(batch, outputs);
    } else {
      responder_->Reject({request.get()}, status);
    }
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
  auto done = [&] { return inflight_.load(std::memory_order_seq_cst) == 0; };
  if (timeout_seconds < 0) {
    all_done_.wait(lock, done);
    return true;
  }
  return all_done_.wait_for(lock, std::chrono::duration<double>(timeout_seconds), done);
}

}  // namespace pyserve
