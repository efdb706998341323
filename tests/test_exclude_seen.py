"""`exclude_seen`: one rule on every route (offline extra_args, the
completions field, vllm_xargs), and the logits processor that applies it."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from vllm_mtgr.decoding.seen_items import SeenItemsExclusion, exclude_seen_requested
from vllm_mtgr.errors import RequestError
from vllm_mtgr.requests.validation import parse_exclude_seen


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), (1, True), (0, False), (np.int64(0), False)],
)
def test_booleans_and_one_or_zero_are_read(value, expected):
    assert parse_exclude_seen(value) is expected
    params = SamplingParams(extra_args={"exclude_seen": value})
    assert exclude_seen_requested(params) is expected


@pytest.mark.parametrize("value", ["false", "true", "1", "0", 2, -1, 1.0, None, []])
def test_anything_else_is_refused_naming_the_field(value):
    with pytest.raises(RequestError, match="true or false") as error:
        exclude_seen_requested(SamplingParams(extra_args={"exclude_seen": value}))
    assert error.value.parameter == "exclude_seen"


def test_on_by_default():
    assert exclude_seen_requested(SamplingParams())


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(),
                reason="the pinned staging path needs CUDA",
            ),
        ),
    ],
)
def test_seen_items_stay_excluded_as_the_batch_changes(device):
    """The processor against a plain reference while requests join, leave,
    move, swap and generate, as vLLM's persistent batch does."""
    rng = random.Random(31)
    vocab, slots = 60, 6
    processor = SeenItemsExclusion(None, torch.device(device), device == "cuda")
    live: dict[int, tuple[bool, list[int], list[int]]] = {}  # row -> state
    for _ in range(200):
        removed, added, moved = [], [], []
        free = [row for row in range(slots) if row not in live]
        if live and rng.random() < 0.3:
            row = rng.choice(sorted(live))
            removed.append(row)
            del live[row]
            free.append(row)
        if free and rng.random() < 0.5:
            row = rng.choice(free)
            exclude = rng.random() < 0.8
            history = [rng.randrange(1, vocab) for _ in range(rng.randrange(0, 20))]
            generated: list[int] = []
            params = SamplingParams(extra_args={"exclude_seen": exclude})
            added.append((row, params, history, generated))
            if row in removed:  # vLLM reports a refilled slot as added only
                removed.remove(row)
            live[row] = (exclude, history, generated)
        if len(live) >= 2 and rng.random() < 0.3:
            a, b = rng.sample(sorted(live), 2)
            live[a], live[b] = live[b], live[a]
            moved.append((a, b, MoveDirectionality.SWAP))
        elif live and rng.random() < 0.3:
            free = [row for row in range(slots) if row not in live]
            if free:
                a, b = rng.choice(sorted(live)), rng.choice(free)
                live[b] = live.pop(a)
                moved.append((a, b, MoveDirectionality.UNIDIRECTIONAL))
        change = BatchUpdate(slots, removed, added, moved)
        processor.update_state(change if removed or added or moved else None)
        for _, _, generated in live.values():
            if rng.random() < 0.7:
                generated.append(rng.randrange(1, vocab))
        logits = torch.randn(slots, vocab, device=device)
        expected = logits.clone()
        for row, (exclude, history, generated) in live.items():
            if exclude:
                expected[row, history + generated] = float("-inf")
        assert torch.equal(processor.apply(logits.clone()), expected)
