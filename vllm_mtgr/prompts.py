"""Building a retrieval prompt for vLLM's offline `LLM` API."""

from __future__ import annotations

from collections.abc import Sequence

from vllm_mtgr.multimodal.events import MODALITY


def history_prompt(
    items: Sequence[int] | str,
    timestamps: Sequence[int] | None = None,
    actions: Sequence[int] | None = None,
    request_timestamp: int | None = None,
) -> dict:
    """A prompt for `LLM.generate`: item ids (or "item_1 item_2" text) plus events.

    Without timestamps every event counts as happening at time 0.
    """
    prompt: dict = (
        {"prompt": items}
        if isinstance(items, str)
        else {"prompt_token_ids": list(items)}
    )
    if timestamps is None:
        if actions is not None or request_timestamp is not None:
            raise ValueError("`actions` and `request_timestamp` need `timestamps`")
        return prompt
    events: dict = {"timestamps": list(timestamps)}
    if actions is not None:
        events["actions"] = list(actions)
    if request_timestamp is not None:
        events["request_timestamp"] = request_timestamp
    prompt["multi_modal_data"] = {MODALITY: events}
    return prompt
