"""Streamed requests against the real application (real Ray Serve, real HTTP): one progress event per net
evaluation, the last event the unstreamed body, refusals before the stream as plain JSON errors, and a client
that hangs up mid-stream takes its request out of the engine."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest

from stepserve_client import AsyncClient, BadRequest, Client, Progress, SampleResult
from stepserve_client.stream import EventParser
from tests.serving.conftest import ServeCluster
from tests.serving.test_metrics import scrape, total

pytestmark = pytest.mark.slow


def events(base: str, body: dict) -> list[tuple[str, dict]]:
    with httpx.stream("POST", f"{base}/v1/samples", json=body, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        parser = EventParser()
        return [(e, json.loads(d)) for line in resp.iter_lines() for e, d in parser.feed([line])]


def test_stream_reports_each_step_and_ends_with_the_unstreamed_body(stepserve_url: str) -> None:
    body = {"model": "moons-fm", "sampler": "fm-euler", "steps": 8, "num_samples": 5, "seed": 12}
    plain = httpx.post(f"{stepserve_url}/v1/samples", json=body, timeout=60).json()
    got = events(stepserve_url, {**body, "stream": True, "preview_every": 3})
    progress = [d for e, d in got if e == "progress"]
    assert [e for e, _ in got] == ["progress"] * 8 + ["result"]
    assert [p["step"] for p in progress] == list(range(1, 9)) and {p["steps"] for p in progress} == {8}
    assert [p["nfe"] for p in progress] == list(range(1, 9))
    assert [p["step"] for p in progress if "preview" in p] == [3, 6]
    assert np.asarray(progress[2]["preview"]).shape == (5, 2)
    result = got[-1][1]
    assert set(result) == set(plain) and result["samples"] == plain["samples"]
    assert {k: v for k, v in result.items() if k != "timing"} == {k: v for k, v in plain.items() if k != "timing"}


def test_guided_stream_counts_nfe_twice_and_the_clients_agree(stepserve_url: str) -> None:
    opts = {"num_samples": 3, "seed": 4, "guidance": 2.0, "class_label": 7}
    with Client(stepserve_url) as c:
        items = list(c.stream("digits-ddpm", "ddim", 4, preview_every=2, **opts))
        plain = c.sample("digits-ddpm", "ddim", 4, **opts)
    progress, result = items[:-1], items[-1]
    assert all(isinstance(p, Progress) for p in progress) and isinstance(result, SampleResult)
    assert [p.nfe for p in progress] == [2, 4, 6, 8] and result.nfe == 8
    assert progress[1].preview.shape == (3, 1, 8, 8) and progress[0].preview is None
    np.testing.assert_array_equal(result.samples, plain)

    async def run() -> list:
        async with AsyncClient(stepserve_url) as ac:
            return [item async for item in ac.stream("digits-ddpm", "ddim", 4, **opts)]

    again = asyncio.run(run())
    assert len(again) == 5
    np.testing.assert_array_equal(again[-1].samples, plain)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"stream": True, "preview_every": 0}, "preview_every must be in [1, 1000], got 0"),
        ({"stream": True, "preview_every": 5000}, "preview_every must be in [1, 1000], got 5000"),
        ({"preview_every": 2}, "preview_every needs stream: true"),
    ],
)
def test_bad_preview_every_is_a_422_naming_it(stepserve_url: str, extra: dict, message: str) -> None:
    body = {"model": "moons-fm", "sampler": "fm-euler", "steps": 4, **extra}
    r = httpx.post(f"{stepserve_url}/v1/samples", json=body, timeout=30)
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    assert r.json() == {"error": {"status": 422, "field": "preview_every", "message": message}}


def test_refusal_before_the_stream_is_a_plain_json_error(stepserve_url: str) -> None:
    with Client(stepserve_url) as c, pytest.raises(BadRequest) as err:
        list(c.stream("moons-fm", "fm-euler", 0))
    assert err.value.status == 422 and err.value.field == "steps"


def _in_flight(url: str) -> float:
    return total(scrape(url), "ray_stepserve_requests_in_flight", model="digits-fm", application="stepserve")


def test_disconnect_mid_stream_drops_the_request(serve_cluster: ServeCluster, stepserve_url: str) -> None:
    """A 4000-evaluation streamed request whose client leaves after a few events leaves the engine: the replica's
    load and its exported in-flight gauge return to 0 long before the request could have finished."""
    body = {"model": "digits-fm", "sampler": "fm-rk4", "steps": 1000, "num_samples": 128, "seed": 1, "stream": True}
    with httpx.stream("POST", f"{stepserve_url}/v1/samples", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        seen = sum(1 for _, line in zip(range(12), lines, strict=False) if line.startswith("event: progress"))
    assert seen >= 3
    deadline = time.monotonic() + 20
    while (load := httpx.get(f"{stepserve_url}/v1/models/digits-fm", timeout=30).json()["replica_load"])["in_flight"]:
        assert time.monotonic() < deadline, f"request still in the engine after the client left: {load}"
        time.sleep(0.2)
    assert load["queued"] == 0 and load["ticks"] < 4000
    deadline = time.monotonic() + 20  # the gauge reaches Prometheus within a metrics report interval (1 s here)
    while (gauge := _in_flight(serve_cluster.metrics_url)) != 0:
        assert time.monotonic() < deadline, f"in-flight gauge still {gauge}"
        time.sleep(0.5)
