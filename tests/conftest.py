"""Shared fixtures: a small HSTU built in Meta's checkpoint format, converted.

Every engine test serves the converted model and checks it against the
oracle (`HSTUReference`) holding the *original* Meta state dict, so the
converter is on the path of every parity check.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Ask NVML whether there is a GPU: the default check initialises the CUDA
# driver, and a vLLM engine forked from this process afterwards cannot use it.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
if torch.cuda.is_available():
    # Engines start their core by spawn here: a forked core inherits this
    # process's threads (earlier engines' clients, compile workers), and on
    # the H100 an engine forked after another one hung at start.
    # test_cuda_graphs forks its engine on purpose, and sets fork itself.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
else:
    # Without a GPU, Triton kernels run only under its interpreter. Triton reads
    # the switch once for its own library (tl.sum, ...) when first imported, and
    # the vLLM imports below import it: set it first.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from safetensors.torch import save_file  # noqa: E402
from server_process import GPU_MEMORY_UTILIZATION  # noqa: E402

from vllm_mtgr.config import MTGRConfig  # noqa: E402
from vllm_mtgr.converters import mtgr_ranking  # noqa: E402
from vllm_mtgr.converters.meta_hstu import ConversionOptions, convert  # noqa: E402
from vllm_mtgr.kernels.reference import HSTUReference, MTGRReference  # noqa: E402

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
IN_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"

# Engine settings for CPU tests (fp32 so parity is exact to ~1e-6).
ENGINE_KWARGS = dict(
    dtype="float32",
    enforce_eager=True,
    block_size=BLOCK_SIZE,
    gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
    max_num_seqs=8,
    max_logprobs=-1,
    logprobs_mode="processed_logits",
    seed=0,
)
# Pooling models (ranking, semantic IDs) sample no tokens: no logprobs.
POOLING_ENGINE_KWARGS = {k: v for k, v in ENGINE_KWARGS.items() if "logprobs" not in k}


@dataclass
class TinyModel:
    reference: HSTUReference
    checkpoint: Path
    model_dir: Path


@contextmanager
def engine_for_module(*args, in_process: bool = False, **kwargs):
    """A `vllm.LLM` for one test module, shut down when the module ends;
    `in_process`: its engine core in this process (all of a call's requests
    are then added before its first step).

    Its engine core (a child process, its GPU memory and the threads that
    talk to it) would otherwise live on while the next module starts its own
    engine from this process; on the H100 that next start hung.
    """
    import vllm

    saved = os.environ.get(IN_PROCESS_ENV)
    if in_process:
        os.environ[IN_PROCESS_ENV] = "0"
    try:
        llm = vllm.LLM(*args, **kwargs)
        try:
            yield llm
        finally:
            llm.llm_engine.engine_core.shutdown()
    finally:
        if saved is None:
            os.environ.pop(IN_PROCESS_ENV, None)
        else:
            os.environ[IN_PROCESS_ENV] = saved


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


# A small MTGR ranking model: 3 profile features, actions, cross features.
TINY_RANKING = dict(
    num_items=300,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    attention_dim=16,
    linear_dim=24,
    max_position_embeddings=160,
    task_names=["ctr", "ctcvr", "engagement"],
    num_profile_features=3,
    profile_vocab_size=50,
    num_cross_features=5,
    head_hidden_size=16,
    max_candidates=40,
    num_action_types=4,
)


@dataclass
class TinyRankingModel:
    reference: MTGRReference
    config: MTGRConfig
    model_dir: Path


def random_ranking_reference(seed: int) -> MTGRReference:
    config = MTGRConfig(
        architectures=["MTGRForRanking"],
        vocab_size=TINY_RANKING["num_items"] + 4,
        **TINY_RANKING,
    )
    torch.manual_seed(seed)
    reference = MTGRReference(config)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            std = 0.3 if "bias" in name or "relative" in name else 0.2
            param.normal_(0.0, std)
    return reference.eval()


def save_ranking_checkpoint(reference: MTGRReference, directory: Path) -> Path:
    """The trainer's format: the oracle's state dict + its config fields."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(TINY_RANKING))
    return directory


@pytest.fixture(scope="session")
def tiny_ranking_model(tmp_path_factory) -> TinyRankingModel:
    root = tmp_path_factory.mktemp("tiny-ranking")
    reference = random_ranking_reference(seed=2)
    checkpoint = save_ranking_checkpoint(reference, root / "checkpoint")
    model_dir = mtgr_ranking.convert(checkpoint, root / "model")
    return TinyRankingModel(reference, reference.config, model_dir)


@pytest.fixture(autouse=True, scope="session")
def _offline_hub():
    # Tests never reach the Hugging Face hub: every model is a local directory.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
