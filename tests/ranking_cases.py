"""Random ranking requests and the oracle's answers for them."""

from __future__ import annotations

import random

import numpy as np
import torch
from conftest import TINY_RANKING

from vllm_mtgr.arrays import decode_array
from vllm_mtgr.kernels.reference import MTGRReference

TOLERANCE = 1e-4  # fp32 on CPU
START = 1_000_000_000


def random_request(
    rng: random.Random,
    history: int = 20,
    realtime: int = 7,
    candidates: int = 6,
    with_actions: bool = True,
) -> dict:
    """A user with long history, real-time events and distinct candidates."""
    items = TINY_RANKING["num_items"]
    long_times = sorted(rng.randint(START, START + 10**7) for _ in range(history))
    recent_times = sorted(
        rng.randint(START + 10**7, START + 2 * 10**7) for _ in range(realtime)
    )
    request = {
        "profile": [rng.randrange(50) for _ in range(3)],
        "history": {
            "items": [rng.randint(1, items) for _ in range(history)],
            "timestamps": long_times,
        },
        "realtime": {
            "items": [rng.randint(1, items) for _ in range(realtime)],
            "timestamps": recent_times,
        },
        "candidates": {
            "items": rng.sample(range(1, items + 1), candidates),
            "features": [
                [rng.uniform(-1, 1) for _ in range(5)] for _ in range(candidates)
            ],
        },
        "request_timestamp": START + 3 * 10**7,
    }
    if with_actions:
        request["history"]["actions"] = [rng.randrange(4) for _ in range(history)]
    return request


def oracle_scores(reference: MTGRReference, request: dict) -> torch.Tensor:
    """`[candidates, tasks]` from the plain PyTorch MTGR."""
    with torch.no_grad():
        return reference.scores(request)


def served_scores(result: dict, tasks: list[str]) -> torch.Tensor:
    """[candidates, tasks] of a result, its scores as lists, binary arrays or
    (offline) NumPy arrays."""

    def column(scores: object) -> torch.Tensor:
        if isinstance(scores, dict):
            return torch.from_numpy(decode_array(scores))
        if isinstance(scores, np.ndarray):
            return torch.from_numpy(scores)
        return torch.tensor(scores)

    return torch.stack([column(result["scores"][task]) for task in tasks]).T


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.double() - expected.double()).norm() / expected.double().norm())
