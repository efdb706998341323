"""Converts trained MTGR ranking checkpoints (config + safetensors).

Input: a directory with `config.json` (MTGRConfig fields: sizes, task names,
feature counts) and safetensors files whose tensor names are the ranking
oracle's (`vllm_mtgr.kernels.reference.MTGRReference`, the plain PyTorch
model one trains). Every tensor is checked against the config before
anything is written; the output is a directory `vllm serve` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from vllm_mtgr.config import MTGRConfig

from .model_dir import write_model_dir
from .presets import RANKING_PLUGIN
from .shapes import CheckpointError, weight_shapes

RANKING_FIELDS = ("task_names", "head_hidden_size", "max_candidates")


def read_config(directory: Path) -> MTGRConfig:
    path = directory / "config.json"
    try:
        fields = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    missing = [name for name in ("num_items", *RANKING_FIELDS) if name not in fields]
    if missing:
        raise CheckpointError(f"{path} lacks ranking fields {missing}")
    fields.update(
        architectures=["MTGRForRanking"],
        vocab_size=fields["num_items"] + 4,
        io_processor_plugin=RANKING_PLUGIN,
    )
    return MTGRConfig(**fields)


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} holds no .safetensors file")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(file))
        except Exception as error:  # safetensors raises several types
            raise CheckpointError(f"cannot read {file}: {error}") from error
    return tensors


def check_tensors(tensors: dict[str, torch.Tensor], config: MTGRConfig) -> None:
    expected = weight_shapes(config)
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"checkpoint has no tensor `{name}`")
        if tuple(tensors[name].shape) != shape:
            found = list(tensors[name].shape)
            raise CheckpointError(f"`{name}` has shape {found}, expected {list(shape)}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"checkpoint has unexpected tensors {unexpected[:5]}")


def convert(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    checkpoint_dir = Path(checkpoint_dir)
    config = read_config(checkpoint_dir)
    tensors = read_tensors(checkpoint_dir)
    check_tensors(tensors, config)
    names = list(weight_shapes(config))
    total = sum(tensors[n].numel() * tensors[n].element_size() for n in names)
    return write_model_dir(out_dir, config, ((n, tensors[n]) for n in names), total)
