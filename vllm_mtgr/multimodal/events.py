"""The "events" modality: a history's timestamps and actions as multimodal items.

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

So: the history is split into "events" chunks (`chunk_bounds`: long chunks,
then short ones for its last 64 to 319 events; a grown history then changes
only its last chunks, and the blocks before them stay cached), and each
token's position row (`vllm_mtgr.layout.positions`) packs
`time << POSITION_BITS | position`. With
`delta = request_time << POSITION_BITS`, generated tokens decode
to key and query time = request time, with no per-step help from the
scheduler. Key times of cached tokens are read back from the KV pages, where
the model stores them as four byte-valued slots of each key (exact in fp32,
fp16 and bf16): see `vllm_mtgr.layout.slots`.

A chunk's query times include the first timestamp of the next chunk, so the
hash of a chunk covers everything its tokens' KV depends on.

A request passes `multi_modal_data={"events": {"timestamps": [...],
"actions": [...], "request_timestamp": t}}` next to its history tokens. The
processor validates it against the history, splits it into chunks and hashes
each chunk, which makes timestamps part of the prefix-cache identity. Every
history token lies in exactly one chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from vllm.multimodal.inputs import (
    MultiModalFieldConfig,
    MultiModalFieldElem,
    MultiModalKwargsItem,
    MultiModalKwargsItems,
    PlaceholderRange,
)
from vllm.multimodal.parse import (
    ModalityDataItems,
    MultiModalDataParser,
)
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
)

from vllm_mtgr import compat
from vllm_mtgr.requests.events import (
    Events,
    EventsError,
    next_event_times,
    parse_events,
)
from vllm_mtgr.requests.validation import check_history
from vllm_mtgr.transfer import PinnedStaging

MODALITY = "events"
# Each chunk costs vLLM's multimodal machinery (hashing, scheduling, the
# encoder batching) about the same host time whatever its length: ~126 us in
# the model runner alone on the H200 (2026-12-03: 1,088 chunks of 64 events,
# 137 ms). So a history is cut into long chunks of LONG_CHUNK_TOKENS, and its
# last EVENT_CHUNK_TOKENS to 319 events into short chunks of that many: 1040
# events are 8 chunks, not 17. The chunk that holds the last event changes
# with the next request (that event's query time is the request's time), so
# a long chunk never holds it: a grown history recomputes from the start of
# that short chunk, as with short chunks only, but for the one request in
# which its long chunks grow by one: that one recomputes the new long chunk.
EVENT_CHUNK_TOKENS = 64
LONG_CHUNK_TOKENS = 256


def chunk_bounds(num_events: int) -> list[int]:
    """Start of every chunk of a history of `num_events` events, then its end."""
    short_tail = max(num_events - EVENT_CHUNK_TOKENS, 0)
    whole = short_tail - short_tail % LONG_CHUNK_TOKENS
    return [
        *range(0, whole, LONG_CHUNK_TOKENS),
        *range(whole, num_events, EVENT_CHUNK_TOKENS),
        num_events,
    ]


def chunk_count(num_events: int) -> int:
    return len(chunk_bounds(num_events)) - 1


def max_chunk_tokens(max_len: int) -> int:
    """The longest chunk of any history of at most `max_len` events."""
    return LONG_CHUNK_TOKENS if max_len >= LONG_CHUNK_TOKENS else EVENT_CHUNK_TOKENS


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


def chunk_events(
    item_ids: np.ndarray | Sequence[int], events: Events
) -> list[EventChunk]:
    """Split a history into its "events" items (`chunk_bounds`)."""
    ids = np.asarray(item_ids, dtype=np.int64)
    key_times = events.timestamps
    next_times = next_event_times(key_times, events.request_timestamp)
    actions = (
        events.actions
        if events.actions is not None
        else np.zeros(len(ids), dtype=np.int64)
    )
    bounds = chunk_bounds(len(ids))
    return [
        EventChunk(
            offset=start,
            item_ids=ids[start:end],
            key_times=key_times[start:end],
            query_times=next_times[start:end],
            actions=actions[start:end],
        )
        for start, end in pairwise(bounds)
    ]


def content_hash(key: str, arrays: Mapping[str, np.ndarray]) -> str:
    """The multimodal hash of an item: `key` (model, ...) and its named arrays."""
    digest = hashlib.sha256(key.encode())
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]))  # its buffer, no copy
    return digest.hexdigest()


FIELDS = ("item_ids", "actions", "key_times", "query_times")


class EventsItems(ModalityDataItems[Mapping[str, object], Mapping[str, object]]):
    """A request's raw events; one multimodal item per chunk.

    Chunking needs only the event count, so the item count is known here,
    before the prompt is seen; `apply` checks the count against the prompt.
    """

    def __init__(self, data: Mapping[str, object], num_action_types: int) -> None:
        super().__init__(data, MODALITY)
        if not isinstance(data, Mapping) or "timestamps" not in data:
            raise EventsError(
                "`events` must be a mapping with a `timestamps` list", "timestamps"
            )
        unknown = set(data) - {"timestamps", "actions", "request_timestamp"}
        if unknown:
            raise EventsError(f"unknown `events` fields: {sorted(unknown)}", "events")
        timestamps = data["timestamps"]
        num_events = len(timestamps) if hasattr(timestamps, "__len__") else -1
        self.events: Events = parse_events(
            max(num_events, 0),
            timestamps,
            data.get("request_timestamp"),
            data.get("actions"),
            num_action_types,
        )

    @property
    def num_events(self) -> int:
        return len(self.events.timestamps)

    def get_count(self) -> int:
        return chunk_count(self.num_events)

    def get(self, index: int) -> Mapping[str, object]:
        return {"events": self.events, "chunk": index}

    def get_processor_data(self) -> Mapping[str, object]:
        return {}

    def get_passthrough_data(self) -> Mapping[str, object]:
        return {}


class EventsDataParser(MultiModalDataParser):
    def __init__(self, num_action_types: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_action_types = num_action_types

    def _parse_events(self, data: object) -> ModalityDataItems | None:
        if data is None:
            return None
        return EventsItems(data, self.num_action_types)  # type: ignore[arg-type]

    def _get_subparsers(self):
        return {MODALITY: self._parse_events}


class EventsProcessingInfo(BaseProcessingInfo):
    def get_data_parser(self) -> MultiModalDataParser:
        return EventsDataParser(self.get_hf_config().num_action_types)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {MODALITY: None}

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int]
    ) -> Mapping[str, int]:
        return {MODALITY: max_chunk_tokens(seq_len)}


class EventsDummyInputsBuilder(BaseDummyInputsBuilder[EventsProcessingInfo]):
    """Profiling inputs: `count` longest chunks of token 1 at time 0."""

    def _dummy_events(self, mm_counts: Mapping[str, int]) -> int:
        longest = max_chunk_tokens(self.info.ctx.model_config.max_model_len)
        return mm_counts.get(MODALITY, 0) * longest

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        count = self._dummy_events(mm_counts)
        # Token 1 by the tokenizer's name for it: `item_1`, or a semantic-ID
        # model's first code token when it is served as a causal LM.
        name = self.info.get_tokenizer().convert_ids_to_tokens(1)
        return " ".join([name] * count)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], *_args):
        count = self._dummy_events(mm_counts)
        if count == 0:
            return {}
        return {MODALITY: {"timestamps": [0] * count}}


def host_fields(
    modality: str, names: Sequence[str]
) -> dict[str, MultiModalFieldConfig]:
    """One batched field per name, all kept on the host: position rows are
    computed there, and the embedding inputs reach the device in one copy per
    batch (the models' `embed_multimodal`), not in one synchronous copy per
    item."""
    return {
        name: MultiModalFieldConfig.batched(modality, keep_on_cpu=True)
        for name in names
    }


def fields_config(extra: Sequence[str] = ()) -> dict[str, MultiModalFieldConfig]:
    return host_fields(MODALITY, FIELDS + tuple(extra))


def chunk_hash(model_id: str, chunk: EventChunk) -> str:
    # All of the chunk, its item ids too although the block hashes hold them
    # as tokens: vLLM's encoder cache hands the embeddings computed for one
    # hash to every chunk of that hash, in any request.
    fields = ("item_ids", "key_times", "query_times", "actions")
    return content_hash(model_id, {name: getattr(chunk, name) for name in fields})


def chunked_input(
    model_id: str,
    prompt: list[int],
    chunks: Sequence[EventChunk],
    request_fields: Mapping[str, torch.Tensor] | None = None,
):
    """The processed prompt of a history's event chunks; `request_fields`
    ride in every chunk, outside its hash (they are no part of the KV)."""
    extra = dict(request_fields or {})
    fields = {name: c.field for name, c in fields_config(tuple(extra)).items()}
    kwargs_items = [
        MultiModalKwargsItem(
            {
                name: MultiModalFieldElem(data=tensor, field=fields[name])
                for name, tensor in {**chunk.as_tensors(), **extra}.items()
            }
        )
        for chunk in chunks
    ]
    return compat.mm_input(
        prompt_token_ids=prompt,
        mm_kwargs=MultiModalKwargsItems({MODALITY: kwargs_items}),
        mm_hashes={MODALITY: [chunk_hash(model_id, c) for c in chunks]},
        mm_placeholders={
            MODALITY: [
                PlaceholderRange(offset=c.offset, length=len(c.item_ids))
                for c in chunks
            ]
        },
    )


class EventsMultiModalProcessor(BaseMultiModalProcessor[EventsProcessingInfo]):
    """Attaches validated, chunked events to a history; the tokens stay as they are."""

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs, **_kwargs):
        return fields_config()

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        return []

    def apply(self, inputs, timing_ctx=None, *_args, **_kwargs):
        prompt = inputs.prompt
        if isinstance(prompt, str):  # vLLM 0.26 profiles with untokenized text
            prompt = self.info.get_tokenizer().encode(prompt, add_special_tokens=False)
        prompt = list(prompt)
        ids = np.asarray(prompt, dtype=np.int64)  # once, for the check and the chunks
        items = inputs.mm_data_items.get(MODALITY)
        config = self.info.get_hf_config()
        check_history(ids, config)
        if not isinstance(items, EventsItems):
            raise EventsError("expected one `events` entry for the history", "events")
        if items.num_events != len(prompt):
            raise EventsError(
                f"`timestamps` has {items.num_events} values but the history has "
                f"{len(prompt)} items",
                "timestamps",
            )
        chunks = chunk_events(ids, items.events)
        return chunked_input(self.info.model_id, prompt, chunks)


def events_from_features(
    num_tokens: int, features: Sequence[object]
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """(key times, query times, request time) of a prompt from its events items.

    Returns `(None, None, 0)` for a prompt without events (plain text). Times
    are `keep_on_cpu` fields, which vLLM keeps even for chunks inside a
    prefix-cache hit (it drops the other fields there).
    """
    chunks = [f for f in features if f.modality == MODALITY]
    if not chunks:
        return None, None, 0
    key_times = np.zeros(num_tokens, dtype=np.int64)
    query_times = np.zeros(num_tokens, dtype=np.int64)
    last_end, request_time = -1, 0
    for feature in chunks:
        start = feature.mm_position.offset
        end = start + feature.mm_position.length
        key_times[start:end] = _field(feature, "key_times")
        chunk_query_times = _field(feature, "query_times")
        query_times[start:end] = chunk_query_times
        if end > last_end:
            last_end, request_time = end, int(chunk_query_times[-1])
    return key_times, query_times, request_time


def _field(feature: object, name: str) -> np.ndarray:
    data = feature.data[name].data  # type: ignore[attr-defined]
    if isinstance(data, torch.Tensor):
        return data.numpy()
    return np.asarray(data)


def as_tensor_list(batch: object) -> list[torch.Tensor]:
    """A batched multimodal field as one tensor per item (vLLM passes either)."""
    if isinstance(batch, torch.Tensor):
        return list(batch.unbind(0))
    return list(batch)  # type: ignore[arg-type]


def merge_event_embeddings(
    embeds: torch.Tensor,
    multimodal_embeddings: Sequence[torch.Tensor] | None,
    is_multimodal: torch.Tensor | None,
    staging: PinnedStaging,
) -> torch.Tensor:
    """Write the per-item embeddings over the token embeddings they replace.

    vLLM hands `is_multimodal` on the host: its rows reach the device through
    `staging`, without blocking (`vllm_mtgr.transfer`); the mask copied to
    the device and indexed there made the host wait twice, for the copy and
    for the mask's count.
    """
    if multimodal_embeddings is not None and len(multimodal_embeddings) > 0:
        assert is_multimodal is not None
        values = torch.cat(list(multimodal_embeddings)).to(embeds.dtype)
        rows = staging.copy(np.flatnonzero(is_multimodal.cpu().numpy()))
        embeds.index_copy_(0, rows, values)
    return embeds
