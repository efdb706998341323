"""Export MTGR's scoring head to ONNX and check it against PyTorch.

Graph: `candidates` `[batch, candidates, hidden]` float32 -> `scores`
`[batch, candidates, tasks]`, both leading axes dynamic. Opset 17: the
first with a native `LayerNormalization`, which TensorRT 10 and ONNX
Runtime both fuse, so the head stays one normalisation, two small
matmuls and the activations.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from vllm_mtgr.config import MTGRConfig
from vllm_mtgr.models.scoring_head import ScoringHead

from .names import INPUT, OUTPUT

OPSET = 17


def load_scoring_head(model_dir: str | Path) -> ScoringHead:
    """The scoring head of a served MTGRForRanking directory, in float32."""
    model_dir = Path(model_dir)
    config = MTGRConfig.from_pretrained(model_dir)
    head = ScoringHead.from_config(config)
    state = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        state.update(
            (name.removeprefix("scoring_head."), tensor.float())
            for name, tensor in load_file(shard).items()
            if name.startswith("scoring_head.")
        )
    head.load_state_dict(state)
    return head.eval()


def export_onnx(head: ScoringHead, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hidden = head.w1.shape[1]
    example = torch.randn(2, 3, hidden)
    dynamic = {0: "batch", 1: "candidates"}
    torch.onnx.export(
        head,
        (example,),
        str(path),
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_axes={INPUT: dynamic, OUTPUT: dynamic},
        opset_version=OPSET,
        dynamo=False,
    )
    return path


def onnx_scores(path: str | Path, candidates: torch.Tensor) -> torch.Tensor:
    """Run the exported head with ONNX Runtime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    (scores,) = session.run([OUTPUT], {INPUT: candidates.float().numpy()})
    return torch.from_numpy(scores)
