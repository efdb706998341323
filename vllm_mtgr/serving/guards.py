"""HTTP-level guards for MTGR models: routes that would skip the plugin's
checks, and request bodies too large to be a real request.

* vLLM's scale-out routes (`--enable-scale-out`) take client-rendered
  requests: `/inference/v1/generate` accepts multimodal data as sent, so a
  request with a user's real items and hashes but false times would store
  wrong state under that user's cache identity; the `/render` routes render
  without events (vLLM 0.32 drops `timestamps`, vLLM 0.26 serves them
  without `--enable-scale-out`). They are refused here.
* A body above the limit is refused before it is parsed (HTTP 413), so one
  client cannot hold the event loop with a 10 MB prompt.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

from vllm_mtgr.serving import limits

REFUSED_ROUTES = (
    "/inference/v1/generate",
    "/v1/completions/render",
    "/v1/chat/completions/render",
    "/v1/messages/render",
    "/v1/responses/render",
)


def error_body(message: str, status: HTTPStatus, param: str | None = None) -> dict:
    """vLLM's (and OpenAI's) error shape."""
    return {
        "error": {
            "message": message,
            "type": status.phrase.replace(" ", ""),
            "param": param,
            "code": int(status),
        }
    }


UNCHECKED_ROUTE_MESSAGE = (
    "this route takes pre-rendered requests whose events vllm-mtgr cannot "
    "check; MTGR models are served on /v1/completions (retrieval) and "
    "/pooling (ranking)"
)


class RequestGuard:
    """ASGI middleware, before vLLM's routing (which differs between vLLM
    versions in whether a plugin's route replaces a built-in one):

    * the routes in REFUSED_ROUTES get HTTP 400;
    * a request body above its route's limit gets HTTP 413. The body is read
      here (counting, so a chunked upload without Content-Length is cut off
      too) and replayed to the application.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.max_bytes = limits.max_request_bytes()

    def _limit(self, scope: dict) -> int:
        if scope["path"] in limits.TEXT_ROUTES:
            state = scope["app"].state
            config = getattr(state, "vllm_config", None)
            if config is not None:
                text = limits.text_route_bytes(config.model_config.max_model_len)
                return min(self.max_bytes, text)
        return self.max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if scope["path"] in REFUSED_ROUTES:
            status = HTTPStatus.BAD_REQUEST
            body = error_body(UNCHECKED_ROUTE_MESSAGE, status)
            await JSONResponse(body, status_code=status)(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, send, limit)
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client went away: let the app see it
            size += len(message.get("body", b""))
            if size > limit:
                await self._too_large(scope, send, limit)
                return
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed() -> dict:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    @staticmethod
    async def _too_large(scope: dict, send: Any, limit: int) -> None:
        status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        message = (
            f"request body above {limit} bytes; the server's limit is set by "
            f"`vllm-mtgr serve --max-request-bytes` ({limits.MAX_REQUEST_BYTES_ENV})"
        )
        response = JSONResponse(error_body(message, status), status_code=status)
        await response(scope, None, send)


class RankingRequestsOnly:
    """vLLM's `/pooling` handler, answering 400 to requests without `data`.

    A ranking model's requests go through its IO processor; vLLM 0.32 asserts
    that (`assert isinstance(ctx.request, IOProcessorRequest)`) and so answers
    `input` or `messages` with a bare HTTP 500.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def __call__(self, request: Any, raw_request: Any = None) -> Any:
        if not hasattr(request, "data"):
            status = HTTPStatus.BAD_REQUEST
            message = (
                "a ranking model takes its users in `data` (see vllm-mtgr's "
                "ranking request format), not `input` or `messages`"
            )
            return JSONResponse(error_body(message, status, "data"), status_code=status)
        return await self._inner(request, raw_request)
