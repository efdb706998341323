"""The `vllm.endpoint_plugins` entry point for the OpenAI-compatible server.

vLLM loads endpoint plugins only when `VLLM_PLUGINS` names them
(`VLLM_PLUGINS=mtgr vllm serve ...`; `vllm-mtgr serve` sets it). The plugin
adds no route: it gives the existing `/v1/completions` an events-aware
renderer (`vllm_mtgr.serving.completions`).
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from vllm_mtgr.serving.completions import with_events


class MTGREndpointPlugin:
    name = "mtgr"
    required_tasks = ("generate",)

    def attach_router(self, app: Any) -> None:
        """Nothing to attach: `/v1/completions` stays vLLM's route."""

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        serving = getattr(state, "openai_serving_completion", None)
        if serving is not None:
            state.openai_serving_completion = with_events(serving)
