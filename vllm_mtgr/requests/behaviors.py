"""A run of a user's behaviours (items, their timestamps and actions) as a
request sends it, validated: the history of a ranking or semantic-ID request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vllm_mtgr.arrays import integers
from vllm_mtgr.errors import RequestError
from vllm_mtgr.layout.positions import MAX_TIMESTAMP

BEHAVIOR_FIELDS = frozenset({"items", "timestamps", "actions"})

_NO_EVENTS = np.zeros(0, dtype=np.int64)


# eq=False: these hold arrays, and are never compared.
@dataclass(frozen=True, eq=False)
class Behaviors:
    items: np.ndarray  # int64
    timestamps: np.ndarray  # int64, in time order
    actions: np.ndarray  # int64


def parse_behaviors(
    name: str, data: object, num_items: int, num_action_types: int
) -> Behaviors:
    """`data` (None: no events) as `Behaviors`; errors name `name.field`.
    Items are 1..`num_items`; without timestamps, every event is at time 0."""
    if data is None:
        return Behaviors(_NO_EVENTS, _NO_EVENTS, _NO_EVENTS)
    if not isinstance(data, Mapping):
        raise RequestError(f"`{name}` must be an object with items", name)
    unknown = set(data) - BEHAVIOR_FIELDS
    if unknown:
        raise RequestError(f"unknown fields in `{name}`: {sorted(unknown)}", name)
    items = integers(f"{name}.items", data.get("items", []), 1, num_items)
    times = integers(f"{name}.timestamps", data.get("timestamps", []), 0, MAX_TIMESTAMP)
    if len(times) != len(items):
        raise RequestError(
            f"`{name}.timestamps` has {len(times)} values for {len(items)} items",
            f"{name}.timestamps",
        )
    if (times[1:] < times[:-1]).any():
        raise RequestError(
            f"`{name}.timestamps` must be in time order", f"{name}.timestamps"
        )
    actions = np.zeros(len(items), dtype=np.int64)
    if data.get("actions") is not None:
        if not num_action_types:
            raise RequestError(
                f"`{name}.actions` given, but this model has no action types",
                f"{name}.actions",
            )
        actions = integers(f"{name}.actions", data["actions"], 0, num_action_types - 1)
        if len(actions) != len(items):
            raise RequestError(
                f"`{name}.actions` has {len(actions)} values for {len(items)} items",
                f"{name}.actions",
            )
    return Behaviors(items, times, actions)
