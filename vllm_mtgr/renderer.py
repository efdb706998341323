"""Renderer for MTGR models: vLLM's Hugging Face renderer plus history checks.

Every prompt, offline or served, text or token ids, with or without events,
passes `process_for_engine`; checking there turns an unknown item into a
clear error (HTTP 400 on the server) instead of an `<unk>` embedding.
"""

from __future__ import annotations

from typing import Any

from vllm.renderers.hf import HfRenderer

from vllm_mtgr.errors import RequestError
from vllm_mtgr.multimodal.ranking import MODALITY as RANKING
from vllm_mtgr.requests.validation import check_history


class MTGRRenderer(HfRenderer):
    def _check(self, prompt: Any) -> None:
        if not isinstance(prompt, dict):
            return
        config = self.config.model_config.hf_config
        if config.is_ranking:
            # The ranking processor validates the request and builds the prompt.
            if RANKING not in (prompt.get("multi_modal_data") or {}):
                raise RequestError(
                    "a ranking model takes ranking requests (`data` on /pooling, "
                    "or multi_modal_data['ranking'] offline), not text",
                    "prompt",
                )
            return
        token_ids = prompt.get("prompt_token_ids")
        if token_ids is not None:
            check_history(token_ids, config, prompt.get("prompt"))

    def process_for_engine(self, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        self._check(prompt)
        return super().process_for_engine(prompt, *args, **kwargs)

    async def process_for_engine_async(
        self, prompt: Any, *args: Any, **kwargs: Any
    ) -> Any:
        self._check(prompt)
        return await super().process_for_engine_async(prompt, *args, **kwargs)
