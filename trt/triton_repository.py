"""A Triton Inference Server model repository for the scoring head.

    <root>/mtgr_scoring_head/config.pbtxt
    <root>/mtgr_scoring_head/1/model.plan     (TensorRT)   or   model.onnx

Triton adds the batch axis (`max_batch_size`), so the tensors declare
`[candidates, hidden]` -> `[candidates, tasks]` with a dynamic candidate
count; the dynamic batcher groups requests with equal candidate counts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .names import INPUT, MODEL_NAME, OUTPUT

PLATFORMS = {".plan": "tensorrt_plan", ".onnx": "onnxruntime_onnx"}

CONFIG = """name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch}
input [
  {{
    name: "{input}"
    data_type: TYPE_FP32
    dims: [ -1, {hidden} ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ -1, {tasks} ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {delay_us}
}}
instance_group [
  {{
    count: 1
    kind: {kind}
  }}
]
"""


def write_repository(
    root: str | Path,
    model_file: str | Path,
    hidden_size: int,
    num_tasks: int,
    max_batch: int = 64,
    delay_us: int = 500,
) -> Path:
    """Copy `model_file` (.plan or .onnx) into a repository with its config."""
    model_file = Path(model_file)
    if model_file.suffix not in PLATFORMS:
        raise ValueError(f"{model_file} is neither a .plan nor a .onnx file")
    model_dir = Path(root) / MODEL_NAME
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, model_dir / "1" / f"model{model_file.suffix}")
    preferred = ", ".join(str(b) for b in (4, 8, 16, 32) if b <= max_batch)
    platform = PLATFORMS[model_file.suffix]
    (model_dir / "config.pbtxt").write_text(
        CONFIG.format(
            name=MODEL_NAME,
            platform=platform,
            max_batch=max_batch,
            input=INPUT,
            output=OUTPUT,
            hidden=hidden_size,
            tasks=num_tasks,
            preferred=preferred,
            delay_us=delay_us,
            kind="KIND_GPU" if platform == "tensorrt_plan" else "KIND_CPU",
        )
    )
    return model_dir
