"""The HTTP edge's own checks, without Ray: JSON depth before parsing, the client's send time against the
server's clock, shedding while the event loop runs late, the path estimate, and the app's answers to them
through an in-process client."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.api.door import LoopLag
from serving.api.ingress import build_http_app
from serving.api.middleware import BUSY_MIN_ACTIVE, json_too_deep
from serving.api.schemas import MAX_CLIENT_AGE_S, MAX_CLIENT_AHEAD_S, ApiError, arrival
from serving.api.service import PATH_EWMA, PATH_INITIAL_S, PATH_RELAX_S, PathEstimate, SampleService


def test_json_depth_is_counted_outside_strings_without_recursion() -> None:
    assert not json_too_deep(b'{"a": [[1]]}', 3) and json_too_deep(b'{"a": [[[1]]]}', 3)
    assert not json_too_deep(b'{"a": "[[[[[[", "b": [1]}', 2)  # brackets in a string do not count
    assert not json_too_deep(b'{"a": "\\"[[[[", "b": [1]}', 2)  # nor after an escaped quote
    assert json_too_deep(b'{"a": "\\\\", "b": [[[1]]]}', 3)  # an escaped backslash ends nothing
    assert json_too_deep(b"[" * 1_000_000, 32)  # no recursion, whatever the depth


def test_a_deeply_nested_body_is_a_400_naming_the_body_before_any_parser() -> None:
    client = TestClient(build_http_app(SampleService({}, {})))
    r = client.post("/v1/samples", content=b"[" * 30_000, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body" and "nested" in r.json()["error"]["message"]
    r = client.post("/v1/samples", json={"model": "[" * 100, "sampler": "fm-euler", "steps": 1})
    assert r.status_code == 404 and r.json()["error"]["field"] == "model"


def test_the_clients_send_time_within_the_skew_bounds_is_the_arrival() -> None:
    now = 1_800_000_000.0
    assert arrival(None, now) == now
    assert arrival(f"{now - 2.5}", now) == now - 2.5
    assert arrival(f"{now + 0.9 * MAX_CLIENT_AHEAD_S}", now) == now  # slightly ahead: skew, taken as now
    assert arrival(f"{now - MAX_CLIENT_AGE_S + 1}", now) == now - MAX_CLIENT_AGE_S + 1
    for bad in ("", "soon", "nan", "inf", f"{now + 2 * MAX_CLIENT_AHEAD_S}", f"{now - 2 * MAX_CLIENT_AGE_S}"):
        with pytest.raises(ApiError) as e:
            arrival(bad, now)
        assert e.value.status == 400 and e.value.field == "X-Client-Sent-At", bad


async def _hog(stop: asyncio.Event, block_s: float) -> None:
    """Keep the running loop busy: block it for `block_s` at a time, yielding in between, until `stop`."""
    while not stop.is_set():
        time.sleep(block_s)
        await asyncio.sleep(0)


def test_loop_lag_is_busy_only_while_every_recent_probe_was_late() -> None:
    async def main() -> tuple[bool, bool, bool, bool]:
        lag = LoopLag(period_s=0.01, window=3)
        first = lag.busy(0.1)  # starts the probe; nothing measured yet
        await asyncio.sleep(0.2)
        time.sleep(0.3)  # one long callback: one late probe
        await asyncio.sleep(0.05)
        after_one_stall = lag.busy(0.1)
        stop = asyncio.Event()
        hogs = [asyncio.create_task(_hog(stop, 0.04)) for _ in range(4)]  # each loop turn takes >= 0.16 s
        await asyncio.sleep(2.0)  # a probe waits a turn or more: at least 3 of them
        flooded = lag.busy(0.1)
        stop.set()
        await asyncio.gather(*hogs)
        await asyncio.sleep(0.3)
        return first, after_one_stall, flooded, lag.busy(0.1)

    first, after_one_stall, flooded, recovered = asyncio.run(main())
    assert not first and not after_one_stall and flooded and not recovered


def test_a_busy_edge_refuses_sampling_requests_unread_and_still_answers_health() -> None:
    app = build_http_app(SampleService({}, {}), max_loop_lag_ms=100)
    app.state.busy_min_active = 0  # these requests finish at once: none would be in progress beside them
    bad = {"content": b"not json", "headers": {"content-type": "application/json"}}

    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as c:
            before = await c.post("/v1/samples", **bad)  # starts the probe; not busy
            stop = asyncio.Event()
            hogs = [asyncio.create_task(_hog(stop, 0.04)) for _ in range(4)]
            await asyncio.sleep(2.0)
            busy = await c.post("/v1/samples", **bad)
            health = await c.get("/healthz")
            stop.set()
            await asyncio.gather(*hogs)
            await asyncio.sleep(0.3)
            return before, busy, health, await c.post("/v1/samples", **bad)

    before, busy, health, after = asyncio.run(main())
    assert before.status_code == after.status_code == 400, (before.text, after.text)  # parsed: not JSON
    err = busy.json()["error"]
    assert busy.status_code == 503 and err["field"] == "model" and "late" in err["message"], busy.text
    assert busy.headers["retry-after"] == "1"  # refused before the body was parsed: no 422
    assert health.status_code == 200


def test_the_path_estimate_follows_answers_and_relaxes_without_them() -> None:
    now = [0.0]
    path = PathEstimate(clock=lambda: now[0])
    assert path.seconds() == PATH_INITIAL_S
    path.observe(5.0)  # an answer that waited seconds in front of the engine
    high = PATH_INITIAL_S + PATH_EWMA * (5.0 - PATH_INITIAL_S)
    assert path.seconds() == pytest.approx(high)
    now[0] = PATH_RELAX_S  # no answers since: the excess halves
    assert path.seconds() == pytest.approx(PATH_INITIAL_S + (high - PATH_INITIAL_S) / 2)
    now[0] = 20 * PATH_RELAX_S
    assert path.seconds() == pytest.approx(PATH_INITIAL_S, abs=1e-6)
    path.observe(0.02)
    assert path.seconds() == pytest.approx(PATH_INITIAL_S + PATH_EWMA * (0.02 - PATH_INITIAL_S), abs=1e-6)


def test_a_late_loop_with_few_requests_in_progress_sheds_nothing() -> None:
    """Fewer than BUSY_MIN_ACTIVE requests in progress: a late loop alone (shared cores) refuses nothing."""
    app = build_http_app(SampleService({}, {}), max_loop_lag_ms=100)
    bad = {"content": b"not json", "headers": {"content-type": "application/json"}}

    async def main() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as c:
            await c.post("/v1/samples", **bad)
            stop = asyncio.Event()
            hogs = [asyncio.create_task(_hog(stop, 0.04)) for _ in range(4)]
            await asyncio.sleep(2.0)
            answers = await asyncio.gather(*(c.post("/v1/samples", **bad) for _ in range(BUSY_MIN_ACTIVE // 2)))
            stop.set()
            await asyncio.gather(*hogs)
            return [r.status_code for r in answers]

    assert set(asyncio.run(main())) == {400}
