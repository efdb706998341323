"""Per-request limits of the server, set by `vllm-mtgr serve` options.

The options travel as environment variables so that `vllm serve` (with
`VLLM_PLUGINS=mtgr`) takes them too, and so that the API server's worker
processes see the same values.
"""

from __future__ import annotations

import os

MAX_REQUEST_BYTES_ENV = "VLLM_MTGR_MAX_REQUEST_BYTES"
MAX_USERS_ENV = "VLLM_MTGR_MAX_USERS_PER_REQUEST"
# A /pooling request of 32 DLRMv3-shaped users in JSON is about 40 MB; binary
# arrays make it 4 MB.
DEFAULT_MAX_REQUEST_BYTES = 64 << 20
# 2000 users in one /pooling request held the server for 16 s (CPU).
DEFAULT_MAX_USERS = 256
# Text routes (/tokenize, /detokenize) need at most ~16 bytes per token
# ("item_2147483643 "); beyond that a prompt only stalls the event loop.
TEXT_BYTES_PER_TOKEN = 16
TEXT_ROUTES = ("/tokenize", "/detokenize")


def _positive(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def max_request_bytes() -> int:
    return _positive(MAX_REQUEST_BYTES_ENV, DEFAULT_MAX_REQUEST_BYTES)


def max_users_per_request() -> int:
    return _positive(MAX_USERS_ENV, DEFAULT_MAX_USERS)


def text_route_bytes(max_model_len: int) -> int:
    return max(1 << 20, TEXT_BYTES_PER_TOKEN * max_model_len)
