"""Optional API keys at the HTTP edge: bearer tokens, per-key rate limits and per-key in-flight quotas.

The Serve config's `args.auth` (see `AuthArgs`) names where the keys come from: a file (one key a line,
`#` comments) or an environment variable (keys separated by commas or whitespace). Without `auth` every
request passes, as before. With it, every path but `OPEN_PATHS` needs `Authorization: Bearer <key>`.

Keys never reach a log, a metric or a response: a key is known by its id, the first 8 hex digits of its
sha256. Limits and quotas live in the ingress replica's process, so with N ingress replicas a key gets up
to N x its rate and in-flight quota (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.api.headers import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS
from serving.api.middleware import relative_path, send_error
from serving.api.schemas import ApiError
from serving.metrics import AuthMetrics

logger = logging.getLogger("ray.serve")

# Probes and the API's description need no key: /healthz reveals only model names and whether they answer,
# and the OpenAPI document and Swagger UI describe the public API (they are the same for every deployment).
# The playground page (`/`, `/playground/...`) is as public as /docs: the page takes a key in a field for its calls.
OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/"})
OPEN_PREFIXES = ("/docs/static/", "/playground/")
MIN_KEY_CHARS = 16  # a shorter key is guessable; refused at startup rather than served weakly
KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces: what an HTTP header carries intact


class AuthArgs(BaseModel):
    """`args.auth` of the Serve config. Exactly one of `keys_file` / `keys_env`. `rate_per_s` and `burst`:
    a token bucket per key (None: no rate limit); `max_in_flight`: requests of one key in progress at once
    (None: no quota). Both per ingress replica."""

    model_config = ConfigDict(extra="forbid")
    keys_file: str | None = None
    keys_env: str | None = None
    rate_per_s: float | None = Field(None, gt=0)
    burst: int | None = Field(None, ge=1)  # default: max(1, ceil(rate_per_s))
    max_in_flight: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> AuthArgs:
        if (self.keys_file is None) == (self.keys_env is None):
            raise ValueError("auth needs exactly one of keys_file and keys_env")
        if self.burst is not None and self.rate_per_s is None:
            raise ValueError("auth.burst needs auth.rate_per_s")
        return self


def key_id(key: str) -> str:
    """A key's public name for logs and metrics: 8 hex digits of its sha256 (32 bits say nothing useful about
    a key of at least MIN_KEY_CHARS random characters)."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def parse_keys(text: str, source: str) -> list[str]:
    """Keys from a keys file's text (one a line, `#` comments) or an env value (commas or whitespace).
    Errors name the source and the line or position, never the key."""
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        for key in line.split("#", 1)[0].replace(",", " ").split():
            if len(key) < MIN_KEY_CHARS or not KEY_CHARS.match(key):
                raise ValueError(
                    f"{source}, line {n}: a key must be at least {MIN_KEY_CHARS} printable ASCII characters "
                    "without spaces (the key is not shown)"
                )
            keys.append(key)
    if not keys:
        raise ValueError(f"{source}: no API key found")
    return list(dict.fromkeys(keys))


def load_keys(args: AuthArgs) -> list[str]:
    if args.keys_file is not None:
        path = Path(args.keys_file)
        if not path.is_file():
            raise ValueError(f"auth.keys_file {path} is not a file on this node")
        return parse_keys(path.read_text(), f"auth.keys_file {path}")
    value = os.environ.get(args.keys_env or "")
    if not value:
        raise ValueError(
            f"auth.keys_env: environment variable {args.keys_env} is unset or empty in the ingress replica "
            "(set it in the ingress's ray_actor_options.runtime_env.env_vars or on every node)"
        )
    return parse_keys(value, f"auth.keys_env {args.keys_env}")


@dataclass
class TokenBucket:
    """`burst` tokens, refilled at `rate` a second; a request takes one."""

    rate: float
    burst: int
    tokens: float = field(init=False)
    stamp: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one is there."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class ApiKeys:
    """The keys of one ingress replica, each key's bucket and in-flight count. Only known key ids get state,
    so the dicts are bounded by the number of keys."""

    def __init__(self, keys: list[str], args: AuthArgs) -> None:
        # Compare sha256 digests, not the keys: equal lengths, so compare_digest leaks no key length either.
        self._digests = [(key_id(k), hashlib.sha256(k.encode()).digest()) for k in keys]
        self.ids = [kid for kid, _ in self._digests]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("two API keys share a key id (sha256 prefix); replace one of them")
        self.args = args
        burst = args.burst or max(1, math.ceil(args.rate_per_s or 1))
        self._buckets = {kid: TokenBucket(args.rate_per_s, burst) for kid in self.ids} if args.rate_per_s else {}
        self._in_flight = dict.fromkeys(self.ids, 0)

    @classmethod
    def from_args(cls, args: AuthArgs | dict[str, Any]) -> ApiKeys:
        a = args if isinstance(args, AuthArgs) else AuthArgs.model_validate(args)
        keys = cls(load_keys(a), a)
        source = f"file {a.keys_file}" if a.keys_file else f"env {a.keys_env}"
        logger.info(
            f"API keys: {len(keys.ids)} from {source} (ids {', '.join(keys.ids)}); rate_per_s={a.rate_per_s} "
            f"burst={a.burst} max_in_flight={a.max_in_flight} per ingress replica"
        )
        return keys

    def identify(self, presented: bytes) -> str | None:
        """The id of the key `presented` equals, or None. Every key is compared, match or not, so the time
        taken says nothing about which key (or how much of one) matched."""
        digest = hashlib.sha256(presented).digest()
        found = None
        for kid, d in self._digests:
            if hmac.compare_digest(digest, d):
                found = kid
        return found

    def take_token(self, kid: str) -> float:
        bucket = self._buckets.get(kid)
        return bucket.take(time.monotonic()) if bucket is not None else 0.0

    def enter(self, kid: str) -> bool:
        if self.args.max_in_flight is not None and self._in_flight[kid] >= self.args.max_in_flight:
            return False
        self._in_flight[kid] += 1
        return True

    def leave(self, kid: str) -> None:
        self._in_flight[kid] -= 1


class AuthError(ApiError):
    """401 with the challenge RFC 6750 asks for; the message says what was wrong, never the key."""

    def __init__(self, message: str, invalid: bool) -> None:
        super().__init__("authorization", message, 401)
        self.challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": self.challenge}


def bearer_token(scope: dict) -> tuple[bytes | None, str]:
    """The presented token, or None and why not."""
    values = [v for k, v in scope.get("headers") or [] if k.lower() == b"authorization"]
    if not values:
        return None, "missing"
    if len(values) > 1:
        return None, "several Authorization headers"
    scheme, _, token = values[0].strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None, "not a Bearer token"
    return token.strip(), ""


class ApiKeyAuth:
    """With `app.state.auth` (an ApiKeys) set: 401 without a valid key, 429 over the key's rate or in-flight
    quota. Sits outside BodySizeLimit, so a refused request's body is never read."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._metrics: AuthMetrics | None = None  # made on first use, inside the replica's process

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        keys: ApiKeys | None = getattr(scope["app"].state, "auth", None) if scope["type"] == "http" else None
        path = relative_path(scope) if keys is not None else ""
        if keys is None or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        token, why = bearer_token(scope)
        kid = keys.identify(token) if token is not None else None
        if kid is None:
            self._count("none", "missing" if token is None else "invalid")
            msg = f"an API key is required: Authorization: Bearer <key> ({why})" if token is None else "invalid API key"
            return await send_error(send, AuthError(msg, invalid=token is not None))
        wait = keys.take_token(kid)  # before the quota: a request refused for the quota still spent a token
        if wait > 0:
            self._count(kid, "rate")
            retry = max(1, math.ceil(wait))
            msg = f"API key {kid} is over its rate of {keys.args.rate_per_s}/s; retry in {retry} s"
            return await send_error(send, ApiError("authorization", msg, 429, retry))
        if not keys.enter(kid):
            self._count(kid, "in_flight")
            msg = f"API key {kid} has {keys.args.max_in_flight} requests in progress already; retry later"
            return await send_error(send, ApiError("authorization", msg, 429, 1))
        self._count(kid, "accepted")
        try:
            scope.setdefault("state", {})["key_id"] = kid  # for routes and logs that want the caller's id
            await self.app(scope, receive, send)
        finally:
            keys.leave(kid)

    def _count(self, kid: str, reason: str) -> None:
        if self._metrics is None:
            self._metrics = AuthMetrics()
        self._metrics.record(kid, reason)


def configure_security(state: Any, security: dict[str, Any]) -> None:
    """Set the app state the security middleware reads, from `security` (built by serving.app from AppArgs:
    `auth`, `max_headers`, `max_header_bytes`). Keys are read here, in the ingress replica, where the keys
    file and the environment variable must exist."""
    auth = security.get("auth")
    state.auth = ApiKeys.from_args(auth) if auth else None
    state.max_headers = security.get("max_headers", DEFAULT_MAX_HEADERS)
    state.max_header_bytes = security.get("max_header_bytes", DEFAULT_MAX_HEADER_BYTES)
