"""A battery of hostile and careless requests, each with the answer it must get.

Each case is one HTTP request (a JSON body, or raw bytes for what JSON cannot
say) and the status and `param` it must be answered with. `test_hostile.py`
sends them to a real server and checks, after each one, that a good request
still gets the oracle's answer. Add a case here when a new way to break the
server is found.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from typing import Any

from conftest import TINY, TINY_RANKING
from ranking_cases import random_request

from vllm_mtgr.arrays import encode_array

# The battery's servers run with small limits, so the cases stay small.
MAX_REQUEST_BYTES = 2 << 20
MAX_USERS = 8
SERVER_ENV = {
    "VLLM_MTGR_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
    "VLLM_MTGR_MAX_USERS_PER_REQUEST": str(MAX_USERS),
}


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: dict[str, Any] | bytes
    status: int
    # Either value passes: vLLM versions differ in which check speaks first.
    param: str | tuple[str, ...] | None = None
    message: str | tuple[str, ...] = ""

    def check(self, error: dict) -> None:
        params = self.param if isinstance(self.param, tuple) else (self.param,)
        if self.param is not None:
            assert error["param"] in params, error
        messages = self.message if isinstance(self.message, tuple) else (self.message,)
        assert any(m in error["message"] for m in messages), error


def text(items: list[int]) -> str:
    return " ".join(f"item_{i}" for i in items)


def _completion(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "prompt": text([1, 2]), "max_tokens": 1,
            "timestamps": [1, 2], **fields}  # fmt: skip


def retrieval_cases(model: str) -> list[Case]:
    full = TINY["max_sequence_len"]
    c = "/v1/completions"

    def bad(name, status, param, message="", **fields):
        return Case(name, c, _completion(model, **fields), status, param, message)

    return [
        bad("prompt of a number", 400, "body.prompt", prompt=5),
        bad("empty history", 400, "prompt", "empty", prompt="", timestamps=[]),
        bad("padding item", 400, "prompt", "not an item", prompt="item_0",
            timestamps=[1]),
        bad("words, not items", 400, "prompt", "not an item", prompt="hello world"),
        Case("lone surrogate", c,
             b'{"model": "%s", "prompt": "item_1 \\ud800", "max_tokens": 1}'
             % model.encode(), 400, "prompt", "lone surrogate"),
        # vLLM 0.26 says so itself; 0.32 would say "max_tokens must be at
        # least 1, got 0", so the plugin speaks first there.
        bad("history at max_model_len", 400, ("prompt", "input_tokens"),
            ("leaves room", "maximum context length"),
            prompt=text([1] * full), timestamps=list(range(full))),
        bad("timestamps not a list", 400, "timestamps", timestamps="1 2"),
        bad("negative timestamp", 400, "timestamps", timestamps=[-1, 2]),
        bad("timestamp beyond int32", 400, "timestamps", timestamps=[1, 2**40]),
        bad("timestamps out of order", 400, "timestamps", "time order",
            timestamps=[9, 2]),
        bad("request before history", 400, "request_timestamp", "before the last",
            request_timestamp=1),
        bad("request_timestamp a string", 400, "request_timestamp",
            request_timestamp="soon"),
        bad("actions on a model without", 400, "actions", "no action types",
            actions=[0, 1]),
        bad("exclude_seen maybe", 400, "exclude_seen", "true or false",
            exclude_seen="maybe"),
        # One rule on both routes (vllm_xargs once took "false" and "True").
        bad("exclude_seen a string", 400, "exclude_seen", "true or false",
            exclude_seen="false"),
        bad("exclude_seen string in vllm_xargs", 400, "vllm_xargs.exclude_seen",
            "true or false", vllm_xargs={"exclude_seen": "false"}),
        bad("misspelled timestamps", 400, "timestamp", "`timestamps`?",
            timestamp=[1, 2]),
        bad("events object", 400, "events", "unknown", events={"timestamps": [1]}),
        bad("beam search", 400, "use_beam_search", use_beam_search=True),
        bad("best_of", 400, "best_of", "unknown", best_of=3),
        bad("json response format", 400, "response_format",
            response_format={"type": "json_object"}),
        bad("regex output", 400, "structured_outputs",
            structured_outputs={"regex": "a+"}),
        bad("allowed tokens outside items", 400, "allowed_token_ids",
            allowed_token_ids=[0]),
        bad("no allowed tokens", 400, "allowed_token_ids", allowed_token_ids=[]),
        # vLLM's own check; its message names the field, its `param` does not.
        bad("n of 0", 400, None, "n must be at least 1", n=0),
        bad("negative max_tokens", 400, "max_tokens", max_tokens=-1),
        Case("NaN logit_bias", c,
             b'{"model": "%s", "prompt": "item_1 item_2", "max_tokens": 1, '
             b'"timestamps": [1, 2], "logit_bias": {"5": NaN}}' % model.encode(),
             400, "logit_bias", "finite"),
        Case("not JSON", c, b'{"model": ', 400),
        Case("body above the limit", c,
             json.dumps(_completion(model, padding="x" * MAX_REQUEST_BYTES)).encode(),
             413, None, "request body above"),
        Case("10 MB prompt to /tokenize", "/tokenize",
             json.dumps({"model": model, "prompt": "item_1 " * (1 << 20)}).encode(),
             413, None, "request body above"),
        Case("pre-rendered generate", "/inference/v1/generate",
             {"model": model, "token_ids": [1, 2]}, 400, None, "cannot check"),
        Case("render drops timestamps", "/v1/completions/render",
             _completion(model), 400, None, "cannot check"),
    ]  # fmt: skip


def _ranking_user(seed: int) -> dict[str, Any]:
    return random_request(random.Random(seed))


def _changed(seed: int, change) -> dict[str, Any]:
    request = copy.deepcopy(_ranking_user(seed))
    change(request)
    return request


def _features(values: list[list[float]]) -> dict[str, str | list[int]]:
    import numpy as np

    return encode_array(np.array(values, np.float32))


def ranking_cases(model: str) -> list[Case]:
    p = "/pooling"
    items = TINY_RANKING["num_items"]

    def bad(name, data, param, message=""):
        return Case(name, p, {"model": model, "data": data}, 400, param, message)

    nan = [[float("nan")] * 5] * 6
    huge = [[1e30] * 5] * 6
    return [
        bad("no users", [], "data", "no ranking request"),
        bad("too many users", [_ranking_user(i) for i in range(MAX_USERS + 1)],
            "data", "above this server's limit"),
        bad("a user of a number", 5, None),
        bad("unknown item", _changed(1, lambda r: r["history"]["items"].__setitem__(
            0, items + 7)), "history.items", "outside"),
        bad("NaN features", _changed(2, lambda r: r["candidates"].update(
            features=_features(nan))), "candidates.features", "finite"),
        bad("huge features", _changed(3, lambda r: r["candidates"].update(
            features=_features(huge))), "candidates.features"),
        bad("realtime before history", _changed(4, lambda r: r["realtime"].update(
            timestamps=[1] * len(r["realtime"]["items"]))), "realtime.timestamps"),
        bad("history out of order", _changed(5, lambda r: r["history"][
            "timestamps"].reverse()), "history.timestamps", "order"),
        bad("one bad user among good", [_ranking_user(6), _changed(
            7, lambda r: r["candidates"]["features"].pop())],
            "data[1].candidates.features", "data[1]"),
        bad("features of bad base64", _changed(8, lambda r: r["candidates"].update(
            features={"dtype": "float32", "shape": [6, 5], "data": "@@@"})),
            "candidates.features"),
        bad("history above max positions", _changed(9, lambda r: r["history"].update(
            items=[1] * 400, timestamps=list(range(400)), actions=[0] * 400)),
            "history", "takes at most 159"),
        Case("text input, not data", p, {"model": model, "input": "item_1"}, 400,
             "data", "not `input`"),
        Case("chat messages", p, {"model": model, "messages": [
            {"role": "user", "content": "hi"}]}, 400, "data", "not `input`"),
    ]  # fmt: skip


def post(base: str, case: Case, timeout: float = 120):
    import httpx

    if isinstance(case.body, bytes):
        return httpx.post(f"{base}{case.path}", content=case.body, timeout=timeout,
                          headers={"Content-Type": "application/json"})  # fmt: skip
    return httpx.post(f"{base}{case.path}", json=case.body, timeout=timeout)
