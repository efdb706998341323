"""MTGR's multi-task scoring head: one small MLP per task on a candidate.

Plain PyTorch (no vLLM), because three things use the same module: the
served `MTGRForRanking`, the ranking oracle, and the ONNX/TensorRT export
in `vllm_mtgr.trt`. Input `[..., hidden]` candidate states, output
`[..., tasks]` probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm_mtgr.config import MTGRConfig


class ScoringHead(nn.Module):
    """sigmoid(w2_t . silu(LayerNorm(h) @ W1_t + b1_t) + b2_t) for each task t."""

    def __init__(
        self, hidden_size: int, head_hidden_size: int, num_tasks: int, eps: float
    ) -> None:
        super().__init__()
        self.eps = eps
        self.w1 = nn.Parameter(torch.empty(num_tasks, hidden_size, head_hidden_size))
        self.b1 = nn.Parameter(torch.empty(num_tasks, head_hidden_size))
        self.w2 = nn.Parameter(torch.empty(num_tasks, head_hidden_size))
        self.b2 = nn.Parameter(torch.empty(num_tasks))

    @classmethod
    def from_config(cls, config: MTGRConfig) -> ScoringHead:
        """The head of a ranking config: one per task, over `hidden_size`."""
        return cls(
            config.hidden_size,
            config.head_hidden_size,
            len(config.task_names),
            config.layer_norm_eps,
        )

    def forward(self, candidates: torch.Tensor) -> torch.Tensor:
        tasks, hidden_size, head_size = self.w1.shape
        normed = F.layer_norm(candidates, (hidden_size,), eps=self.eps)
        # All tasks at once as two matmuls (the second block-diagonal), so the
        # exported graph is MatMul/Add only, with no reshape of dynamic axes.
        w1 = self.w1.permute(1, 0, 2).reshape(hidden_size, tasks * head_size)
        hidden = F.silu(normed @ w1 + self.b1.reshape(tasks * head_size))
        eye = torch.eye(tasks, dtype=self.w2.dtype, device=self.w2.device)
        w2 = (self.w2.unsqueeze(-1) * eye.unsqueeze(1)).reshape(
            tasks * head_size, tasks
        )
        return torch.sigmoid(hidden @ w2 + self.b2)
