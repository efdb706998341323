"""The "ranking" modality: a ranking request as multimodal items.

`multi_modal_data={"ranking": request}` carries the public request object
(`vllm_mtgr.ranking_request`), or the `RankingRequest` the IO processor has
already parsed from it; the processor validates the former, rebuilds the
prompt from it and emits three kinds of items, all with the same fields:

* the context (profile + long history), one item, never split: its tokens
  attend to each other both ways, so every cached block of it depends on all
  of it, and its hash (all of its content) enters every one of its blocks;
* the real-time history, in `REALTIME_CHUNK_TOKENS` chunks (causal, so a
  returning user's new events reuse the blocks before them);
* the candidates, one item whose hash includes a per-request nonce: their
  blocks are never reused, so every candidate is computed, in the request's
  last step, where the pooler reads it.
"""

from __future__ import annotations

import uuid
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
from vllm_mtgr.events import content_hash
from vllm_mtgr.multimodal import host_fields
from vllm_mtgr.ranking_request import (
    CANDIDATE,
    HISTORY,
    PROFILE,
    REALTIME,
    RankingRequest,
    parse_ranking_request,
    token_ids,
)

MODALITY = "ranking"
CONTEXT_ITEM, EVENTS_ITEM, CANDIDATES_ITEM = range(3)
# Per-token fields the position rows need.
ROW_FIELDS = ("positions", "key_times", "query_times", "limits", "groups")
EMBEDDING_FIELDS = ("kind", "values", "actions", "features")
# Finer than retrieval's event chunks: a real-time history is short (tens of
# events) and grows by one or two events between requests, so small chunks
# keep more of it cached, and a request has only a few of them.
REALTIME_CHUNK_TOKENS = 16


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
        realtime = len(self.request.realtime.items)
        return (
            (1 if self.request.context_end else 0)
            + -(-realtime // REALTIME_CHUNK_TOKENS)
            + 1
        )

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
    """Profiling input: the longest context the model takes, one candidate."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""  # the processor builds the prompt from the request

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], *_args):
        if not mm_counts.get(MODALITY):
            return {}
        config = self.info.get_hf_config()
        longest = min(config.max_position_embeddings, seq_len)
        history = max(longest - config.num_profile_features - 1, 0)
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
    return host_fields(MODALITY, ROW_FIELDS + EMBEDDING_FIELDS)


def ranking_items(
    request: RankingRequest, num_features: int
) -> list[tuple[int, dict[str, np.ndarray]]]:
    """(offset, per-token arrays) for each item of a request, in prompt order.

    Key and query time are equal for every token (see ranking_request).
    """
    h, r = request.history, request.realtime
    context = request.context_end
    items: list[tuple[int, dict[str, np.ndarray]]] = []

    def item(kind, offset, values, actions, times, limits, groups, positions, features):
        times = np.asarray(times, dtype=np.int64)
        items.append(
            (
                offset,
                {
                    "kind": np.array([kind]),
                    "values": np.asarray(values, dtype=np.int64),
                    "actions": np.asarray(actions, dtype=np.int64),
                    "features": features,
                    "positions": np.asarray(positions, dtype=np.int64),
                    "key_times": times,
                    "query_times": times,
                    "limits": np.asarray(limits, dtype=np.int64),
                    "groups": groups,
                },
            )
        )

    def no_features(count: int) -> np.ndarray:
        return np.zeros((count, num_features), np.float32)

    if context:
        p = len(request.profile)
        item(
            CONTEXT_ITEM,
            0,
            request.profile + h.items,
            (0,) * p + h.actions,
            (request.profile_time,) * p + h.timestamps,
            np.full(context, context),
            np.repeat(np.array([PROFILE, HISTORY]), [p, len(h.items)]),
            np.arange(context),
            no_features(context),
        )
    for lo in range(0, len(r.items), REALTIME_CHUNK_TOKENS):
        hi = min(lo + REALTIME_CHUNK_TOKENS, len(r.items))
        item(
            EVENTS_ITEM,
            context + lo,
            r.items[lo:hi],
            r.actions[lo:hi],
            r.timestamps[lo:hi],
            np.zeros(hi - lo),
            np.full(hi - lo, REALTIME),
            np.arange(context + lo, context + hi),
            no_features(hi - lo),
        )
    count = len(request.candidates)
    limits = request.candidate_limits()
    item(
        CANDIDATES_ITEM,
        request.candidate_start,
        request.candidates,
        np.zeros(count, np.int64),
        request.candidate_times,
        limits,
        np.full(count, CANDIDATE),
        limits,  # a candidate's logical position: after what it sees
        request.features,
    )
    return items


class RankingMultiModalProcessor(BaseMultiModalProcessor[RankingProcessingInfo]):
    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs, **_kwargs):
        return _fields_config()

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        return []

    def apply(self, inputs, timing_ctx=None, *_args, **_kwargs):
        parsed = inputs.mm_data_items.get(MODALITY)
        if not isinstance(parsed, RankingItems):
            raise ValueError("a ranking prompt needs multi_modal_data['ranking']")
        config = self.info.get_hf_config()
        request = parsed.request
        items = ranking_items(request, config.num_cross_features)
        configs = _fields_config()
        kwargs_items, hashes, placeholders = [], [], []
        for offset, fields in items:
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
            if int(fields["kind"][0]) == CANDIDATES_ITEM:
                # Never reused (see above): a fresh identity, with no need to
                # hash thousands of candidates' content.
                hashes.append(f"{self.info.model_id}/candidates/{uuid.uuid4().hex}")
            else:
                hashes.append(content_hash(self.info.model_id, fields))
            placeholders.append(
                PlaceholderRange(offset=offset, length=len(fields["values"]))
            )
        return compat.mm_input(
            prompt_token_ids=token_ids(request, config),
            mm_kwargs=MultiModalKwargsItems({MODALITY: kwargs_items}),
            mm_hashes={MODALITY: hashes},
            mm_placeholders={MODALITY: placeholders},
        )
