"""Python client of the stepserve HTTP API: `Client` (blocking) and `AsyncClient` (asyncio), over httpx.

    from stepserve_client import Client
    x = Client("http://127.0.0.1:8000").sample("moons-fm", "fm-euler", steps=10, num_samples=64, seed=0)

A 503 (model at capacity) is retried after the service's Retry-After, a bounded number of times and never
for longer than `RetryPolicy.max_wait` per wait; every other refusal raises at once as a typed error
carrying the API's field and message (see `errors`).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from stepserve_client.errors import (
    StepserveError,
    Unavailable,
    error_from_response,
    retry_after_seconds,
    transport_failure,
)
from stepserve_client.stream import EventParser, Progress, decode

SAMPLES_PATH = "/v1/samples"
# When the client sent a request (unix seconds): the service counts a deadline from then (docs/api.md).
SENT_AT_HEADER = "X-Client-Sent-At"


def sent_at_headers(body: dict[str, Any] | None) -> dict[str, str] | None:
    """The send-time header for a request with a deadline (each attempt's own), else None."""
    if body is None or body.get("deadline_ms") is None:
        return None
    return {SENT_AT_HEADER: f"{time.time():.6f}"}


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a 503 up to `max_retries` times, waiting its Retry-After (or `default_wait` when absent); a
    Retry-After over `max_wait` is not waited for: the 503 is raised at once."""

    max_retries: int = 3
    default_wait: float = 1.0
    max_wait: float = 30.0


NO_RETRY = RetryPolicy(max_retries=0)


@dataclass(frozen=True)
class Attempt:
    """One refused attempt before the final answer: its status, Retry-After and the seconds waited."""

    status: int
    retry_after: float | None
    waited: float


@dataclass(frozen=True)
class SampleResult:
    """A POST /v1/samples answer. samples: (num_samples, *data shape) float32 in data space (None for
    format "png", whose decoded bytes are in `image`); timing in milliseconds as the service measured."""

    samples: np.ndarray | None
    image: bytes | None
    model: str
    sampler: str
    steps: int
    nfe: int
    seed: int
    shape: tuple[int, ...]
    guidance: float | None
    class_label: int | None
    timing: dict[str, float]
    attempts: tuple[Attempt, ...] = ()
    body: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_body(cls, body: dict[str, Any], attempts: tuple[Attempt, ...] = ()) -> SampleResult:
        shape = tuple(int(s) for s in body["shape"])
        samples = None if body.get("samples") is None else np.asarray(body["samples"], np.float32).reshape(shape)
        image = base64.b64decode(body["image"]) if body.get("image") else None
        return cls(
            samples=samples,
            image=image,
            model=body["model"],
            sampler=body["sampler"],
            steps=int(body["steps"]),
            nfe=int(body["nfe"]),
            seed=int(body["seed"]),
            shape=shape,
            guidance=body.get("guidance"),
            class_label=body.get("class_label"),
            timing=dict(body.get("timing") or {}),
            attempts=attempts,
            body=body,
        )


def sample_body(
    model: str,
    sampler: str,
    steps: int,
    num_samples: int = 1,
    guidance: float | None = None,
    class_label: int | None = None,
    seed: int | None = None,
    eta: float | None = None,
    spacing: str | None = None,
    format: str = "json",
) -> dict[str, Any]:
    """The JSON body of POST /v1/samples; options left at None are left out (the service's defaults)."""
    body: dict[str, Any] = {"model": model, "sampler": sampler, "steps": steps, "num_samples": num_samples}
    optional = {"guidance": guidance, "class_label": class_label, "seed": seed, "eta": eta, "spacing": spacing}
    body.update({k: v for k, v in optional.items() if v is not None})
    if format != "json":
        body["format"] = format
    return body


def stream_body(body: dict[str, Any], preview_every: int | None) -> dict[str, Any]:
    """`body` as a streamed request."""
    out = {**body, "stream": True}
    if preview_every is not None:
        out["preview_every"] = preview_every
    return out


def stream_item(item: Progress | dict[str, Any]) -> Progress | SampleResult:
    """A decoded event as the client yields it: progress as is, the result body as a SampleResult."""
    return item if isinstance(item, Progress) else SampleResult.from_body(item)


def _wait_for(resp: httpx.Response, policy: RetryPolicy, attempt: int) -> float | None:
    """Seconds to wait before retrying `resp`, or None when it must be raised (not a 503, retries spent,
    or the service asks for a longer wait than the policy allows)."""
    if resp.status_code != 503 or attempt >= policy.max_retries:
        return None
    wait = retry_after_seconds(resp)
    wait = policy.default_wait if wait is None else wait
    return wait if wait <= policy.max_wait else None


def _parse(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        raise StepserveError(f"{resp.url} answered 200 with a body that is not JSON", resp.status_code) from None
    if not isinstance(body, dict):
        raise StepserveError(f"{resp.url} answered 200 with a JSON {type(body).__name__}", resp.status_code)
    return body


def _with_attempts(err: StepserveError, attempts: list[Attempt]) -> StepserveError:
    if isinstance(err, Unavailable) and attempts:
        err.message += f" (after {len(attempts)} retries)"
    return err


class Client:
    """Blocking client. `http` may be a ready httpx.Client (its base_url is then used as is)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        timeout: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.http = http or httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=10.0))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, path: str, json: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return self.http.request(method, path, json=json, headers=sent_at_headers(json))
        except httpx.TransportError as e:
            raise transport_failure(e, f"{self.base_url}{path}") from None

    def get(self, path: str) -> dict[str, Any]:
        resp = self._send("GET", path)
        if resp.status_code != 200:
            raise error_from_response(resp)
        return _parse(resp)

    def submit(self, body: dict[str, Any], retry: RetryPolicy | None = None) -> SampleResult:
        """POST `body` to /v1/samples, retrying 503s per `retry` (default: the client's policy)."""
        policy = retry or self.retry
        attempts: list[Attempt] = []
        while True:
            resp = self._send("POST", SAMPLES_PATH, body)
            if resp.status_code == 200:
                return SampleResult.from_body(_parse(resp), tuple(attempts))
            wait = _wait_for(resp, policy, len(attempts))
            if wait is None:
                raise _with_attempts(error_from_response(resp), attempts)
            time.sleep(wait)
            attempts.append(Attempt(resp.status_code, retry_after_seconds(resp), wait))

    def sample_result(self, model: str, sampler: str, steps: int, **options: Any) -> SampleResult:
        """Samples and the response's metadata (nfe, seed, timing, retries); options as `sample_body`."""
        return self.submit(sample_body(model, sampler, steps, **options))

    def sample(self, model: str, sampler: str, steps: int, **options: Any) -> np.ndarray:
        """(num_samples, *data shape) float32 samples in data space; options as `sample_body`."""
        result = self.sample_result(model, sampler, steps, **options)
        if result.samples is None:
            raise ValueError("format 'png' answers an image, not samples: use sample_result(...).image")
        return result.samples

    def stream(
        self, model: str, sampler: str, steps: int, preview_every: int | None = None, **options: Any
    ) -> Iterator[Progress | SampleResult]:
        """A streamed request: a `Progress` after each net evaluation (a data-space `preview` every
        `preview_every` steps), then the `SampleResult`. A refusal before the stream (e.g. 422, 503, not
        retried) or an error event in it raises the typed error. Leaving the loop early cancels the request."""
        body = stream_body(sample_body(model, sampler, steps, **options), preview_every)
        try:
            with self.http.stream("POST", SAMPLES_PATH, json=body) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise error_from_response(resp)
                parser = EventParser()
                for line in resp.iter_lines():
                    for event, data in parser.feed([line]):
                        yield stream_item(decode(event, data))
        except httpx.TransportError as e:
            raise transport_failure(e, f"{self.base_url}{SAMPLES_PATH}") from None

    def models(self) -> list[dict[str, Any]]:
        """Every served model's metadata (GET /v1/models)."""
        return list(self.get("/v1/models")["models"])

    def model(self, model_id: str) -> dict[str, Any]:
        """One model's metadata and its replica's load (GET /v1/models/{id}); NotFound if not served."""
        return self.get(f"/v1/models/{model_id}")

    def families(self) -> list[dict[str, Any]]:
        """Served model families, [{"id": ..., "members": [...]}] (GET /v1/models: families; [] if none)."""
        return list(self.get("/v1/models").get("families", []))

    def health(self) -> dict[str, Any]:
        """GET /healthz; Unavailable (503) names the model deployments that did not answer."""
        return self.get("/healthz")


class AsyncClient:
    """asyncio client, the same calls as `Client` awaited. `http` may be a ready httpx.AsyncClient."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        timeout: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.http = http or httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=10.0))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, method: str, path: str, json: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return await self.http.request(method, path, json=json, headers=sent_at_headers(json))
        except httpx.TransportError as e:
            raise transport_failure(e, f"{self.base_url}{path}") from None

    async def get(self, path: str) -> dict[str, Any]:
        resp = await self._send("GET", path)
        if resp.status_code != 200:
            raise error_from_response(resp)
        return _parse(resp)

    async def submit(self, body: dict[str, Any], retry: RetryPolicy | None = None) -> SampleResult:
        """POST `body` to /v1/samples, retrying 503s per `retry` (default: the client's policy)."""
        policy = retry or self.retry
        attempts: list[Attempt] = []
        while True:
            resp = await self._send("POST", SAMPLES_PATH, body)
            if resp.status_code == 200:
                return SampleResult.from_body(_parse(resp), tuple(attempts))
            wait = _wait_for(resp, policy, len(attempts))
            if wait is None:
                raise _with_attempts(error_from_response(resp), attempts)
            await asyncio.sleep(wait)
            attempts.append(Attempt(resp.status_code, retry_after_seconds(resp), wait))

    async def sample_result(self, model: str, sampler: str, steps: int, **options: Any) -> SampleResult:
        return await self.submit(sample_body(model, sampler, steps, **options))

    async def sample(self, model: str, sampler: str, steps: int, **options: Any) -> np.ndarray:
        result = await self.sample_result(model, sampler, steps, **options)
        if result.samples is None:
            raise ValueError("format 'png' answers an image, not samples: use sample_result(...).image")
        return result.samples

    async def stream(
        self, model: str, sampler: str, steps: int, preview_every: int | None = None, **options: Any
    ) -> AsyncIterator[Progress | SampleResult]:
        """As `Client.stream`, iterated with `async for`."""
        body = stream_body(sample_body(model, sampler, steps, **options), preview_every)
        try:
            async with self.http.stream("POST", SAMPLES_PATH, json=body) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise error_from_response(resp)
                parser = EventParser()
                async for line in resp.aiter_lines():
                    for event, data in parser.feed([line]):
                        yield stream_item(decode(event, data))
        except httpx.TransportError as e:
            raise transport_failure(e, f"{self.base_url}{SAMPLES_PATH}") from None

    async def models(self) -> list[dict[str, Any]]:
        return list((await self.get("/v1/models"))["models"])

    async def model(self, model_id: str) -> dict[str, Any]:
        return await self.get(f"/v1/models/{model_id}")
