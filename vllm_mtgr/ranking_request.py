"""A ranking request: one user's profile and behaviour, and the items to score.

MTGR's token sequence (DESIGN section 3) for one request:

    [profile P] [long history S] [real-time history R] [candidates C]

Which key each query sees is one integer per query, its *key limit* (see
`kernels.paged_torch`): profile and long history see each other (limit
`P + |S|`), the real-time history is causal (limit 0), and a candidate sees
the profile, the long history, the real-time events up to its own time
(exposure time; default: the request time) and itself. Real-time events are
in time order, so that is a prefix: limit `P + |S| + #(events <= its time)`,
which is also the candidate's logical position. Other candidates never
matter, nor does any event after the candidate's time.

Times: every event's key and query time is its own timestamp (no token
depends on a later one, so history blocks stay valid as events arrive);
profile tokens take the last long-history timestamp; a candidate's key and
query time is its own time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from operator import le

import numpy as np

from vllm_mtgr.config import MTGRConfig
from vllm_mtgr.errors import RequestError
from vllm_mtgr.events import MAX_TIMESTAMP

PROFILE, HISTORY, REALTIME, CANDIDATE = range(4)  # token groups
NUM_GROUPS = 4


@dataclass(frozen=True)
class Behaviors:
    items: tuple[int, ...]
    timestamps: tuple[int, ...]
    actions: tuple[int, ...]


# eq=False: requests hold arrays, and two requests are never compared.
@dataclass(frozen=True, eq=False)
class RankingRequest:
    profile: tuple[int, ...]
    history: Behaviors
    realtime: Behaviors
    candidates: tuple[int, ...]
    features: np.ndarray  # [candidates, cross features] float32
    candidate_times: tuple[int, ...]
    request_timestamp: int

    @property
    def profile_time(self) -> int:
        return self.history.timestamps[-1] if self.history.timestamps else 0

    def candidate_limits(self) -> np.ndarray:
        """Each candidate's key limit: the keys before it that it sees."""
        seen = np.searchsorted(
            np.asarray(self.realtime.timestamps, dtype=np.int64),
            np.asarray(self.candidate_times, dtype=np.int64),
            side="right",
        )
        return self.context_end + seen

    @property
    def context_end(self) -> int:
        """Tokens of profile + long history (the bidirectional context)."""
        return len(self.profile) + len(self.history.items)

    @property
    def candidate_start(self) -> int:
        return self.context_end + len(self.realtime.items)

    @property
    def length(self) -> int:
        return self.candidate_start + len(self.candidates)


def _ints(field: str, value: object, low: int, high: int) -> tuple[int, ...]:
    """A list of integers in [low, high]; errors name `field[i]`."""
    if not isinstance(value, (list, tuple)):
        raise RequestError(f"`{field}` must be a list of integers", field)
    # The common case at C speed; the walk below names the first bad value.
    if set(map(type, value)) <= {int} and (
        not value or low <= min(value) <= max(value) <= high
    ):
        return tuple(value)
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int):
            raise RequestError(f"`{field}[{i}]` must be an integer, got {v!r}", field)
        if not low <= v <= high:
            raise RequestError(
                f"`{field}[{i}]` = {v} is outside [{low}, {high}]", field
            )
        out.append(v)
    return tuple(out)


def _behaviors(name: str, data: object, config: MTGRConfig) -> Behaviors:
    if data is None:
        return Behaviors((), (), ())
    if not isinstance(data, Mapping):
        raise RequestError(f"`{name}` must be an object with items", name)
    unknown = set(data) - {"items", "timestamps", "actions"}
    if unknown:
        raise RequestError(f"unknown fields in `{name}`: {sorted(unknown)}", name)
    items = _ints(f"{name}.items", data.get("items", []), 1, config.num_items)
    times = _ints(f"{name}.timestamps", data.get("timestamps", []), 0, MAX_TIMESTAMP)
    if len(times) != len(items):
        raise RequestError(
            f"`{name}.timestamps` has {len(times)} values for {len(items)} items",
            f"{name}.timestamps",
        )
    if not all(map(le, times, times[1:])):  # at C speed
        raise RequestError(
            f"`{name}.timestamps` must be in time order", f"{name}.timestamps"
        )
    actions: tuple[int, ...] = (0,) * len(items)
    if data.get("actions") is not None:
        if not config.num_action_types:
            raise RequestError(
                f"`{name}.actions` given, but this model has no action types",
                f"{name}.actions",
            )
        actions = _ints(
            f"{name}.actions", data["actions"], 0, config.num_action_types - 1
        )
        if len(actions) != len(items):
            raise RequestError(
                f"`{name}.actions` has {len(actions)} values for {len(items)} items",
                f"{name}.actions",
            )
    return Behaviors(items, times, actions)


def _features(data: object, count: int, width: int) -> np.ndarray:
    """`[count, width]` float32 cross features; errors name the first bad row."""
    if width == 0:
        if data is not None:
            raise RequestError(
                "`candidates.features` given, but this model has no cross features",
                "candidates.features",
            )
        return np.zeros((count, 0), dtype=np.float32)
    if not isinstance(data, (list, tuple)) or len(data) != count:
        raise RequestError(
            f"`candidates.features` must hold one list of {width} numbers per "
            f"candidate ({count})",
            "candidates.features",
        )
    # Thousands of rows per request: check types and lengths at C speed, and
    # walk the rows one by one only to name the first bad one.
    if (
        set(map(type, data)) <= {list, tuple}
        and set(map(len, data)) == {width}
        and set(map(type, chain.from_iterable(data))) <= {int, float}
    ):
        values = np.fromiter(chain.from_iterable(data), np.float32, count * width)
        return values.reshape(count, width)
    for i, row in enumerate(data):
        if not isinstance(row, (list, tuple)) or len(row) != width:
            raise RequestError(
                f"`candidates.features[{i}]` must be {width} numbers",
                "candidates.features",
            )
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in row):
            raise RequestError(
                f"`candidates.features[{i}]` must be numbers", "candidates.features"
            )
    return np.array(data, dtype=np.float32)  # number subclasses (NumPy floats)


def parse_ranking_request(data: object, config: MTGRConfig) -> RankingRequest:
    """Validate one user's ranking request; errors name the offending field."""
    if not isinstance(data, Mapping):
        raise RequestError("a ranking request must be a JSON object", "data")
    known = {"profile", "history", "realtime", "candidates", "request_timestamp"}
    unknown = set(data) - known
    if unknown:
        raise RequestError(f"unknown request fields: {sorted(unknown)}", "data")
    profile = _ints(
        "profile", data.get("profile", []), 0, max(config.profile_vocab_size - 1, 0)
    )
    if len(profile) != config.num_profile_features:
        raise RequestError(
            f"`profile` has {len(profile)} values; the model takes "
            f"{config.num_profile_features}",
            "profile",
        )
    history = _behaviors("history", data.get("history"), config)
    realtime = _behaviors("realtime", data.get("realtime"), config)
    candidates_data = data.get("candidates")
    if not isinstance(candidates_data, Mapping):
        raise RequestError("`candidates` must be an object with items", "candidates")
    candidates = _ints(
        "candidates.items", candidates_data.get("items", []), 1, config.num_items
    )
    if not candidates:
        raise RequestError("`candidates.items` is empty: nothing to rank", "candidates")
    if len(candidates) > config.max_candidates:
        raise RequestError(
            f"{len(candidates)} candidates; this model ranks at most "
            f"{config.max_candidates} per request",
            "candidates",
        )
    features = _features(
        candidates_data.get("features"), len(candidates), config.num_cross_features
    )
    unknown = set(candidates_data) - {"items", "features", "timestamps"}
    if unknown:
        raise RequestError(
            f"unknown fields in `candidates`: {sorted(unknown)}", "candidates"
        )
    events = history.timestamps + realtime.timestamps
    when = data.get("request_timestamp")
    if when is None:
        when = events[-1] if events else 0
    (when,) = _ints("request_timestamp", [when], 0, MAX_TIMESTAMP)
    times = candidates_data.get("timestamps")
    candidate_times = (
        (when,) * len(candidates)
        if times is None
        else _ints("candidates.timestamps", times, 0, MAX_TIMESTAMP)
    )
    if len(candidate_times) != len(candidates):
        raise RequestError(
            f"`candidates.timestamps` has {len(candidate_times)} values for "
            f"{len(candidates)} items",
            "candidates.timestamps",
        )
    request = RankingRequest(
        profile, history, realtime, candidates, features, candidate_times, when
    )
    if (request.candidate_limits() == 0).any():
        raise RequestError(
            "a candidate would see no profile feature and no event before its "
            "time; send a profile or history",
            "candidates",
        )
    if request.length > config.max_position_embeddings:
        raise RequestError(
            f"the request has {request.length} tokens (profile {len(profile)}, "
            f"history {len(history.items)}, realtime {len(realtime.items)}, "
            f"candidates {len(candidates)}); the model takes at most "
            f"{config.max_position_embeddings}",
            "history",
        )
    return request


def token_ids(request: RankingRequest, config: MTGRConfig) -> list[int]:
    """The prompt: special tokens for profile slots and candidates, items else."""
    return (
        [config.profile_token_id] * len(request.profile)
        + list(request.history.items)
        + list(request.realtime.items)
        + [config.candidate_token_id] * len(request.candidates)
    )
