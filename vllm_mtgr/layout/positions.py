"""vLLM's position rows, as this plugin packs them (`[3, tokens]`, M-RoPE's
shape: vLLM hands them to `forward` for every token, prefill and decode).

Row 0 and 1: `time << POSITION_BITS | position`, the token's key time and
query time (`vllm_mtgr.multimodal.events` says why times ride here). Row 2:
a copy of row 0 for retrieval; ranking packs each query's key limit and token
group there, and the last token's candidates ticket; semantic-ID retrieval
the request's beam width. Decode rows are `position + delta`, one delta per
request (`decode_delta`).
"""

from __future__ import annotations

import numpy as np
import torch

from vllm_mtgr.errors import RequestError

POSITION_BITS = 20
MAX_POSITION = (1 << POSITION_BITS) - 1
# Times are 31-bit seconds: `time << POSITION_BITS` stays within int64.
MAX_TIMESTAMP = (1 << 31) - 1


def encode_position_rows(
    num_tokens: int,
    key_times: np.ndarray | None = None,
    query_times: np.ndarray | None = None,
) -> np.ndarray:
    """Position rows `[3, num_tokens]`: key time, query time, key time (unused).

    Tokens without events (plain text prompts) get time 0.
    """
    if num_tokens - 1 > MAX_POSITION:
        raise RequestError(
            f"history of {num_tokens} tokens exceeds {MAX_POSITION}", "prompt"
        )
    positions = np.arange(num_tokens, dtype=np.int64)
    if key_times is None:
        key_times = np.zeros(num_tokens, dtype=np.int64)
    if query_times is None:
        query_times = key_times
    key_row = (key_times << POSITION_BITS) | positions
    query_row = (query_times << POSITION_BITS) | positions
    return np.stack([key_row, query_row, key_row])


# Ranking row 2: (limit << 2 | group) in the 22 bits above the position, and
# for a request's last token its candidates' ticket (`vllm_mtgr.models.candidates`)
# in the bits above those.
_LIMIT_GROUP_BITS = 2 + POSITION_BITS
TICKET_SHIFT = POSITION_BITS + _LIMIT_GROUP_BITS
MAX_TICKET = (1 << (63 - TICKET_SHIFT)) - 1


def encode_ranking_rows(
    positions: np.ndarray,
    key_times: np.ndarray,
    query_times: np.ndarray,
    key_limits: np.ndarray,
    groups: np.ndarray,
    ticket: int = 0,
) -> np.ndarray:
    """Ranking rows: times as above; row 2 packs each query's key limit and
    token group (`(limit << 2 | group) << POSITION_BITS | position`), and the
    last token's row 2 the request's candidates `ticket` above them.

    Ranking models never decode, so no delta touches these rows.
    """
    rows = np.stack(
        [
            (key_times << POSITION_BITS) | positions,
            (query_times << POSITION_BITS) | positions,
            (((key_limits << 2) | groups) << POSITION_BITS) | positions,
        ]
    )
    rows[2, -1] |= ticket << TICKET_SHIFT
    return rows


def decode_ranking_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(key limits, token groups) from ranking rows."""
    packed = (rows[2] >> POSITION_BITS) & ((1 << _LIMIT_GROUP_BITS) - 1)
    return packed >> 2, packed & 3


def decode_tickets(row: torch.Tensor) -> torch.Tensor:
    """Candidates' tickets from row 2 values of requests' last tokens."""
    return row >> TICKET_SHIFT


def set_beam_row(rows: np.ndarray, width: int, exclude_seen: bool) -> None:
    """Semantic-ID retrieval: the last token's row 2 (a copy of the key row,
    unused by the model) packs the request's beam width and exclude_seen
    above the position, for the pooler (`vllm_mtgr.models.semantic`)."""
    rows[2, -1] = ((width << 1 | int(exclude_seen)) << POSITION_BITS) | (
        rows[2, -1] & MAX_POSITION
    )


def decode_beam_rows(row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(beam widths, exclude_seen) from row 2 values of requests' last
    tokens; width 0: a request without a beam (vLLM's warm-up)."""
    packed = row >> POSITION_BITS
    return packed >> 1, (packed & 1).bool()


def decode_delta(request_timestamp: int) -> int:
    """M-RoPE delta: generated tokens decode to time = request time."""
    return request_timestamp << POSITION_BITS


def decode_position_rows(
    rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positions, key times, query times) of each token, from `[3, T]` rows."""
    positions = rows[0] & MAX_POSITION
    return positions, rows[0] >> POSITION_BITS, rows[1] >> POSITION_BITS
