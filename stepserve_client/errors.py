"""Typed errors of the stepserve HTTP API.

The service answers every refusal as `{"error": {"status", "field", "message"}}`; each error here carries
those three (and the Retry-After of a 503), so a caller can tell a bad field from a full service without
parsing text.
"""

from __future__ import annotations

from typing import Any

import httpx


class StepserveError(Exception):
    """The service refused a request or could not be reached. `status` is the HTTP status (None when no
    response came), `field` the request field the API named ("body" for the whole body, None if none)."""

    def __init__(
        self, message: str, status: int | None = None, field: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"{self.status or 'no response'}{where}: {self.message}"


class BadRequest(StepserveError):
    """400, 413 or 422: the request itself is wrong; `field` names what to fix. Never retried."""


class NotFound(StepserveError):
    """404: unknown model (field "model" or "model_id")."""


class Unavailable(StepserveError):
    """503: the model is at capacity or has no live replica; `retry_after` seconds is the service's hint.
    Raised once the client's retries are spent."""


class ServerError(StepserveError):
    """Any other non-200 answer (500, 502, ...)."""


class TransportFailure(StepserveError):
    """No HTTP answer: `kind` is "timeout", "connect" or "transport"."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def retry_after_seconds(resp: httpx.Response) -> float | None:
    """The Retry-After header in seconds (the service sends delta-seconds), None if absent or not a number."""
    value = resp.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_from_response(resp: httpx.Response) -> StepserveError:
    """The typed error of a non-200 answer, with the API's field and message when the body has them."""
    try:
        body: Any = resp.json()
    except ValueError:
        body = None
    return error_from_body(body, resp.status_code, resp.text[:500], retry_after_seconds(resp))


def error_from_body(body: Any, status: int, fallback: str = "", retry_after: float | None = None) -> StepserveError:
    """The typed error of the API's error body `{"error": {status, field, message}}` (also what a stream's
    `error` event carries); `fallback` is the message when the body is not that shape."""
    field, message = None, fallback
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        field = body["error"].get("field")
        message = str(body["error"].get("message", message))
    cls = {404: NotFound, 503: Unavailable}.get(status)
    if cls is None:
        cls = BadRequest if status in (400, 413, 422) else ServerError
    return cls(message, status, field, retry_after)


def transport_failure(e: httpx.TransportError, url: str) -> TransportFailure:
    if isinstance(e, httpx.TimeoutException):
        kind = "timeout"
    elif isinstance(e, httpx.ConnectError):
        kind = "connect"
    else:
        kind = "transport"
    return TransportFailure(f"{url}: {type(e).__name__}: {e}", kind)
