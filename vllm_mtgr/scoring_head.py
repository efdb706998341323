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

    def forward(self, candidates: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(candidates, candidates.shape[-1:], eps=self.eps)
        hidden = F.silu(torch.einsum("...d,tdh->...th", normed, self.w1) + self.b1)
        return torch.sigmoid((hidden * self.w2).sum(-1) + self.b2)
