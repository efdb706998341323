"""What the `/pooling` IO processors of ranking and semantic-ID retrieval
share: a request's `data` is one user's request or a list of them, each
parsed on its own, and the pooling parameters that run them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from vllm import PoolingParams
from vllm.plugins.io_processors.interface import IOProcessor

from vllm_mtgr.errors import RequestError
from vllm_mtgr.serving.limits import max_users_per_request

T = TypeVar("T")


class UsersIOProcessor(IOProcessor):
    """An IO processor whose requests are users; subclasses parse one user
    (`parse_data` through `parse_users`) and build and read its prompt."""

    def __init__(self, vllm_config: Any, renderer: Any) -> None:
        super().__init__(vllm_config, renderer)
        self.config = vllm_config.model_config.hf_config
        self.max_users = max_users_per_request()

    def merge_pooling_params(self, params: PoolingParams | None = None):
        params = params or PoolingParams()
        params.task = "plugin"
        # A returning user's history comes from the prefix cache; what the
        # pooler returns is always computed in the request's last step.
        params.skip_reading_prefix_cache = False
        return params


def parse_users(
    data: object, parse: Callable[[object], T], max_users: int, kind: str
) -> list[T]:
    """A `/pooling` request's `data` (one user's `kind` request or a list of
    them), each through `parse`; an error in a list names the user
    (`data[i]`), so that a client can drop or fix just that one."""
    batch = data if isinstance(data, list) else [data]
    if not batch:
        raise RequestError(f"`data` holds no {kind} request", "data")
    if len(batch) > max_users:
        raise RequestError(
            f"`data` holds {len(batch)} users, above this server's limit of "
            f"{max_users} per request (`vllm-mtgr serve --max-users-per-request`); "
            "split the request",
            "data",
        )
    parsed = []
    for i, raw in enumerate(batch):
        try:
            parsed.append(parse(raw))
        except RequestError as error:
            if not isinstance(data, list):
                raise
            field = f"data[{i}].{error.parameter}" if error.parameter else None
            raise RequestError(f"data[{i}]: {error.args[0]}", field) from None
    return parsed
