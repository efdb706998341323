"""The error a bad request raises: HTTP 400 on the server, ValueError offline."""

from __future__ import annotations

from vllm.exceptions import VLLMValidationError


class RequestError(VLLMValidationError, ValueError):
    """A request vllm-mtgr cannot serve; `parameter` names the offending field.

    vLLM's servers answer `VLLMValidationError` with HTTP 400 and the field name;
    subclassing `ValueError` too keeps offline callers' `except ValueError` working
    (vLLM 0.32 no longer derives one from the other).
    """

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message, parameter=parameter)
