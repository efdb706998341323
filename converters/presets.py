"""`vllm-mtgr create PRESET`: model sizes for benchmarks and smoke tests.

A preset writes a randomly initialised model, or only its config (serve it
with `--load-format dummy`). Sizes count the item table, which dominates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from vllm_mtgr.config import MTGRConfig

from .model_dir import write_model_dir
from .shapes import ITEM_EMBEDDING, parameter_count, weight_shapes

RANKING_PLUGIN = "mtgr_ranking"  # vllm_mtgr.serving.ranking


@dataclass(frozen=True)
class Preset:
    num_items: int
    hidden_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    max_len: int
    # Ranking presets (MTGRForRanking) set these.
    tasks: tuple[str, ...] = ()
    profile_features: int = 0
    profile_vocab: int = 0
    cross_features: int = 0
    head_hidden: int = 0
    max_candidates: int = 0

    def config(self, dtype: str) -> MTGRConfig:
        ranking = bool(self.tasks)
        ranking_fields = dict(
            task_names=list(self.tasks),
            num_profile_features=self.profile_features,
            profile_vocab_size=self.profile_vocab,
            num_cross_features=self.cross_features,
            head_hidden_size=self.head_hidden,
            max_candidates=self.max_candidates,
            io_processor_plugin=RANKING_PLUGIN,
        )
        return MTGRConfig(
            architectures=["MTGRForRanking" if ranking else "MTGRForCausalLM"],
            vocab_size=self.num_items + (4 if ranking else 2),
            num_items=self.num_items,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            attention_dim=self.head_dim,
            linear_dim=self.head_dim,
            max_position_embeddings=self.max_len,
            torch_dtype=dtype,
            **(ranking_fields if ranking else {}),
        )


TASKS = ("ctr", "ctcvr", "engagement", "retention")
PRESETS = {
    "mtgr-small": Preset(10_000, 64, 2, 2, 32, 256),
    "mtgr-base": Preset(100_000, 256, 4, 4, 64, 1024),
    "mtgr-large": Preset(1_000_000, 512, 8, 4, 128, 2048),
    "mtgr-8b": Preset(3_570_000, 2048, 32, 16, 128, 8192),
    "mtgr-rank-small": Preset(10_000, 64, 2, 2, 32, 512, TASKS, 4, 1000, 8, 64, 128),
    # The DLRMv3 peer workload's shape: 5 layers, D=512, 4 heads x 128,
    # 1024 history events + 2048 candidates per user.
    "mtgr-rank-dlrmv3": Preset(
        1_000_000, 512, 5, 4, 128, 3200, TASKS, 8, 100_000, 16, 256, 2048
    ),
    # NVIDIA recsys-examples' inference shape: 8 layers, D=1024, 4 heads x
    # 256, histories of 4096 events, 256 candidates per user.
    "mtgr-rank-recsys": Preset(
        1_000_000, 1024, 8, 4, 256, 4224, TASKS, 8, 100_000, 16, 256, 256
    ),
}


def random_tensors(
    config: MTGRConfig, seed: int, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Normal(0, 0.02) weights, zero biases, unit norm scales; one at a time."""
    generator = torch.Generator().manual_seed(seed)
    for name, shape in weight_shapes(config).items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(shape)
        elif name.endswith((".bias", ".b1", ".b2")):
            tensor = torch.zeros(shape)
        else:
            tensor = torch.randn(shape, generator=generator) * 0.02
        if name == ITEM_EMBEDDING:
            tensor[0] = 0  # padding
            tensor[config.num_items + 1 :] = 0  # special tokens
        yield name, tensor.to(dtype)


def create(
    preset: str,
    out_dir: str | Path,
    config_only: bool = False,
    dtype: str = "bfloat16",
    seed: int = 0,
) -> Path:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    config = PRESETS[preset].config(dtype)
    torch_dtype = getattr(torch, dtype)
    total = parameter_count(config) * torch.empty(0, dtype=torch_dtype).element_size()
    tensors = None if config_only else random_tensors(config, seed, torch_dtype)
    return write_model_dir(out_dir, config, tensors, total)
