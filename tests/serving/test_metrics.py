"""Metrics on Ray's real Prometheus export endpoint match the requests a test sent."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.conftest import ServeCluster

pytestmark = pytest.mark.slow
APP = "stepserve"


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    text = httpx.get(url, timeout=30).text
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def total(samples: list, name: str, **labels: str) -> float:
    """Sum of series `name` over replicas whose labels include `labels` (application stepserve)."""
    want = {"application": APP, **labels}
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in want.items()))


def test_counters_match_the_traffic_sent(serve_cluster: ServeCluster, stepserve_url: str) -> None:
    # name, labels -> expected increase; every value follows from the requests below
    fm = {"model": "moons-fm", "sampler": "fm-euler"}
    ddim = {"model": "moons-ddpm", "sampler": "ddim"}
    expected = {
        ("ray_stepserve_requests_total", (*fm.items(), ("status", "200"))): 5,
        ("ray_stepserve_requests_total", (*ddim.items(), ("status", "200"))): 2,
        ("ray_stepserve_requests_total", (*fm.items(), ("status", "422"))): 3,
        ("ray_stepserve_requests_total", (("model", "unknown"), ("status", "404"))): 1,
        ("ray_stepserve_request_latency_seconds_count", tuple(fm.items())): 5,
        ("ray_stepserve_steps_total", tuple(fm.items())): 5 * 7,
        ("ray_stepserve_nfe_total", tuple(fm.items())): 5 * 7,
        ("ray_stepserve_nfe_total", tuple(ddim.items())): 2 * 4 * 2,  # guided: rows doubled
        ("ray_stepserve_net_rows_total", (("model", "moons-fm"),)): 5 * 7 * 3,
        ("ray_stepserve_net_rows_total", (("model", "moons-ddpm"),)): 2 * 4 * 2 * 2,
        # Every row the net ran for moons-fm went through some tick: the tick histogram's sum agrees.
        ("ray_stepserve_tick_rows_sum", (("model", "moons-fm"),)): 5 * 7 * 3,
        ("ray_stepserve_queue_wait_seconds_count", (("model", "moons-fm"),)): 5,
    }
    before = scrape(serve_cluster.metrics_url)
    with httpx.Client(base_url=stepserve_url, timeout=60) as c:
        for seed in range(5):
            body = {**fm, "steps": 7, "num_samples": 3, "seed": seed}
            assert c.post("/v1/samples", json=body).status_code == 200
        for seed in range(2):
            body = {**ddim, "steps": 4, "num_samples": 2, "seed": seed, "guidance": 2.0, "class_label": 1}
            assert c.post("/v1/samples", json=body).status_code == 200
        for bad in ({"steps": 0}, {"steps": 5, "num_samples": 0}, {"steps": 5, "eta": 0.3}):
            assert c.post("/v1/samples", json={**fm, **bad}).status_code == 422
        assert c.post("/v1/samples", json={"model": "nope", "sampler": "fm-euler", "steps": 3}).status_code == 404

    deadline = time.monotonic() + 60  # Ray's agent exports every metrics_report_interval_ms (1 s here)
    while True:
        after = scrape(serve_cluster.metrics_url)
        got = {key: total(after, key[0], **dict(key[1])) - total(before, key[0], **dict(key[1])) for key in expected}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert got == expected
    tick_count = total(after, "ray_stepserve_tick_rows_count", model="moons-fm") - total(
        before, "ray_stepserve_tick_rows_count", model="moons-fm"
    )
    assert tick_count == 5 * 7  # sent one after another: one tick per step
    assert total(after, "ray_stepserve_requests_in_flight", model="moons-fm") == 0
    assert any(n.startswith("ray_serve_") for n, _, _ in after)  # Ray Serve's own metrics come along
