"""Checks every history must pass before it reaches the model."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from vllm_mtgr.config import MTGRConfig
from vllm_mtgr.errors import RequestError


class HistoryError(RequestError):
    """A history the model cannot use; the message names the item."""


def check_history(
    token_ids: Sequence[int] | np.ndarray, config: MTGRConfig, text: str | None = None
) -> None:
    """Reject empty histories and tokens that are not items (padding, unknown)."""
    if len(token_ids) == 0:
        raise HistoryError(
            "the history (prompt) is empty: send at least one item", "prompt"
        )
    ids = np.asarray(token_ids)
    outside = np.flatnonzero((ids < 1) | (ids > config.num_items))
    if outside.size:
        position = int(outside[0])
        token_id = int(ids[position])
        words = text.split() if text else []
        shown = (
            f"'{words[position]}'"
            if len(words) == len(token_ids)
            else f"token id {token_id}"
        )
        raise HistoryError(
            f"history item {position} ({shown}) is not an item of this model "
            f"(items are item_1 .. item_{config.num_items})",
            "prompt",
        )


EXCLUDE_SEEN = "exclude_seen"


def parse_exclude_seen(value: object, field: str = EXCLUDE_SEEN) -> bool:
    """The one rule for `exclude_seen`, on every route: a boolean, or the
    integer 1 or 0 (`vllm_xargs` carries no booleans over HTTP). Strings
    such as "false" are refused, not read as true."""
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise RequestError(f"`{field}` must be true or false (or 1 / 0), got {value!r}",
                       field)  # fmt: skip
