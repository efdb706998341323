"""A history's side data as a request sends it: per-event timestamps (and
actions), and the request's own time, validated against the history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vllm_mtgr.arrays import INT64_MAX, INT64_MIN, integers
from vllm_mtgr.errors import RequestError
from vllm_mtgr.layout.positions import MAX_TIMESTAMP


class EventsError(RequestError):
    """A request's events do not fit its history."""


@dataclass(frozen=True, eq=False)
class Events:
    """The side data of one request's history (arrays as long as the history),
    as int64 arrays: parsed once, they reach the chunks without another
    conversion (a 1040-event history's lists were converted six times per
    request, ~50 us each)."""

    timestamps: np.ndarray
    request_timestamp: int
    actions: np.ndarray | None = None


def next_event_times(key_times: np.ndarray, request_timestamp: int) -> np.ndarray:
    """Each event's query time, from the events' times (int64): `ts[i + 1]`;
    the request's time for the last one."""
    return np.append(key_times[1:], np.int64(request_timestamp))


def _as_int_array(name: str, values: object) -> np.ndarray:
    """`values` as int64 (`vllm_mtgr.arrays.integers`: a list or a typed
    array of integers); its errors as `EventsError`, ranges checked here."""
    try:
        return integers(name, values, INT64_MIN, INT64_MAX)
    except RequestError as error:
        raise EventsError(error.args[0], name) from None


def _first_outside(values: np.ndarray, low: int, high: int) -> int | None:
    """Index of the first value outside [low, high], if any."""
    outside = (values < low) | (values > high)
    return int(np.argmax(outside)) if outside.any() else None


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
    times = _as_int_array("timestamps", timestamps)
    if len(times) != num_events:
        raise EventsError(
            f"`timestamps` has {len(times)} values but the history has {num_events} "
            "items",
            "timestamps",
        )
    bad = _first_outside(times, 0, MAX_TIMESTAMP)
    if bad is not None:
        _check_timestamp(f"timestamps[{bad}]", int(times[bad]))
    # HSTU buckets |t_next - t_event|: out of order, a history would still
    # get an answer, computed on times that cannot be right.
    if (times[1:] < times[:-1]).any():
        i = int(np.flatnonzero(times[1:] < times[:-1])[0])
        raise EventsError(
            f"`timestamps` must be in time order: timestamps[{i + 1}] = "
            f"{times[i + 1]} is before timestamps[{i}] = {times[i]}",
            "timestamps",
        )
    last = int(times[-1]) if len(times) else 0
    if request_timestamp is None:
        request_time = last
    else:
        request_time = int(_as_int_array("request_timestamp", [request_timestamp])[0])
        _check_timestamp("request_timestamp", request_time)
        if len(times) and request_time < last:
            raise EventsError(
                f"`request_timestamp` = {request_time} is before the last event "
                f"({last}): a recommendation comes after the history",
                "request_timestamp",
            )
    action_ids = None
    if actions is not None:
        if num_action_types == 0:
            raise EventsError(
                "`actions` given, but this model has no action types", "actions"
            )
        action_ids = _as_int_array("actions", actions)
        if len(action_ids) != num_events:
            raise EventsError(
                f"`actions` has {len(action_ids)} values but the history has "
                f"{num_events} items",
                "actions",
            )
        bad = _first_outside(action_ids, 0, num_action_types - 1)
        if bad is not None:
            raise EventsError(
                f"`actions[{bad}]` = {action_ids[bad]} is outside "
                f"[0, {num_action_types})",
                "actions",
            )
    if action_ids is not None and not len(action_ids):
        action_ids = None
    return Events(times, request_time, action_ids)
