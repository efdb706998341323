"""Semantic-ID retrieval over vLLM's `/pooling` endpoint: an IO-processor plugin.

A semantic-ID model's config.json names this plugin (`"io_processor_plugin":
"mtgr_semantic"`, written by `converters.semantic_ids.make_model`), so `vllm
serve` loads it without flags. Online:

    POST /pooling {"model": ..., "data": <request or list of requests>}

Offline: `LLM.encode({"data": ...}, pooling_task="plugin")`. A request
(`vllm_mtgr.requests.semantic`):

    {"history": {"items": [...], "timestamps": [...]},
     "request_timestamp": 978310000, "beam_width": 50, "exclude_seen": true}

The response data: {"results": [{"items": [...], "scores": [...],
"num_cached_tokens": n}, ...]}, one result per request, in order; items best
first, scores their summed log-probabilities over the code's levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm_mtgr.multimodal.events import MODALITY
from vllm_mtgr.requests.semantic import (
    SemanticRequest,
    catalogue_codes,
    parse_semantic_request,
)
from vllm_mtgr.serving.users import UsersIOProcessor, parse_users


def io_processor() -> str:
    """The `vllm.io_processor_plugins` entry point: the processor's class path."""
    return "vllm_mtgr.serving.semantic.SemanticIOProcessor"


class SemanticIOProcessor(UsersIOProcessor):
    def __init__(self, vllm_config: Any, renderer: Any) -> None:
        super().__init__(vllm_config, renderer)
        self.vocab = catalogue_codes(
            vllm_config.model_config.model, self.config.num_items
        )

    def parse_data(self, data: object) -> list[SemanticRequest]:
        def parse(raw: object) -> SemanticRequest:
            return parse_semantic_request(raw, self.config, self.vocab)

        return parse_users(data, parse, self.max_users, "semantic-ID")

    def pre_process(self, prompt, request_id=None, **kwargs) -> list[dict]:
        # The parsed request travels on: the multimodal processor builds the
        # code-token prompt from it without validating it a second time.
        return [
            {
                "prompt_token_ids": request.token_events(self.vocab)[0],
                "multi_modal_data": {MODALITY: request},
            }
            for request in prompt
        ]

    def post_process(
        self, model_output: Sequence[Any], request_id=None, **kwargs
    ) -> dict:
        results = []
        for output in model_output:
            found = output.outputs.data
            results.append(
                {
                    "items": found[:, 0].long().tolist(),
                    "scores": found[:, 1].tolist(),
                    "num_cached_tokens": output.num_cached_tokens,
                }
            )
        return {"results": results}
