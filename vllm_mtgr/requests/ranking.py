"""A ranking request: one user's profile and behaviour, and the items to score.

MTGR's sequence (docs/DESIGN.md section 3) for one request:

    [profile P] [long history S] [real-time history R] | [candidates C]

The part before the bar is the user's *history*: vLLM prompt tokens, paged KV,
prefix-cached across requests. The candidates are request-local targets: they
are not tokens (see `vllm_mtgr.models.ranking` for why and how they are computed).

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

Array-valued fields (items, timestamps, actions, features) are JSON lists or
typed arrays (`vllm_mtgr.arrays`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from vllm_mtgr.arrays import floats, integers
from vllm_mtgr.config import NUM_GROUPS, MTGRConfig
from vllm_mtgr.errors import RequestError
from vllm_mtgr.layout.positions import MAX_TIMESTAMP
from vllm_mtgr.requests.behaviors import Behaviors, parse_behaviors

PROFILE, HISTORY, REALTIME, CANDIDATE = range(NUM_GROUPS)  # token groups
REQUEST_FIELDS = frozenset(
    {
        "profile",
        "history",
        "realtime",
        "candidates",
        "request_timestamp",
        "scores_format",
    }
)
# How a result's scores come back: JSON lists of numbers, per task one typed
# binary array of float32 (`vllm_mtgr.arrays`), or (offline only) per task
# one float32 NumPy array. As JSON lists, 2048 candidates x 4 tasks took the
# server ~5.6 ms per user to encode (2 CPU cores); as binary, ~0.25 ms.
# Offline, building the lists alone took 4.2 ms per 32 such users (H200 host).
SCORES_FORMATS = ("lists", "binary", "numpy")
OFFLINE_SCORES_FORMATS = frozenset({"numpy"})
CANDIDATE_FIELDS = frozenset({"items", "features", "timestamps"})


@dataclass(frozen=True, eq=False)
class RankingRequest:
    profile: np.ndarray  # int64 [num_profile_features]
    history: Behaviors
    realtime: Behaviors
    candidates: np.ndarray  # int64 [C]
    features: np.ndarray  # float32 [C, cross features]
    candidate_times: np.ndarray  # int64 [C]
    request_timestamp: int
    profile_token_id: int  # the model's token for a profile slot
    scores_format: str = SCORES_FORMATS[0]

    @cached_property
    def token_ids(self) -> list[int]:
        """The prompt: the profile slots' special token, then the events'
        items (built once: the IO processor and the multimodal processor
        both hand it to vLLM)."""
        profile = np.full(len(self.profile), self.profile_token_id, dtype=np.int64)
        return np.concatenate(
            [profile, self.history.items, self.realtime.items]
        ).tolist()

    @property
    def profile_time(self) -> int:
        times = self.history.timestamps
        return int(times[-1]) if len(times) else 0

    def candidate_limits(self) -> np.ndarray:
        """Each candidate's key limit: the keys before it that it sees."""
        seen = np.searchsorted(
            self.realtime.timestamps, self.candidate_times, side="right"
        )
        return self.context_end + seen

    @property
    def context_end(self) -> int:
        """Tokens of profile + long history (the bidirectional context)."""
        return len(self.profile) + len(self.history.items)

    @property
    def history_length(self) -> int:
        """Prompt tokens: profile, long and real-time history."""
        return self.context_end + len(self.realtime.items)


def _features(data: object, count: int, width: int) -> np.ndarray:
    """`[count, width]` float32 cross features; errors name the first bad row."""
    if width == 0:
        if data is not None:
            raise RequestError(
                "`candidates.features` given, but this model has no cross features",
                "candidates.features",
            )
        return np.zeros((count, 0), dtype=np.float32)
    return floats("candidates.features", data, count, width)


def parse_ranking_request(data: object, config: MTGRConfig) -> RankingRequest:
    """Validate one user's ranking request; errors name the offending field."""
    if not isinstance(data, Mapping):
        raise RequestError("a ranking request must be a JSON object", "data")
    unknown = set(data) - REQUEST_FIELDS
    if unknown:
        raise RequestError(f"unknown request fields: {sorted(unknown)}", "data")
    profile = integers(
        "profile", data.get("profile", []), 0, max(config.profile_vocab_size - 1, 0)
    )
    if len(profile) != config.num_profile_features:
        raise RequestError(
            f"`profile` has {len(profile)} values; the model takes "
            f"{config.num_profile_features}",
            "profile",
        )
    history = parse_behaviors("history", data.get("history"), config.num_items,
                              config.num_action_types)  # fmt: skip
    realtime = parse_behaviors("realtime", data.get("realtime"), config.num_items,
                               config.num_action_types)  # fmt: skip
    if len(history.timestamps) and len(realtime.timestamps):
        if realtime.timestamps[0] < history.timestamps[-1]:
            raise RequestError(
                f"`realtime.timestamps[0]` = {int(realtime.timestamps[0])} is "
                f"before the long history's last event "
                f"({int(history.timestamps[-1])}): real-time events follow it",
                "realtime.timestamps",
            )
    candidates_data = data.get("candidates")
    if not isinstance(candidates_data, Mapping):
        raise RequestError("`candidates` must be an object with items", "candidates")
    unknown = set(candidates_data) - CANDIDATE_FIELDS
    if unknown:
        raise RequestError(
            f"unknown fields in `candidates`: {sorted(unknown)}", "candidates"
        )
    candidates = integers(
        "candidates.items", candidates_data.get("items", []), 1, config.num_items
    )
    if not len(candidates):
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
    events = np.concatenate([history.timestamps, realtime.timestamps])
    when = data.get("request_timestamp")
    if when is None:
        when = int(events[-1]) if len(events) else 0
    (when,) = integers("request_timestamp", [when], 0, MAX_TIMESTAMP).tolist()
    times = candidates_data.get("timestamps")
    candidate_times = (
        np.full(len(candidates), when, dtype=np.int64)
        if times is None
        else integers("candidates.timestamps", times, 0, MAX_TIMESTAMP)
    )
    if len(candidate_times) != len(candidates):
        raise RequestError(
            f"`candidates.timestamps` has {len(candidate_times)} values for "
            f"{len(candidates)} items",
            "candidates.timestamps",
        )
    scores_format = data.get("scores_format")
    if scores_format is None:
        scores_format = SCORES_FORMATS[0]
    if scores_format not in SCORES_FORMATS:
        raise RequestError(
            f"`scores_format` is {scores_format!r}; it takes one of "
            f"{list(SCORES_FORMATS)}",
            "scores_format",
        )
    request = RankingRequest(
        profile,
        history,
        realtime,
        candidates,
        features,
        candidate_times,
        when,
        config.profile_token_id,
        scores_format,
    )
    if (request.candidate_limits() == 0).any():
        raise RequestError(
            "a candidate would see no profile feature and no event before its "
            "time; send a profile or history",
            "candidates",
        )
    # A candidate sits at the position after what it sees, at most the
    # history's length: that position must exist.
    most = config.max_position_embeddings - 1
    if request.history_length > most:
        raise RequestError(
            f"the history has {request.history_length} tokens (profile "
            f"{len(profile)}, history {len(history.items)}, realtime "
            f"{len(realtime.items)}); the model takes at most {most}",
            "history",
        )
    return request
