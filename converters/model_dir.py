"""Writes the Hugging Face style directory that `vllm serve` loads.

config.json, model.safetensors (sharded above `shard_bytes`, with the index
file transformers and vLLM read), tokenizer.json over the item vocabulary,
generation_config.json (greedy, one step: retrieval's top-k). Tensors arrive
as an iterator so a multi-GB model never has to fit in memory at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from vllm_mtgr.config import MTGRConfig
from vllm_mtgr.tokenizer import write_tokenizer
from vllm_mtgr.weight_files import check_weight_files

DEFAULT_SHARD_BYTES = 2 * 1024**3
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def _shards(
    tensors: Iterable[tuple[str, torch.Tensor]], shard_bytes: int
) -> Iterator[dict[str, torch.Tensor]]:
    shard: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > shard_bytes:
            yield shard
            shard, size = {}, 0
        shard[name] = tensor.contiguous()
        size += nbytes
    if shard:
        yield shard


def write_weights(
    directory: Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    total_bytes: int,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> list[str]:
    """Save tensors as safetensors shards; returns the file names written."""
    files: list[str] = []
    weight_map: dict[str, str] = {}
    with tqdm(
        total=total_bytes, unit="B", unit_scale=True, desc="writing weights"
    ) as bar:
        for index, shard in enumerate(_shards(tensors, shard_bytes)):
            name = f"model-{index + 1:05d}.safetensors"
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            files.append(name)
            for key, tensor in shard.items():
                weight_map[key] = name
                bar.update(tensor.numel() * tensor.element_size())
    if len(files) == 1:
        (directory / files[0]).rename(directory / WEIGHTS_NAME)
        return [WEIGHTS_NAME]
    renamed = {}
    for i, name in enumerate(files):
        final = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        (directory / name).rename(directory / final)
        renamed[name] = final
    index = {
        "metadata": {"total_size": total_bytes},
        "weight_map": {k: renamed[v] for k, v in sorted(weight_map.items())},
    }
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return list(renamed.values())


def write_model_dir(
    directory: str | Path,
    config: MTGRConfig,
    tensors: Iterable[tuple[str, torch.Tensor]] | None,
    total_bytes: int = 0,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a servable model directory; `tensors=None` writes it config-only
    (serve it with `--load-format dummy`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    write_tokenizer(
        directory, config.num_items, config.max_position_embeddings, config.is_ranking
    )
    generation = {"temperature": 0.0, "max_new_tokens": 1, "pad_token_id": 0}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
    for name, text in (extra_files or {}).items():
        (directory / name).write_text(text)
    if tensors is not None:
        write_weights(directory, tensors, total_bytes, shard_bytes)
    return directory


def read_tensor(directory: Path, name: str) -> torch.Tensor:
    """One tensor of a model directory written here (one file or shards)."""
    directory = Path(directory)
    check_weight_files(directory)
    index = directory / INDEX_NAME
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        if name not in weight_map:
            raise ValueError(f"{index}: no tensor '{name}' in its weight_map")
        path = directory / weight_map[name]
    else:
        path = directory / WEIGHTS_NAME
    if not path.exists():
        raise ValueError(f"{path}: no such weights file")
    with safe_open(str(path), framework="pt") as weights:
        if name not in weights.keys():
            raise ValueError(f"{path}: no tensor '{name}'")
        return weights.get_tensor(name)
