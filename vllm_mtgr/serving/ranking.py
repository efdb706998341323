"""Ranking over vLLM's `/pooling` endpoint: an IO-processor plugin.

A ranking model's config.json names this plugin (`"io_processor_plugin":
"mtgr_ranking"`), so `vllm serve` loads it without flags. Online:

    POST /pooling {"model": ..., "data": <request or list of requests>}

Offline: `LLM.encode({"data": ...}, pooling_task="plugin")`. A request:

    {"profile": [3, 17],                        # one value per profile feature
     "history":  {"items": [...], "timestamps": [...], "actions": [...]},
     "realtime": {"items": [...], "timestamps": [...], "actions": [...]},
     "candidates": {"items": [...], "features": [[...], ...]},
     "request_timestamp": 978310000,
     "scores_format": "lists"}                  # or "binary"; offline "numpy"

The response data: {"tasks": [...], "results": [{"scores": {task: [one
probability per candidate]}, "num_cached_tokens": n}, ...]}, one result per
request, in order; with `"scores_format": "binary"` each task's scores are a
typed array `{"dtype": "float32", "shape": [candidates], "data": base64}`
(`vllm_mtgr.arrays.decode_array` reads it); offline, `"numpy"` gives each
task's scores as a float32 NumPy array.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from vllm_mtgr.arrays import encode_array
from vllm_mtgr.errors import RequestError
from vllm_mtgr.multimodal.ranking import MODALITY
from vllm_mtgr.requests.ranking import (
    OFFLINE_SCORES_FORMATS,
    RankingRequest,
    parse_ranking_request,
)
from vllm_mtgr.serving.users import UsersIOProcessor, parse_users

PLUGIN_NAME = "mtgr_ranking"


def io_processor() -> str:
    """The `vllm.io_processor_plugins` entry point: the processor's class path."""
    return "vllm_mtgr.serving.ranking.RankingIOProcessor"


# Requests between `pre_process` and `post_process` whose scores formats are
# kept; one that fails in between leaves its entry, dropped oldest first.
PENDING_FORMATS = 4096


class RankingIOProcessor(UsersIOProcessor):
    def __init__(self, vllm_config: Any, renderer: Any) -> None:
        super().__init__(vllm_config, renderer)
        # request id -> each user's scores format, per pending request of that
        # id: vLLM hands `post_process` the id `pre_process` had (None
        # offline), and a client may send one id (`X-Request-Id`) twice.
        self._formats: OrderedDict[str | None, list[list[str]]] = OrderedDict()

    def parse_data(self, data: object) -> list[RankingRequest]:
        def parse(raw: object) -> RankingRequest:
            return parse_ranking_request(raw, self.config)

        return parse_users(data, parse, self.max_users, "ranking")

    def pre_process(self, prompt, request_id=None, **kwargs) -> list[dict]:
        formats = [request.scores_format for request in prompt]
        if request_id is None:
            # Offline: one call at a time; an earlier call that failed after
            # this point left its entry, which this call replaces.
            self._formats[None] = [formats]
        else:  # online: the response is JSON
            _refuse_offline_formats(formats)
            self._formats.setdefault(request_id, []).append(formats)
        while len(self._formats) > PENDING_FORMATS:
            self._formats.popitem(last=False)
        # The parsed request travels on: the multimodal processor takes it
        # as it is instead of validating the raw JSON a second time.
        return [
            {
                "prompt_token_ids": request.token_ids,
                "multi_modal_data": {MODALITY: request},
            }
            for request in prompt
        ]

    def post_process(
        self, model_output: Sequence[Any], request_id=None, **kwargs
    ) -> dict:
        tasks = list(self.config.task_names)
        formats = self._take_formats(request_id, len(model_output))
        results = []
        for output, scores_format in zip(model_output, formats, strict=True):
            by_task = output.outputs.data.T.float()  # [tasks, candidates]
            if scores_format == "binary":
                scores = [encode_array(row.contiguous()) for row in by_task]
            elif scores_format == "numpy":
                scores = list(by_task.contiguous().numpy())
            else:
                scores = by_task.tolist()
            results.append(
                {
                    "scores": dict(zip(tasks, scores, strict=True)),
                    "num_cached_tokens": output.num_cached_tokens,
                }
            )
        return {"tasks": tasks, "results": results}

    def _take_formats(self, request_id: str | None, users: int) -> list[str]:
        pending = self._formats.get(request_id, [])
        for i, formats in enumerate(pending):
            if len(formats) == users:
                del pending[i]
                if not pending:
                    del self._formats[request_id]
                return formats
        raise RuntimeError(
            f"ranking request {request_id!r}: its scores formats were not kept "
            f"(at most {PENDING_FORMATS} request ids in flight)"
        )


def _refuse_offline_formats(formats: list[str]) -> None:
    for i, scores_format in enumerate(formats):
        if scores_format in OFFLINE_SCORES_FORMATS:
            field = "scores_format" if len(formats) == 1 else f"data[{i}].scores_format"
            raise RequestError(
                f"`scores_format` {scores_format!r} is for the offline API "
                '(`LLM.encode`); over HTTP ask for "binary" or "lists"',
                field,
            )
