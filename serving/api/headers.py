"""Caps on request headers at the HTTP edge: 431 with a JSON error past `max_headers` header lines or
`max_header_bytes` bytes (names and values of all lines together).

Serve's HTTP proxy runs uvicorn with httptools, and neither sets a limit a Serve config can reach: a header
block of 16 MB is parsed and handed to the application (docs/security.md has the measurements). The proxy
has spent that memory by then; this check keeps such a request away from every route and from the model
deployments, and keeps long header values out of whatever echoes or logs them.
"""

from __future__ import annotations

from typing import Any

from serving.api.middleware import send_error
from serving.api.schemas import ApiError

DEFAULT_MAX_HEADERS = 64
DEFAULT_MAX_HEADER_BYTES = 16 * 1024  # what h11 (uvicorn's other parser) and nginx's large buffers allow


def header_error(headers: list[tuple[bytes, bytes]], max_headers: int, max_bytes: int) -> str | None:
    """Why `headers` are over the caps, or None. Names no header value."""
    if len(headers) > max_headers:
        return f"{len(headers)} header lines, over the limit of {max_headers}"
    size = sum(len(k) + len(v) for k, v in headers)
    if size > max_bytes:
        big = max(headers, key=lambda kv: len(kv[1]))[0].decode("latin-1")[:64]
        return f"headers of {size} bytes, over the limit of {max_bytes} (largest: {big!r})"
    return None


class HeaderLimits:
    """Refuses requests whose headers pass `app.state.max_headers` / `app.state.max_header_bytes` with 431."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            state = scope["app"].state
            why = header_error(
                scope.get("headers") or [],
                getattr(state, "max_headers", DEFAULT_MAX_HEADERS),
                getattr(state, "max_header_bytes", DEFAULT_MAX_HEADER_BYTES),
            )
            if why is not None:
                return await send_error(send, ApiError("headers", why, 431))
        await self.app(scope, receive, send)
