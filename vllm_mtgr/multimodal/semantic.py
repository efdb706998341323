"""A semantic-ID request as the "events" modality of its code-token prompt.

`multi_modal_data={"events": request}` carries the public request object
(`vllm_mtgr.requests.semantic`) or the `SemanticRequest` the IO processor has
parsed from it. The processor builds the prompt (each event's code tokens)
and its event chunks as item-ID retrieval does (`vllm_mtgr.multimodal.events`), so
timestamps enter the prefix-cache identity the same way. The beam's settings
(`BEAM_FIELD`: width, exclude_seen) ride in every chunk outside its hash: a
returning user's cached history serves any width.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from vllm.multimodal.parse import ModalityDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
)

from vllm_mtgr.layout.code_trie import CodeTokens
from vllm_mtgr.multimodal.events import (
    MODALITY,
    EventsProcessingInfo,
    chunk_count,
    chunk_events,
    chunked_input,
    fields_config,
)
from vllm_mtgr.requests.semantic import (
    SemanticRequest,
    catalogue_codes,
    parse_semantic_request,
)

BEAM_FIELD = "beam"  # int64 [2]: beam width, exclude_seen (0 / 1)


class SemanticItems(ModalityDataItems[object, SemanticRequest]):
    """One validated request; its chunks are built in `apply`."""

    def __init__(self, data: object, request: SemanticRequest, levels: int) -> None:
        super().__init__(data, MODALITY)
        self.request = request
        self.levels = levels

    def get_count(self) -> int:
        return chunk_count(len(self.request.history.items) * self.levels)

    def get(self, index: int) -> SemanticRequest:
        return self.request

    def get_processor_data(self) -> Mapping[str, object]:
        return {}

    def get_passthrough_data(self) -> Mapping[str, object]:
        return {}


class SemanticDataParser(MultiModalDataParser):
    def __init__(self, config, vocab: CodeTokens, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.vocab = vocab

    def _parse_request(self, data: object) -> ModalityDataItems | None:
        if data is None:
            return None
        if isinstance(data, SemanticRequest):  # validated by the IO processor
            return SemanticItems(data, data, self.vocab.levels)
        request = parse_semantic_request(data, self.config, self.vocab)
        return SemanticItems(data, request, self.vocab.levels)

    def _get_subparsers(self):
        return {MODALITY: self._parse_request}


class SemanticProcessingInfo(EventsProcessingInfo):
    """The events modality's limits; items parsed from a semantic-ID request."""

    def code_tokens(self) -> CodeTokens:
        config = self.get_hf_config()
        return catalogue_codes(self.ctx.model_config.model, config.num_items)

    def get_data_parser(self) -> MultiModalDataParser:
        return SemanticDataParser(self.get_hf_config(), self.code_tokens())


def longest_request(config, levels: int, seq_len: int) -> dict:
    """The longest valid request of at most `seq_len` tokens: item 1, again
    and again, at time 0."""
    tokens = min(config.max_position_embeddings - levels + 1, seq_len)
    events = tokens // levels
    return {"history": {"items": [1] * events, "timestamps": [0] * events}}


class SemanticDummyInputsBuilder(BaseDummyInputsBuilder[SemanticProcessingInfo]):
    """Profiling input: the longest history the model takes, of item 1."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""  # the processor builds the prompt from the request

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], *_args):
        if not mm_counts.get(MODALITY):
            return {}
        levels = self.info.code_tokens().levels
        return {MODALITY: longest_request(self.info.get_hf_config(), levels, seq_len)}


class SemanticMultiModalProcessor(BaseMultiModalProcessor[SemanticProcessingInfo]):
    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs, **_kwargs):
        return fields_config((BEAM_FIELD,))

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        return []

    def apply(self, inputs, timing_ctx=None, *_args, **_kwargs):
        parsed = inputs.mm_data_items.get(MODALITY)
        if not isinstance(parsed, SemanticItems):
            raise ValueError(
                "a semantic-ID prompt needs multi_modal_data['events']: the request"
            )
        request = parsed.request
        tokens, events = request.token_events(self.info.code_tokens())
        beam = torch.tensor([request.beam_width, int(request.exclude_seen)])
        return chunked_input(
            self.info.model_id,
            tokens,
            chunk_events(tokens, events),
            {BEAM_FIELD: beam},
        )
