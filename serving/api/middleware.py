"""ASGI middleware of the HTTP edge: shedding while the event loop runs late, a body-size bound and the
request metrics.

Both read their settings from the FastAPI app's `state` (set by `ingress.build_http_app` from the Serve config).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from sampling.samplers import SAMPLERS
from serving.api.door import LoopLag
from serving.api.schemas import ApiError
from serving.metrics import DoorMetrics, IngressMetrics

SAMPLES_PATH = "/v1/samples"


def relative_path(scope: dict) -> str:
    """The path below the application's route prefix (Serve puts the prefix into root_path and path): the
    same route of an application at `/` and of one at `/models/<id>` compare equal."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return (path[len(root) :] or "/") if root and path.startswith(root) else path


# The API's bodies are flat objects; a body nested deeper is refused before any parser sees it (a parser
# recurses per level: 30 000 nested `[` made Python's json raise RecursionError, a 500).
MAX_JSON_DEPTH = 32


async def send_error(send: Any, err: ApiError) -> None:
    """Answer `err` as the API's JSON error body, straight on the ASGI channel."""
    body = json.dumps(err.to_json()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers() or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# Sampling requests in progress in one Ingress replica below which it never sheds while busy: a loop on
# shared cores runs late under modest load too (20 concurrent requests on 2 cores, seen in the tests), and
# refusing those would refuse what the service can serve; a backlog past this is what overload looks like.
BUSY_MIN_ACTIVE = 64


class ShedWhenBusy:
    """POST /v1/samples gets the API's 503 with Retry-After, its body unparsed, while this replica's event
    loop has been late by more than `app.state.max_loop_lag_s` on every recent probe (`door.LoopLag`; 0:
    never) and it holds at least `app.state.busy_min_active` (BUSY_MIN_ACTIVE) sampling requests in progress.
    Other paths (health, metadata, docs) always pass."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lag = LoopLag()
        self.active = 0
        self._metrics: DoorMetrics | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or relative_path(scope) != SAMPLES_PATH:
            return await self.app(scope, receive, send)
        state = scope["app"].state
        limit = getattr(state, "max_loop_lag_s", 0.0)
        if limit > 0 and self.active >= getattr(state, "busy_min_active", BUSY_MIN_ACTIVE) and self.lag.busy(limit):
            if self._metrics is None:
                self._metrics = DoorMetrics()
            self._metrics.refused_busy()
            lag_ms = 1e3 * min(self.lag.lags)
            msg = f"the service is at capacity (its HTTP edge runs {lag_ms:.0f} ms late); retry later"
            return await send_error(send, ApiError("model", msg, 503, 1))
        if limit > 0:
            self.lag.busy(limit)  # keeps the probe running
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class BodySizeLimit:
    """Bodies over `app.state.max_body_bytes` get 413 before any parsing, and bodies nested deeper than
    MAX_JSON_DEPTH get 400. Counts the bytes received, so a
    body without Content-Length (chunked) is bounded too; a body that does not arrive within
    `app.state.body_timeout_s` gets 408, so a stalled client holds no slot for long. The body is passed on
    as received, unparsed (FastAPI parses it once)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = getattr(scope["app"].state, "max_body_bytes", 64 * 1024)
        deadline = time.monotonic() + getattr(scope["app"].state, "body_timeout_s", 10.0)
        too_big = ApiError("body", f"request body over {limit} bytes", 413)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await send_error(send, too_big)
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                return await send_error(send, ApiError("body", "the request body did not arrive in time", 408))
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await send_error(send, too_big)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_too_deep(body, MAX_JSON_DEPTH):
            msg = f"request body is JSON nested deeper than {MAX_JSON_DEPTH} levels"
            return await send_error(send, ApiError("body", msg, 400))
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def json_too_deep(body: bytes, limit: int) -> bool:
    """Whether `body`, read as JSON, opens more than `limit` arrays or objects inside one another (brackets
    inside strings do not count). Linear in the body's size and without recursion, whatever the body; a body
    with at most `limit` brackets in all is answered at once."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


class RequestMetrics:
    """Counts every answer of POST /v1/samples by model, sampler and status, and times the 200s.

    The route (or its validation error's handler, `errors.tag_request`) puts the body's `model` and `sampler`
    into the request's state as FastAPI parsed them; only known values
    become tags (anything else, of any JSON type, is "unknown"), so label sets stay bounded. An exception
    that escapes the app is counted as 500 here before the server answers it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._metrics: IngressMetrics | None = None  # made on first use, inside the replica's process

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or relative_path(scope) != SAMPLES_PATH:
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500
        scope.setdefault("state", {})  # the route writes the tags into this dict; read back in _record

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status = 500
            raise
        finally:
            self._record(scope, status, time.perf_counter() - t0)

    def _record(self, scope: dict, status: int, seconds: float) -> None:
        if self._metrics is None:
            self._metrics = IngressMetrics()
        state = scope.get("state") or {}
        model_ids = getattr(scope["app"].state, "model_ids", frozenset())
        model, sampler = state.get("model"), state.get("sampler")
        model = model if isinstance(model, str) and model in model_ids else "unknown"
        sampler = sampler if isinstance(sampler, str) and sampler in SAMPLERS else "unknown"
        self._metrics.record(model, sampler, status, seconds)
