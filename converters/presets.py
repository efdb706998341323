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


@dataclass(frozen=True)
class Preset:
    num_items: int
    hidden_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    max_len: int

    def config(self, dtype: str) -> MTGRConfig:
        return MTGRConfig(
            architectures=["MTGRForCausalLM"],
            vocab_size=self.num_items + 2,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            attention_dim=self.head_dim,
            linear_dim=self.head_dim,
            max_position_embeddings=self.max_len,
            torch_dtype=dtype,
        )


PRESETS = {
    "mtgr-small": Preset(10_000, 64, 2, 2, 32, 256),
    "mtgr-base": Preset(100_000, 256, 4, 4, 64, 1024),
    "mtgr-large": Preset(1_000_000, 512, 8, 4, 128, 2048),
    "mtgr-8b": Preset(3_570_000, 2048, 32, 16, 128, 8192),
}


def weight_shapes(config: MTGRConfig) -> dict[str, tuple[int, ...]]:
    """Every weight of an MTGRForCausalLM checkpoint and its shape."""
    d, h = config.hidden_size, config.num_attention_heads
    dqk, dv = config.attention_dim, config.linear_dim
    shapes = {
        "model.item_embedding.weight": (config.vocab_size, d),
        "model.position_embedding.weight": (config.max_position_embeddings, d),
    }
    if config.num_action_types:
        shapes["model.action_embedding.weight"] = (config.num_action_types, d)
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        shapes[prefix + "uvqk_proj.weight"] = (2 * h * (dv + dqk), d)
        shapes[prefix + "o_proj.weight"] = (d, h * dv)
        shapes[prefix + "o_proj.bias"] = (d,)
        shapes[prefix + "attn.relative_bias.position_weight"] = (
            2 * config.max_position_embeddings - 1,
        )
        shapes[prefix + "attn.relative_bias.time_weight"] = (
            config.num_time_buckets + 1,
        )
    return shapes


def parameter_count(config: MTGRConfig) -> int:
    total = 0
    for shape in weight_shapes(config).values():
        count = 1
        for size in shape:
            count *= size
        total += count
    return total


def random_tensors(
    config: MTGRConfig, seed: int, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Normal(0, 0.02) weights, zero biases, one tensor at a time."""
    generator = torch.Generator().manual_seed(seed)
    for name, shape in weight_shapes(config).items():
        if name.endswith(".bias"):
            tensor = torch.zeros(shape)
        else:
            tensor = torch.randn(shape, generator=generator) * 0.02
        if name == "model.item_embedding.weight":
            tensor[0] = 0  # padding
            tensor[-1] = 0  # <unk>
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
