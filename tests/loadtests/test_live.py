"""python -m loadtests against the real application on a real local Ray (slow)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from loadtests import prom
from tests.loadtests.conftest import Live
from tests.loadtests.test_cli import OUTPUTS, assert_ordered, loadtests

pytestmark = pytest.mark.slow


def settled_requests(metrics_url: str, before: dict, at_least: float, timeout: float = 30.0) -> float:
    """The server's request-counter increase since `before`, once Ray's exporter has caught up with
    `at_least` (it publishes on an interval), plus one more interval to be sure nothing else arrives."""
    deadline = time.monotonic() + timeout
    while True:
        grown = prom.summarize_server(before, prom.scrape(metrics_url))["requests"] or 0.0
        if grown >= at_least or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(2.0)
    return prom.summarize_server(before, prom.scrape(metrics_url))["requests"] or 0.0


def test_sweep_against_the_live_service(live_stepserve: Live, tmp_path: Path) -> None:
    before = prom.scrape(live_stepserve.metrics_url)
    proc = loadtests(
        "--url",
        live_stepserve.url,
        "--model",
        live_stepserve.model,
        "--sampler",
        "fm-euler,fm-rk4",
        "--steps",
        "2,8",
        "--rate",
        "4,12",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--num-samples",
        "4",
        "--metrics-url",
        live_stepserve.metrics_url,
        "--out",
        str(tmp_path),
        "--no-progress",
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    for name in OUTPUTS:
        assert (tmp_path / name).stat().st_size > 0, name
    res = json.loads((tmp_path / "results.json").read_text())
    sent = res["requests_sent"]
    assert sent == res["probe_requests"] + res["warmup_requests"] + res["measured_requests"] > 0
    # The server's own request counter grew by exactly what the client sent.
    assert settled_requests(live_stepserve.metrics_url, before, sent) == sent
    assert res["server"]["requests"] == sent
    assert res["server"]["requests_by_status"] == {"200": sent}
    # NFE: the server summed the API's nfe over the same requests (euler 1, rk4 4 evaluations a step).
    cells = res["cells"]
    nfe = sum(
        c["steps"] * (4 if c["sampler"] == "fm-rk4" else 1) * (c["requests"] + c["warmup_requests"]) for c in cells
    )
    nfe += sum(k * e for k in (2, 8) for e in (1, 4))  # one probe per sampler and K
    assert res["server"]["nfe"] == nfe
    for cell in cells:
        assert_ordered(cell)
        assert cell["errors"] == {} and cell["nfe"] == cell["steps"] * (4 if cell["sampler"] == "fm-rk4" else 1)
        # server-reported times fit inside the client-measured latency
        assert cell["server_compute_s"]["p50"] <= cell["latency_s"]["p50"]
    assert res["server"]["replicas_after"]["moons-fm"]["running"] >= 1


def test_autoscale_trace_against_the_live_service(live_stepserve: Live, tmp_path: Path) -> None:
    proc = loadtests(
        "autoscale",
        "--url",
        live_stepserve.url,
        "--model",
        live_stepserve.model,
        "--sampler",
        "fm-euler",
        "--steps",
        "20",
        "--rates",
        "2,10,2",
        "--stage",
        "3",
        "--tail",
        "1",
        "--metrics-url",
        live_stepserve.metrics_url,
        "--out",
        str(tmp_path),
        "--no-progress",
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("autoscale.json", "autoscale.csv", "autoscale.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    res = json.loads((tmp_path / "autoscale.json").read_text())
    assert [s["offered_rate"] for s in res["stages"]] == [2, 10, 2]
    assert res["stages"][1]["requests"] > res["stages"][0]["requests"]
    # replica counts were traced over the whole run (scrapes every second, 10 s in all)
    assert len(res["replica_trace"]) >= 5
    assert all(s["replicas"]["moons-fm"]["running"] >= 1 for s in res["replica_trace"])
