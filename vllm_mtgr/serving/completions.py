"""`/v1/completions` with per-event timestamps and actions.

OpenAI's completions request has no field for per-token data, and vLLM's
completions route accepts no multimodal data. vLLM keeps unknown request
fields, though (`model_extra`), and renders every completion request through
`serving.online_renderer.render_completion`. `EventsRenderer` wraps that one
step: a request carrying events becomes a multimodal prompt; everything else
(validation, sampling, logprobs, streaming, errors) stays vLLM's.

Request fields (all optional, via the openai client's `extra_body`):
    timestamps         one integer per history item (list of lists for a batch)
    actions            one action id per history item, likewise
    request_timestamp  the time the recommendation is for (default: last event)
    exclude_seen       false to allow already-seen items (default: true)
"""

from __future__ import annotations

import copy
from typing import Any

from vllm_mtgr.errors import RequestError
from vllm_mtgr.events import MODALITY
from vllm_mtgr.logits_processor import EXCLUDE_SEEN

EVENT_FIELDS = ("timestamps", "actions", "request_timestamp")


def _histories(prompt: Any) -> tuple[list[Any], bool]:
    """(the request's histories, whether the prompt is a batch of them)."""
    if isinstance(prompt, str):
        return [prompt], False
    if isinstance(prompt, list) and all(isinstance(p, int) for p in prompt):
        return [prompt], False
    if isinstance(prompt, list):
        return list(prompt), True
    raise RequestError("`prompt` must be a history (text or item ids)", "prompt")


def _one_per_history(name: str, value: Any, count: int, kind: type) -> list[Any]:
    if (
        not isinstance(value, list)
        or len(value) != count
        or not all(isinstance(v, kind) for v in value)
    ):
        what = "list" if kind is list else "value"
        raise RequestError(
            f"`{name}` must hold one {what} per history: the prompt has {count}", name
        )
    return value


def event_prompts(prompt: Any, extra: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Multimodal prompts for a completion request's histories, or None when
    the request carries no events."""
    if not any(extra.get(name) is not None for name in EVENT_FIELDS):
        return None
    timestamps = extra.get("timestamps")
    actions = extra.get("actions")
    request_time = extra.get("request_timestamp")
    if timestamps is None:
        raise RequestError(
            "`actions` and `request_timestamp` need `timestamps`", "timestamps"
        )
    histories, batch = _histories(prompt)
    count = len(histories)
    if batch:
        timestamps = _one_per_history("timestamps", timestamps, count, list)
        actions = (
            [None] * count
            if actions is None
            else _one_per_history("actions", actions, count, list)
        )
        request_times = (
            _one_per_history("request_timestamp", request_time, count, int)
            if isinstance(request_time, list)
            else [request_time] * count
        )
    else:
        timestamps, actions, request_times = [timestamps], [actions], [request_time]
    prompts = []
    for history, ts, acts, when in zip(
        histories, timestamps, actions, request_times, strict=True
    ):
        events: dict[str, Any] = {"timestamps": ts}
        if acts is not None:
            events["actions"] = acts
        if when is not None:
            events["request_timestamp"] = when
        key = "prompt" if isinstance(history, str) else "prompt_token_ids"
        prompts.append({key: history, "multi_modal_data": {MODALITY: events}})
    return prompts


def _exclude_seen_into_xargs(request: Any, extra: dict[str, Any]) -> None:
    value = extra.get(EXCLUDE_SEEN)
    if value is None:
        return
    if not isinstance(value, bool):
        raise RequestError(f"`{EXCLUDE_SEEN}` must be true or false", EXCLUDE_SEEN)
    request.vllm_xargs = {**(request.vllm_xargs or {}), EXCLUDE_SEEN: int(value)}


class EventsRenderer:
    """vLLM's online renderer, plus events for completion requests."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def render_completion(self, request: Any, **kwargs: Any) -> Any:
        extra = dict(request.model_extra or {})
        _exclude_seen_into_xargs(request, extra)
        prompts = event_prompts(request.prompt, extra)
        if prompts is None:
            return await self._inner.render_completion(request, **kwargs)
        if request.prompt_embeds is not None or request.suffix is not None:
            raise RequestError(
                "`timestamps` cannot be combined with `prompt_embeds` or `suffix`",
                "timestamps",
            )
        return await self._inner.preprocess_cmpl(request, prompts, **kwargs)


def with_events(serving: Any) -> Any:
    """A copy of vLLM's completion serving whose renderer understands events."""
    events_serving = copy.copy(serving)
    events_serving.online_renderer = EventsRenderer(serving.online_renderer)
    return events_serving
