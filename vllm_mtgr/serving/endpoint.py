"""The `vllm.endpoint_plugins` entry point for the OpenAI-compatible server.

vLLM loads endpoint plugins only when `VLLM_PLUGINS` names them
(`VLLM_PLUGINS=mtgr vllm serve ...`; `vllm-mtgr serve` sets it). The plugin
adds no serving route: it gives the existing `/v1/completions` an
events-aware renderer (`vllm_mtgr.serving.completions`), refuses the routes
that would skip event validation and caps request bodies
(`vllm_mtgr.serving.guards`), for retrieval and ranking models alike.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from vllm_mtgr.serving.completions import with_events
from vllm_mtgr.serving.guards import RankingRequestsOnly, RequestGuard


class MTGREndpointPlugin:
    name = "mtgr"
    # Every task: the guards serve ranking (pooling) servers too.
    required_tasks = None

    def attach_router(self, app: Any) -> None:
        app.add_middleware(RequestGuard)

    async def init_state(
        self, engine_client: Any | None, state: Any, args: Namespace
    ) -> None:
        serving = getattr(state, "openai_serving_completion", None)
        if serving is not None:
            state.openai_serving_completion = with_events(serving)
        pooling = getattr(state, "serving_pooling", None)
        if pooling is not None and _is_ranking(state):
            state.serving_pooling = RankingRequestsOnly(pooling)


def _is_ranking(state: Any) -> bool:
    config = getattr(state, "vllm_config", None)
    # Any model may be served with the plugin loaded; only ours have the property.
    return bool(config and getattr(config.model_config.hf_config, "is_ranking", False))
