"""Domain errors of the frontend, and their one translation to OpenAI-style HTTP error bodies.

Everything below the HTTP handlers raises these; `app.py` turns them into responses, so no
handler builds an error body by hand and nothing reaches the client as a bare 500.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorType(StrEnum):
    """The `error.type` values OpenAI clients understand."""

    INVALID_REQUEST = "invalid_request_error"
    NOT_FOUND = "not_found_error"
    OVERLOADED = "overloaded_error"
    TIMEOUT = "timeout_error"
    SERVER = "server_error"


class FrontendError(Exception):
    """An error with an HTTP status and an OpenAI error body."""

    http_status = 500
    error_type = ErrorType.SERVER

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """`{"error": {"message", "type", "param", "code"}}`, as the OpenAI API returns it."""
        return {
            "error": {
                "message": self.message,
                "type": str(self.error_type),
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(FrontendError):
    """A malformed or unsupported request: 400, naming the offending field in `param`."""

    http_status = 400
    error_type = ErrorType.INVALID_REQUEST


class Unauthorized(FrontendError):
    """No API key, or a wrong one: 401 with the OpenAI API's `invalid_api_key` body."""

    http_status = 401
    error_type = ErrorType.INVALID_REQUEST

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key")

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="moeplane"'}


class ModelNotFound(FrontendError):
    http_status = 404
    error_type = ErrorType.NOT_FOUND

    def __init__(self, model: str, served: list[str]) -> None:
        super().__init__(
            f"The model {model!r} does not exist; this server serves {', '.join(map(repr, served))}",
            param="model",
            code="model_not_found",
        )


class NoCapacity(FrontendError):
    """No live worker group can take the request now: 503 with Retry-After."""

    http_status = 503
    error_type = ErrorType.OVERLOADED

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, code="no_capacity")
        self.retry_after_s = max(1, int(retry_after_s))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class RequestTimeout(FrontendError):
    """The request ran past the server's request timeout and was cancelled."""

    http_status = 504
    error_type = ErrorType.TIMEOUT

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"The request did not finish within the server's request timeout of {timeout_s:g} s "
            "and was cancelled",
            code="request_timeout",
        )


class UpstreamError(FrontendError):
    """A worker group failed the request (after any retry the router could make)."""

    http_status = 502
    error_type = ErrorType.SERVER

    def __init__(self, message: str) -> None:
        super().__init__(message, code="upstream_error")
