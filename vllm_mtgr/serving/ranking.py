"""Ranking over vLLM's `/pooling` endpoint: an IO-processor plugin.

A ranking model's config.json names this plugin (`"io_processor_plugin":
"mtgr_ranking"`), so `vllm serve` loads it without flags. Online:

    POST /pooling {"model": ..., "data": <request or list of requests>}

Offline: `LLM.encode({"data": ...}, pooling_task="plugin")`. A request:

    {"profile": [3, 17],                        # one value per profile feature
     "history":  {"items": [...], "timestamps": [...], "actions": [...]},
     "realtime": {"items": [...], "timestamps": [...], "actions": [...]},
     "candidates": {"items": [...], "features": [[...], ...]},
     "request_timestamp": 978310000}

The response data: {"tasks": [...], "results": [{"items": [...], "scores":
{task: [one probability per candidate]}, "num_cached_tokens": n}, ...]},
one result per request, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm_mtgr.multimodal.ranking import MODALITY
from vllm_mtgr.requests.ranking import RankingRequest, parse_ranking_request, token_ids
from vllm_mtgr.serving.users import UsersIOProcessor, parse_users

PLUGIN_NAME = "mtgr_ranking"


def io_processor() -> str:
    """The `vllm.io_processor_plugins` entry point: the processor's class path."""
    return "vllm_mtgr.serving.ranking.RankingIOProcessor"


class RankingIOProcessor(UsersIOProcessor):
    def parse_data(self, data: object) -> list[RankingRequest]:
        def parse(raw: object) -> RankingRequest:
            return parse_ranking_request(raw, self.config)

        return parse_users(data, parse, self.max_users, "ranking")

    def pre_process(self, prompt, request_id=None, **kwargs) -> list[dict]:
        # The parsed request travels on: the multimodal processor takes it
        # as it is instead of validating the raw JSON a second time.
        return [
            {
                "prompt_token_ids": token_ids(request, self.config),
                "multi_modal_data": {MODALITY: request},
            }
            for request in prompt
        ]

    def post_process(
        self, model_output: Sequence[Any], request_id=None, **kwargs
    ) -> dict:
        tasks = list(self.config.task_names)
        results = []
        for output in model_output:
            by_task = output.outputs.data.T.tolist()  # [tasks][candidates]
            results.append(
                {
                    "scores": dict(zip(tasks, by_task, strict=True)),
                    "num_cached_tokens": output.num_cached_tokens,
                }
            )
        return {"tasks": tasks, "results": results}
