"""A history's side data as a request sends it: per-event timestamps (and
actions), and the request's own time, validated against the history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vllm_mtgr.errors import RequestError
from vllm_mtgr.layout.positions import MAX_TIMESTAMP


class EventsError(RequestError):
    """A request's events do not fit its history."""


@dataclass(frozen=True)
class Events:
    """The side data of one request's history (all lists as long as the history)."""

    timestamps: tuple[int, ...]
    request_timestamp: int
    actions: tuple[int, ...] | None = None


def next_event_times(key_times: np.ndarray, request_timestamp: int) -> np.ndarray:
    """Each event's query time, from the events' times (int64): `ts[i + 1]`;
    the request's time for the last one."""
    return np.append(key_times[1:], np.int64(request_timestamp))


def _as_int_list(name: str, values: object) -> list[int]:
    if isinstance(values, (torch.Tensor, np.ndarray)):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise EventsError(f"`{name}` must be a list of integers", name)
    if set(map(type, values)) <= {int}:  # the common case, at C speed
        return list(values)
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise EventsError(
                f"`{name}[{i}]` must be an integer, got {type(value).__name__} "
                f"{value!r}",
                name,
            )
        out.append(int(value))
    return out


def _check_timestamp(name: str, value: int) -> None:
    if not 0 <= value <= MAX_TIMESTAMP:
        raise EventsError(
            f"`{name}` = {value} is outside [0, {MAX_TIMESTAMP}]: send seconds "
            "(e.g. Unix time), relative to any fixed origin",
            name.split("[")[0],
        )


def parse_events(
    num_events: int,
    timestamps: object,
    request_timestamp: object = None,
    actions: object = None,
    num_action_types: int = 0,
) -> Events:
    """Validate a request's side data against a history of `num_events` items."""
    ts = _as_int_list("timestamps", timestamps)
    if len(ts) != num_events:
        raise EventsError(
            f"`timestamps` has {len(ts)} values but the history has {num_events} items",
            "timestamps",
        )
    if ts and not 0 <= min(ts) <= max(ts) <= MAX_TIMESTAMP:
        for i, value in enumerate(ts):
            _check_timestamp(f"timestamps[{i}]", value)
    # HSTU buckets |t_next - t_event|: out of order, a history would still
    # get an answer, computed on times that cannot be right.
    times = np.asarray(ts, dtype=np.int64)
    if (times[1:] < times[:-1]).any():
        i = int(np.flatnonzero(times[1:] < times[:-1])[0])
        raise EventsError(
            f"`timestamps` must be in time order: timestamps[{i + 1}] = "
            f"{ts[i + 1]} is before timestamps[{i}] = {ts[i]}",
            "timestamps",
        )
    if request_timestamp is None:
        request_time = ts[-1] if ts else 0
    else:
        (request_time,) = _as_int_list("request_timestamp", [request_timestamp])
        _check_timestamp("request_timestamp", request_time)
        if ts and request_time < ts[-1]:
            raise EventsError(
                f"`request_timestamp` = {request_time} is before the last event "
                f"({ts[-1]}): a recommendation comes after the history",
                "request_timestamp",
            )
    action_ids = None
    if actions is not None:
        if num_action_types == 0:
            raise EventsError(
                "`actions` given, but this model has no action types", "actions"
            )
        action_ids = _as_int_list("actions", actions)
        if len(action_ids) != num_events:
            raise EventsError(
                f"`actions` has {len(action_ids)} values but the history has "
                f"{num_events} items",
                "actions",
            )
        for i, value in enumerate(action_ids):
            if not 0 <= value < num_action_types:
                raise EventsError(
                    f"`actions[{i}]` = {value} is outside [0, {num_action_types})",
                    "actions",
                )
    return Events(tuple(ts), request_time, tuple(action_ids) if action_ids else None)
