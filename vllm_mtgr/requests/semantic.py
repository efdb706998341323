"""A semantic-ID retrieval request: a user's history of items, and the beam.

    {"history": {"items": [...], "timestamps": [...], "actions": [...]},
     "request_timestamp": t, "beam_width": 50, "exclude_seen": true}

The model's tokens are code tokens (`vllm_mtgr.layout.code_trie.CodeTokens`): each
history event becomes its item's code, one token per level, every token at
the event's time, so the prompt is `levels` tokens per event. Items are
catalogue ids (1..items), never code tokens: a client cannot send a code
that is no item. Array fields are JSON lists or typed arrays
(`vllm_mtgr.arrays`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vllm_mtgr.arrays import integers
from vllm_mtgr.config import ConfigError, MTGRConfig
from vllm_mtgr.converters import semantic_ids
from vllm_mtgr.errors import RequestError
from vllm_mtgr.layout.code_trie import CodeTokens
from vllm_mtgr.layout.positions import MAX_TIMESTAMP
from vllm_mtgr.requests.behaviors import Behaviors, parse_behaviors
from vllm_mtgr.requests.events import Events
from vllm_mtgr.requests.validation import parse_exclude_seen

REQUEST_FIELDS = frozenset(
    {"history", "request_timestamp", "beam_width", "exclude_seen"}
)
DEFAULT_BEAM_WIDTH = 10


@functools.lru_cache(maxsize=4)
def catalogue_codes(model_dir: str, num_items: int) -> CodeTokens:
    """The code-token vocabulary of a semantic-ID model directory, checked
    against its config's `num_items` (read once per process)."""
    codes = CodeTokens(semantic_ids.read(Path(model_dir)).codes)
    if num_items != codes.num_tokens:
        raise ConfigError(
            f"{model_dir}/config.json `num_items` is {num_items}, but "
            f"{semantic_ids.FILE_NAME} has {codes.num_tokens} code tokens "
            f"(levels {codes.sizes}): a semantic-ID model's items are its tokens"
        )
    return codes


@dataclass(frozen=True, eq=False)
class SemanticRequest:
    history: Behaviors  # catalogue item ids
    request_timestamp: int
    beam_width: int
    exclude_seen: bool

    def token_events(self, vocab: CodeTokens) -> tuple[list[int], Events]:
        """(the prompt's code tokens, each token's events): every event's
        time and action repeated over its code's levels."""
        levels = vocab.levels
        tokens = vocab.tokens(self.history.items.tolist())
        actions = self.history.actions
        events = Events(
            np.repeat(self.history.timestamps, levels),
            self.request_timestamp,
            np.repeat(actions, levels) if actions.any() else None,
        )
        return tokens, events


def parse_semantic_request(
    data: object, config: MTGRConfig, vocab: CodeTokens
) -> SemanticRequest:
    """Validate one user's request; errors name the offending field."""
    if not isinstance(data, Mapping):
        raise RequestError("a semantic-ID request must be a JSON object", "data")
    unknown = set(data) - REQUEST_FIELDS
    if unknown:
        raise RequestError(f"unknown request fields: {sorted(unknown)}", "data")
    num_items = len(vocab.codes)
    history = parse_behaviors(
        "history", data.get("history"), num_items, config.num_action_types
    )
    if not len(history.items):
        raise RequestError("`history.items` is empty: send at least one item",
                           "history.items")  # fmt: skip
    # The beam's tokens follow the history: the last one generated sits
    # levels - 2 positions after it, and that position must exist.
    most = (config.max_position_embeddings - vocab.levels + 1) // vocab.levels
    if len(history.items) > most:
        raise RequestError(
            f"`history.items` has {len(history.items)} events; this model takes at "
            f"most {most} ({vocab.levels} code tokens each)",
            "history.items",
        )
    last = int(history.timestamps[-1]) if len(history.timestamps) else 0
    when = data.get("request_timestamp")
    if when is None:
        when = last
    (when,) = integers("request_timestamp", [when], last, MAX_TIMESTAMP).tolist()
    width = data.get("beam_width", DEFAULT_BEAM_WIDTH)
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)):
        raise RequestError(f"`beam_width` must be an integer, got {width!r}",
                           "beam_width")  # fmt: skip
    if not 1 <= width <= config.max_beam_width:
        raise RequestError(
            f"`beam_width` = {width} is outside [1, {config.max_beam_width}] (this "
            "model's `max_beam_width`)",
            "beam_width",
        )
    exclude = parse_exclude_seen(data.get("exclude_seen", True))
    return SemanticRequest(history, when, int(width), exclude)
