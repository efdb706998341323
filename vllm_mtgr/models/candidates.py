"""Ranking candidates are request-local targets, never prompt tokens.

A ranking request is a user's history (profile, long and real-time events),
which later requests of the same user reuse, and up to thousands of
candidates, which no request ever reuses. The history is vLLM's prompt: paged
KV, prefix caching, chunked prefill. The candidates are extra query rows that
attend to that history's K/V plus their own key, layer by layer, after the
forward that completes the history (M-FALCON; Meta's jagged targets, NVIDIA
recsys-examples' paged inference, TensorRT-Model-Connect all do this).

How they travel, and the alternatives we weighed:

1. Candidates as prompt tokens (the first design, until 2026-12): every one
   was hashed into block hashes, got a KV slot, had its K/V written into pages
   the prefix cache then published, and carried its features per token through
   the multimodal processor; vLLM's per-token host work scaled with 2048
   candidates per user rather than with ~1000 events. Measured on an H100:
   289-357 ms per DLRMv3-shaped forward, 21 ms of it on the device.
2. A request-local tail of candidate tokens: vLLM allocates a KV slot for
   every scheduled token and publishes every full block it computes; keeping a
   tail out of the cache needs changes to the scheduler and KV manager
   (internal in every version), and the per-token host work stays.
3. `PoolingParams.extra_kwargs`: reaches the pooler, but vLLM builds one
   `PoolingParams` for all prompts of an IO-processor request (0.32's server
   calls `merge_pooling_params()` once), so per-user data cannot ride there,
   and arrays in its `dict[str, Any]` do not survive msgpack's untyped decode.
4. Chosen: the candidates ride as extra fields of the history's last
   multimodal item (`vllm_mtgr.multimodal.ranking`), left out of that item's
   hash, so the history's cache identity does not depend on them. That item
   covers the prompt's last token, which vLLM computes in every request (a
   whole-prompt cache hit still recomputes it), so its fields always reach the
   worker, as tensors through msgpack's zero-copy buffers.
   `get_mrope_input_positions`, called in the worker once per request as it
   joins the batch, files them in a `CandidateRegistry` under a ticket and
   writes the ticket into the last token's position row
   (`vllm_mtgr.layout.positions`). The pooler, after the forward that
   finishes requests, reads the finished requests' tickets from that step's
   positions, and runs all their candidates through the layers at once: per
   layer one launch of `kernels.candidate_attention` over the KV pages the
   history has just filled. Cost: one small device-to-host read of the
   tickets per step that finishes a request. Candidates hold no KV slot and
   no block hash.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vllm_mtgr.layout.positions import MAX_TICKET

# Candidate rows run through the layers in one pass: the DLRMv3 shape (32
# users x 2048) in one pass, and a bound on the pass's activations.
ROWS_PER_PASS = 65536


class CandidateRegistry:
    """Candidates filed by ticket, from a request joining the worker's batch
    to the step that finishes it.

    Bounded: a request aborted or preempted before its last step leaves its
    entry behind (vLLM tells a model of neither), so the oldest entries go
    once more than `capacity` are filed; a running request's entry would go
    only after `capacity` newer ones, many more than an engine runs at once.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, Mapping[str, np.ndarray]] = OrderedDict()
        self._last = 0

    def file(self, fields: Mapping[str, np.ndarray]) -> int:
        self._last = self._last % MAX_TICKET + 1
        self._entries[self._last] = fields
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return self._last

    def take(self, ticket: int) -> Mapping[str, np.ndarray]:
        entry = self._entries.pop(ticket, None)
        if entry is None:
            raise RuntimeError(
                f"no candidates filed under ticket {ticket}: the request joined "
                f"the batch more than {self.capacity} requests ago"
            )
        return entry


@dataclass
class CandidateBatch:
    """The candidates of some finished requests, on the device, in one pass."""

    items: torch.Tensor  # int64 [C]
    features: torch.Tensor  # float32 [C, cross features]
    times: torch.Tensor  # int64 [C]
    limits: torch.Tensor  # int32 [C]
    start: torch.Tensor  # int32 [R + 1]: request r's rows start[r]:start[r+1]
    block_table: torch.Tensor  # [R, blocks]: these requests' block-table rows
    counts: list[int]

    @classmethod
    def build(
        cls,
        entries: Sequence[Mapping[str, np.ndarray]],
        block_table: torch.Tensor,
        device: torch.device,
    ) -> CandidateBatch:
        counts = [len(entry["candidate_items"]) for entry in entries]
        start = np.zeros(len(counts) + 1, dtype=np.int32)
        np.cumsum(counts, out=start[1:])

        pinned = device.type == "cuda"

        def joined(name: str, dtype: torch.dtype) -> torch.Tensor:
            parts = [entry[name] for entry in entries]
            shape = (int(start[-1]), *parts[0].shape[1:])
            # Joined straight into page-locked memory, from which the copy is
            # one DMA; from pageable memory the driver stages it through a
            # buffer of its own (the DLRMv3 pass's copies took 0.5 ms of
            # device time that way on the H200).
            host = torch.empty(shape, dtype=dtype, pin_memory=pinned)
            np.concatenate(parts, out=host.numpy())
            return host.to(device, non_blocking=True)

        return cls(
            items=joined("candidate_items", torch.int64),
            features=joined("candidate_features", torch.float32),
            times=joined("candidate_times", torch.int64),
            limits=joined("candidate_limits", torch.int32),
            start=torch.from_numpy(start).to(device, non_blocking=True),
            block_table=block_table,
            counts=counts,
        )


def passes(counts: Sequence[int], most: int = ROWS_PER_PASS) -> list[slice]:
    """Consecutive requests grouped into passes of at most `most` rows (a
    request larger than that is a pass of its own)."""
    groups, first, rows = [], 0, 0
    for i, count in enumerate(counts):
        if rows and rows + count > most:
            groups.append(slice(first, i))
            first, rows = i, 0
        rows += count
    if first < len(counts):
        groups.append(slice(first, len(counts)))
    return groups
