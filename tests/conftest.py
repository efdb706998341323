"""Shared fixtures: a small HSTU built in Meta's checkpoint format, converted.

Every engine test serves the converted model and checks it against the
oracle (`HSTUReference`) holding the *original* Meta state dict, so the
converter is on the path of every parity check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from vllm_mtgr.converters.meta_hstu import ConversionOptions, convert
from vllm_mtgr.kernels.reference import HSTUReference

# Small but not degenerate: 2 heads, q/k and v widths differ, 2 blocks.
TINY = dict(
    num_items=300,
    embedding_dim=32,
    num_blocks=2,
    num_heads=2,
    attention_dim=16,
    linear_dim=24,
    max_sequence_len=96,
)
BLOCK_SIZE = 16

# Engine settings for CPU tests (fp32 so parity is exact to ~1e-6).
ENGINE_KWARGS = dict(
    dtype="float32",
    enforce_eager=True,
    block_size=BLOCK_SIZE,
    gpu_memory_utilization=0.3,
    max_num_seqs=8,
    max_logprobs=-1,
    logprobs_mode="processed_logits",
    seed=0,
)


@dataclass
class TinyModel:
    reference: HSTUReference
    checkpoint: Path
    model_dir: Path


def random_reference(seed: int, num_action_types: int = 0) -> HSTUReference:
    torch.manual_seed(seed)
    reference = HSTUReference(**TINY, num_action_types=num_action_types)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            std = 0.5 if "_rel_attn_bias" in name else 0.2
            param.normal_(0.0, std)
    return reference.eval()


def save_meta_checkpoint(reference: HSTUReference, path: Path) -> Path:
    """Exactly Meta's format: DDP `module.` keys under `model_state_dict`."""
    state = {f"module.{k}": v.clone() for k, v in reference.state_dict().items()}
    torch.save({"model_state_dict": state}, path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    root = tmp_path_factory.mktemp("tiny")
    reference = random_reference(seed=1)
    checkpoint = save_meta_checkpoint(reference, root / "hstu.pt")
    model_dir = convert(checkpoint, root / "model", ConversionOptions(num_heads=2))
    return TinyModel(reference, checkpoint, model_dir)


@pytest.fixture(autouse=True, scope="session")
def _offline_hub():
    # Tests never reach the Hugging Face hub: every model is a local directory.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
