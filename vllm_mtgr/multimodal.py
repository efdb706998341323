"""The "events" modality: a history's timestamps and actions as multimodal items.

A request passes `multi_modal_data={"events": {"timestamps": [...],
"actions": [...], "request_timestamp": t}}` next to its history tokens. The
processor validates it against the history, splits it into chunks (see
`vllm_mtgr.events`) and hashes each chunk, which makes timestamps part of the
prefix-cache identity. Every history token lies in exactly one chunk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
from vllm_mtgr.events import (
    EVENT_CHUNK_TOKENS,
    MODALITY,
    EventChunk,
    Events,
    EventsError,
    chunk_events,
    content_hash,
    parse_events,
)
from vllm_mtgr.validation import check_history

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
        return -(-self.num_events // EVENT_CHUNK_TOKENS)

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
        return {MODALITY: EVENT_CHUNK_TOKENS}


class EventsDummyInputsBuilder(BaseDummyInputsBuilder[EventsProcessingInfo]):
    """Profiling inputs: `count` full chunks of token 1 at time 0."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        count = mm_counts.get(MODALITY, 0) * EVENT_CHUNK_TOKENS
        # Token 1 by the tokenizer's name for it: `item_1`, or a semantic-ID
        # model's first code token when it is served as a causal LM.
        name = self.info.get_tokenizer().convert_ids_to_tokens(1)
        return " ".join([name] * count)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], *_args):
        count = mm_counts.get(MODALITY, 0) * EVENT_CHUNK_TOKENS
        if count == 0:
            return {}
        return {MODALITY: {"timestamps": [0] * count}}


def host_fields(
    modality: str, names: Sequence[str]
) -> dict[str, MultiModalFieldConfig]:
    """One batched field per name, all kept on the host: position rows are
    computed there, and the embedding inputs reach the device in one copy per
    batch (see `to_device_by_item`), not in one synchronous copy per item."""
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
        items = inputs.mm_data_items.get(MODALITY)
        config = self.info.get_hf_config()
        check_history(prompt, config)
        if not isinstance(items, EventsItems):
            raise EventsError("expected one `events` entry for the history", "events")
        if items.num_events != len(prompt):
            raise EventsError(
                f"`timestamps` has {items.num_events} values but the history has "
                f"{len(prompt)} items",
                "timestamps",
            )
        chunks = chunk_events(prompt, items.events)
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
