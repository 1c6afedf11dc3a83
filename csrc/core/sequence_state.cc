#include "sequence_state.h"

#include "request_limits.h"
#include "validate.h"

namespace pyserve {

namespace {

const OutputTensor* Find(const std::vector<OutputTensor>& tensors, const std::string& name) {
  for (const OutputTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// Row `row` of `whole`, a batch output of `rows` rows, as a view. Every element takes a byte
// at least, so a shape with more elements than the output has bytes is refused before walking.
bool Row(const OutputTensor& whole, int64_t rows, int64_t row, OutputTensor* out) {
  if (whole.shape.empty() || whole.shape[0] != rows) return false;
  uint64_t per_row = 0;
  if (!CountElements(whole.shape.data() + 1, whole.shape.size() - 1, whole.byte_size, &per_row) ||
      per_row * rows > whole.byte_size) {
    return false;
  }
  size_t begin = 0, end = 0;
  if (whole.dtype == DataType::kBytes) {
    std::vector<size_t> offsets;
    if (!StringOffsets(whole.data, whole.byte_size, rows * per_row, &offsets)) return false;
    begin = offsets[row * per_row];
    end = offsets[(row + 1) * per_row];
  } else {
    const size_t row_bytes = per_row * ElementSize(whole.dtype);
    if (row_bytes * rows != whole.byte_size) return false;
    begin = row * row_bytes;
    end = begin + row_bytes;
  }
  *out = whole;
  out->shape[0] = 1;
  out->data = whole.data + begin;
  out->byte_size = end - begin;
  return true;
}

}  // namespace

SequenceState::SequenceState(std::shared_ptr<const std::vector<StateSpec>> specs,
                             std::shared_ptr<StateWaker> waker)
    : specs_(std::move(specs)), waker_(std::move(waker)) {
  tensors_.reserve(specs_->size());
  for (const StateSpec& spec : *specs_) tensors_.push_back({spec.initial_shape, spec.initial});
}

void SequenceState::Append(const StateSpec& spec, const Tensor& tensor, InferRequest* request) {
  TensorView view;
  view.name = spec.input_name;
  view.dtype = spec.dtype;
  view.shape = tensor.shape;
  view.data = reinterpret_cast<const uint8_t*>(tensor.bytes->data());
  view.byte_size = tensor.bytes->size();
  request->inputs.push_back(std::move(view));
  request->held.push_back(tensor.bytes);
}

void SequenceState::AddInputs(InferRequest* request) const {
  for (size_t i = 0; i < tensors_.size(); ++i) Append((*specs_)[i], tensors_[i], request);
}

void SequenceState::AddInitialInputs(const std::vector<StateSpec>& specs, InferRequest* request) {
  for (const StateSpec& spec : specs) {
    Append(spec, Tensor{spec.initial_shape, spec.initial}, request);
  }
}

void SequenceState::Update(size_t index, const OutputTensor& produced) {
  Tensor& tensor = tensors_[index];
  tensor.shape = produced.shape;
  tensor.bytes = std::make_shared<const std::string>(
      reinterpret_cast<const char*>(produced.data), produced.byte_size);
}

void SequenceState::UpdateFrom(const std::vector<OutputTensor>& produced) {
  for (size_t s = 0; s < specs_->size(); ++s) {
    const OutputTensor* own = Find(produced, (*specs_)[s].output_name);
    if (own != nullptr) Update(s, *own);
  }
}

void SequenceState::Settle() {
  settled_.store(true, std::memory_order_release);
  if (waker_) waker_->Wake();
}

Status UpdateSequenceStates(const std::string& model_name, const Batch& batch,
                            const BatchOutputs& outputs) {
  const int64_t rows = static_cast<int64_t>(batch.requests.size());  // one row per request
  for (int64_t i = 0; i < rows; ++i) {
    SequenceState* state = batch.requests[i]->sequence_state.get();
    if (state == nullptr) continue;
    if (outputs.per_request && !outputs.request_status[i].ok()) continue;
    if (outputs.per_request || rows == 1) {
      state->UpdateFrom(outputs.per_request ? outputs.requests[i] : outputs.batch);
      continue;
    }
    const std::vector<StateSpec>& specs = state->specs();
    for (size_t s = 0; s < specs.size(); ++s) {
      const OutputTensor* whole = Find(outputs.batch, specs[s].output_name);
      if (whole == nullptr) continue;
      OutputTensor own = *whole;
      if (!Row(*whole, rows, i, &own)) {
        return Status(StatusCode::kInternal, "model '" + model_name + "' returned state output '" +
                                                 whole->name + "' that cannot be split into " +
                                                 std::to_string(rows) + " requests");
      }
      state->Update(s, own);
    }
  }
  return Status::OK();
}

}  // namespace pyserve
