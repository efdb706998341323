"""Per-event side data (timestamps, action types) and how it travels through vLLM.

Why this shape (the choice docs/DESIGN.md section 4 asks for):

* HSTU's time bias for query token i and key token j is
  `ts_w[bucket(ts[i + 1] - ts[j])]`: every token needs its own key time `ts[j]`
  and query time `ts[i + 1]` (the next event's time; the request time for the
  last history event and for generated items), in prefill *and* decode.
* Prompt embeddings cannot carry exact 31-bit integers in bf16, and
  `SamplingParams.extra_args` reaches only logits processors, never `forward`,
  and is not part of the prefix-cache key. Neither works.
* A multimodal item ("events") is hashed into vLLM's block hashes, so two
  histories with equal items but different timestamps never share cached
  blocks. Its data reaches the model only at prefill, though.
* M-RoPE-style position rows reach `forward` for every token, prefill and
  decode (decode rows are `position + delta`, one delta per request).

So: the history is split into "events" chunks of `EVENT_CHUNK_TOKENS` tokens
(a grown history then changes only its last chunk, and the blocks before it
stay cached), and each token's position row packs `time << POSITION_BITS |
position`. With `delta = request_time << POSITION_BITS`, generated tokens decode
to key and query time = request time, with no per-step help from the
scheduler. Key times of cached tokens are read back from the KV pages, where
the model stores them as four byte-valued slots of each key (exact in fp32,
fp16 and bf16): see `vllm_mtgr.slots`.

A chunk's query times include the first timestamp of the next chunk, so the
hash of a chunk covers everything its tokens' KV depends on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vllm_mtgr.errors import RequestError

MODALITY = "events"
# Each chunk costs vLLM's multimodal machinery (hashing, scheduling, encoder
# cache) the same host time, whatever its length: a 1040-event history is 17
# chunks, not 65 (host time per request, attention stubbed, on CPU: 10-11 ms
# -> 7.6-7.8 ms). A grown history recomputes at most one chunk, so 64 tokens
# is still cheap to redo.
EVENT_CHUNK_TOKENS = 64
POSITION_BITS = 20
MAX_POSITION = (1 << POSITION_BITS) - 1
MAX_TIMESTAMP = (1 << 31) - 1


class EventsError(RequestError):
    """A request's events do not fit its history."""


@dataclass(frozen=True)
class Events:
    """The side data of one request's history (all lists as long as the history)."""

    timestamps: tuple[int, ...]
    request_timestamp: int
    actions: tuple[int, ...] | None = None

    @property
    def query_times(self) -> tuple[int, ...]:
        """`ts[i + 1]` for each event; the request time for the last one."""
        return self.timestamps[1:] + (self.request_timestamp,)


def _as_int_list(name: str, values: object) -> list[int]:
    if isinstance(values, (torch.Tensor, np.ndarray)):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise EventsError(f"`{name}` must be a list of integers", name)
    if set(map(type, values)) <= {int}:  # the common case, at C speed
        return list(values)
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise EventsError(
                f"`{name}[{i}]` must be an integer, got {type(value).__name__} "
                f"{value!r}",
                name,
            )
        out.append(int(value))
    return out


def _check_timestamp(name: str, value: int) -> None:
    if not 0 <= value <= MAX_TIMESTAMP:
        raise EventsError(
            f"`{name}` = {value} is outside [0, {MAX_TIMESTAMP}]: send seconds "
            "(e.g. Unix time), relative to any fixed origin",
            name.split("[")[0],
        )


def parse_events(
    num_events: int,
    timestamps: object,
    request_timestamp: object = None,
    actions: object = None,
    num_action_types: int = 0,
) -> Events:
    """Validate a request's side data against a history of `num_events` items."""
    ts = _as_int_list("timestamps", timestamps)
    if len(ts) != num_events:
        raise EventsError(
            f"`timestamps` has {len(ts)} values but the history has {num_events} items",
            "timestamps",
        )
    if ts and not 0 <= min(ts) <= max(ts) <= MAX_TIMESTAMP:
        for i, value in enumerate(ts):
            _check_timestamp(f"timestamps[{i}]", value)
    # HSTU buckets |t_next - t_event|: out of order, a history would still
    # get an answer, computed on times that cannot be right.
    times = np.asarray(ts, dtype=np.int64)
    if (times[1:] < times[:-1]).any():
        i = int(np.flatnonzero(times[1:] < times[:-1])[0])
        raise EventsError(
            f"`timestamps` must be in time order: timestamps[{i + 1}] = "
            f"{ts[i + 1]} is before timestamps[{i}] = {ts[i]}",
            "timestamps",
        )
    if request_timestamp is None:
        request_time = ts[-1] if ts else 0
    else:
        (request_time,) = _as_int_list("request_timestamp", [request_timestamp])
        _check_timestamp("request_timestamp", request_time)
        if ts and request_time < ts[-1]:
            raise EventsError(
                f"`request_timestamp` = {request_time} is before the last event "
                f"({ts[-1]}): a recommendation comes after the history",
                "request_timestamp",
            )
    action_ids = None
    if actions is not None:
        if num_action_types == 0:
            raise EventsError(
                "`actions` given, but this model has no action types", "actions"
            )
        action_ids = _as_int_list("actions", actions)
        if len(action_ids) != num_events:
            raise EventsError(
                f"`actions` has {len(action_ids)} values but the history has "
                f"{num_events} items",
                "actions",
            )
        for i, value in enumerate(action_ids):
            if not 0 <= value < num_action_types:
                raise EventsError(
                    f"`actions[{i}]` = {value} is outside [0, {num_action_types})",
                    "actions",
                )
    return Events(tuple(ts), request_time, tuple(action_ids) if action_ids else None)


@dataclass(frozen=True)
class EventChunk:
    """One multimodal "events" item: a run of consecutive history tokens."""

    offset: int
    item_ids: np.ndarray
    key_times: np.ndarray
    query_times: np.ndarray
    actions: np.ndarray

    def as_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "item_ids": torch.from_numpy(self.item_ids),
            "key_times": torch.from_numpy(self.key_times),
            "query_times": torch.from_numpy(self.query_times),
            "actions": torch.from_numpy(self.actions),
        }


def chunk_events(item_ids: Sequence[int], events: Events) -> list[EventChunk]:
    """Split a history into "events" items of `EVENT_CHUNK_TOKENS` tokens."""
    ids = np.asarray(item_ids, dtype=np.int64)
    key_times = np.asarray(events.timestamps, dtype=np.int64)
    query_times = np.asarray(events.query_times, dtype=np.int64)
    actions = (
        np.asarray(events.actions, dtype=np.int64)
        if events.actions is not None
        else np.zeros(len(ids), dtype=np.int64)
    )
    return [
        EventChunk(
            offset=start,
            item_ids=ids[start : start + EVENT_CHUNK_TOKENS],
            key_times=key_times[start : start + EVENT_CHUNK_TOKENS],
            query_times=query_times[start : start + EVENT_CHUNK_TOKENS],
            actions=actions[start : start + EVENT_CHUNK_TOKENS],
        )
        for start in range(0, len(ids), EVENT_CHUNK_TOKENS)
    ]


def content_hash(key: str, arrays: Mapping[str, np.ndarray]) -> str:
    """The multimodal hash of an item: `key` (model, ...) and its named arrays."""
    digest = hashlib.sha256(key.encode())
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def encode_position_rows(
    num_tokens: int,
    key_times: np.ndarray | None = None,
    query_times: np.ndarray | None = None,
) -> np.ndarray:
    """Position rows `[3, num_tokens]`: key time, query time, key time (unused).

    Tokens without events (plain text prompts) get time 0.
    """
    if num_tokens - 1 > MAX_POSITION:
        raise EventsError(
            f"history of {num_tokens} tokens exceeds {MAX_POSITION}", "prompt"
        )
    positions = np.arange(num_tokens, dtype=np.int64)
    if key_times is None:
        key_times = np.zeros(num_tokens, dtype=np.int64)
    if query_times is None:
        query_times = key_times
    key_row = (key_times << POSITION_BITS) | positions
    query_row = (query_times << POSITION_BITS) | positions
    return np.stack([key_row, query_row, key_row])


# Ranking row 2: (limit << 2 | group) in the 22 bits above the position, and
# for a request's last token its candidates' ticket (`vllm_mtgr.candidates`)
# in the bits above those.
_LIMIT_GROUP_BITS = 2 + POSITION_BITS
TICKET_SHIFT = POSITION_BITS + _LIMIT_GROUP_BITS
MAX_TICKET = (1 << (63 - TICKET_SHIFT)) - 1


def encode_ranking_rows(
    positions: np.ndarray,
    key_times: np.ndarray,
    query_times: np.ndarray,
    key_limits: np.ndarray,
    groups: np.ndarray,
    ticket: int = 0,
) -> np.ndarray:
    """Ranking rows: times as above; row 2 packs each query's key limit and
    token group (`(limit << 2 | group) << POSITION_BITS | position`), and the
    last token's row 2 the request's candidates `ticket` above them.

    Ranking models never decode, so no delta touches these rows.
    """
    rows = np.stack(
        [
            (key_times << POSITION_BITS) | positions,
            (query_times << POSITION_BITS) | positions,
            (((key_limits << 2) | groups) << POSITION_BITS) | positions,
        ]
    )
    rows[2, -1] |= ticket << TICKET_SHIFT
    return rows


def decode_ranking_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(key limits, token groups) from ranking rows."""
    packed = (rows[2] >> POSITION_BITS) & ((1 << _LIMIT_GROUP_BITS) - 1)
    return packed >> 2, packed & 3


def decode_tickets(row: torch.Tensor) -> torch.Tensor:
    """Candidates' tickets from row 2 values of requests' last tokens."""
    return row >> TICKET_SHIFT


def set_beam_row(rows: np.ndarray, width: int, exclude_seen: bool) -> None:
    """Semantic-ID retrieval: the last token's row 2 (a copy of the key row,
    unused by the model) packs the request's beam width and exclude_seen
    above the position, for the pooler (`vllm_mtgr.semantic`)."""
    rows[2, -1] = ((width << 1 | int(exclude_seen)) << POSITION_BITS) | (
        rows[2, -1] & MAX_POSITION
    )


def decode_beam_rows(row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(beam widths, exclude_seen) from row 2 values of requests' last
    tokens; width 0: a request without a beam (vLLM's warm-up)."""
    packed = row >> POSITION_BITS
    return packed >> 1, (packed & 1).bool()


def decode_delta(request_timestamp: int) -> int:
    """M-RoPE delta: generated tokens decode to time = request time."""
    return request_timestamp << POSITION_BITS


def decode_position_rows(
    rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positions, key times, query times) of each token, from `[3, T]` rows."""
    positions = rows[0] & MAX_POSITION
    return positions, rows[0] >> POSITION_BITS, rows[1] >> POSITION_BITS
