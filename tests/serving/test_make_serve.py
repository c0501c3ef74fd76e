"""`make serve`'s script from the outside: a missing model is trained, the service comes up, the curl
example it prints works through the default ingress (HAProxy), every socket its process tree listens on is on
loopback (HAProxy's stats and metrics included; except Serve's inter-deployment gRPC server of each replica,
which Ray 2.60 binds to [::] with no setting; docs/security.md), and Ctrl-C stops it.
It also keeps the HTTP contract behind HAProxy that tests/serving/test_serve_hardening.py checks on the one-hop
config. Tiny checkpoints and free ports keep it quick.

The same service then takes `python -m loadtests` (a sweep and an autoscale trace, the load generator against
the real application behind the shipped ingress, its counts checked against the server's own) before Ctrl-C:
one launch of the whole stack serves all of these checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loadtests import prom
from tests.loadtests.test_cli import OUTPUTS, assert_ordered, loadtests
from tests.serving.conftest import free_port, interrupt
from tests.serving.test_serve_hardening import check_haproxy_contract, is_loopback, listening_sockets, process_tree

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


# Ray's exporter every second and the autoscaling metrics every 0.5 s, so the load tests' reads of the server's
# counters settle quickly (the defaults are 10 s); a Ray of its own even if this test process runs one.
LIVE_ENV = {
    "RAY_ADDRESS": "local",
    "RAY_metrics_report_interval_ms": "1000",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}


@dataclass
class MadeService:
    proc: subprocess.Popen
    models: Path
    log: Path
    port: int
    metrics_port: int
    haproxy_stats: int
    haproxy_metrics: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@pytest.fixture(scope="module")
def made(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[MadeService]:
    """scripts/serve.sh (what `make serve` runs) with moons-fm missing, until it prints that it is ready."""
    tmp = tmp_path_factory.mktemp("make-serve")
    models = tmp / "models"
    for name in ("moons-ddpm", "digits-ddpm", "digits-fm"):  # moons-fm is missing: the script trains it
        shutil.copytree(tiny_checkpoints[name], models / name)
    port, metrics_port, haproxy_stats, haproxy_metrics = free_port(), free_port(), free_port(), free_port()
    env = {
        **os.environ,
        **LIVE_ENV,
        "STEPSERVE_MODELS_DIR": str(models),
        "STEPSERVE_PORT": str(port),
        "STEPSERVE_METRICS_PORT": str(metrics_port),
        "STEPSERVE_TRAIN_MAX_STEPS": "5",
        "STEPSERVE_DISTILL_PAIRS": "256",
        # HAProxy's stats page and metrics on free ports (a HAProxy already running here keeps 8404 / 9101)
        "RAY_SERVE_HAPROXY_STATS_PORT": str(haproxy_stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(haproxy_metrics),
    }
    log = tmp / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["scripts/serve.sh"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while "stepserve is ready." not in log.read_text():
            assert proc.poll() is None, f"serve.sh exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready within 5 minutes:\n{log.read_text()[-3000:]}"
            time.sleep(1.0)
        yield MadeService(proc, models, log, port, metrics_port, haproxy_stats, haproxy_metrics)
    finally:
        if proc.poll() is None:  # test_ctrl_c_stops_it did not run (or failed before its Ctrl-C)
            interrupt(proc)


def test_serve_script_trains_missing_models_serves_and_prints_a_working_curl(made: MadeService) -> None:
    text = made.log.read_text()
    assert "training it now" in text and (made.models / "moons-fm" / "manifest.json").is_file()
    assert "distilling it now" in text and (made.models / "moons-fm-reflow" / "manifest.json").is_file()
    assert "ingress: HAProxy" in text  # the shipped default
    curl = next(line.split("try:", 1)[1].strip() for line in text.splitlines() if "try:" in line)
    assert f"127.0.0.1:{made.port}" in curl
    answer = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60, check=True)
    assert '"nfe":10' in answer.stdout and '"shape":[4,2]' in answer.stdout
    # ... and the same request on the model's own route (one hop), with the same samples (seed 0)
    one_hop = next(line.split("one hop:", 1)[1].strip() for line in text.splitlines() if "one hop:" in line)
    assert f"127.0.0.1:{made.port}/models/moons-fm/v1/samples" in one_hop
    direct = subprocess.run(one_hop, shell=True, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(direct.stdout)["samples"] == json.loads(answer.stdout)["samples"]
    assert made.metrics_url in text
    assert httpx.get(made.metrics_url, timeout=30).status_code == 200
    assert "warning: Ray's node address" not in text
    sockets = listening_sockets(process_tree(made.proc.pid))
    by_port = {p: (a, c) for a, p, c in sockets}
    assert by_port[made.port][0] == "127.0.0.1" and by_port[made.metrics_port][0] == "127.0.0.1", sockets
    assert len(sockets) >= 10, sockets  # GCS, raylet, agents, Serve's actors: the tree was really read
    open_ = [(a, p, c) for a, p, c in sockets if not is_loopback(a)]
    # What remains on every interface: one gRPC server per Serve replica (hard-coded "[::]:0" in Ray 2.60).
    assert open_ and all(c.startswith("ray::ServeReplica") for _, _, c in open_), open_
    # The shipped path (two hops behind HAProxy) keeps the whole HTTP contract test_serve_hardening.py states.
    check_haproxy_contract(made.proc, made.port, made.haproxy_stats, made.haproxy_metrics, made.log, one_hop=False)


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


def settled_scrape(metrics_url: str, timeout: float = 30.0) -> dict:
    """A scrape once the server's request counter has stopped moving (Ray exports on an interval, so requests
    answered just before may still be on their way into it)."""
    deadline = time.monotonic() + timeout
    last = prom.scrape(metrics_url)
    while time.monotonic() < deadline:
        time.sleep(2.5)
        now = prom.scrape(metrics_url)
        if not prom.summarize_server(last, now)["requests"]:
            return now
        last = now
    return last


def outputs(made: MadeService, out: Path) -> list[str]:
    """The arguments both load tests end with: the server's metrics, the output directory, no progress bar."""
    return ["--metrics-url", made.metrics_url, "--out", str(out), "--no-progress"]


def test_loadtests_sweep_against_the_service(made: MadeService, tmp_path: Path) -> None:
    """An open-loop sweep (2 samplers x 2 K at one rate): every output written, and the server counted exactly
    the requests and NFE the client sent."""
    before = settled_scrape(made.metrics_url)  # the requests of the test above are all counted by now
    proc = loadtests(
        "--url",
        made.url,
        "--model",
        "moons-fm",
        "--sampler",
        "fm-euler,fm-rk4",
        "--steps",
        "2,8",
        "--rate",
        "8",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--num-samples",
        "4",
        *outputs(made, tmp_path),
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    for name in OUTPUTS:
        assert (tmp_path / name).stat().st_size > 0, name
    res = json.loads((tmp_path / "results.json").read_text())
    sent = res["requests_sent"]
    assert sent == res["probe_requests"] + res["warmup_requests"] + res["measured_requests"] > 0
    # The server's own request counter grew by exactly what the client sent.
    assert settled_requests(made.metrics_url, before, sent) == sent
    assert res["server"]["requests"] == sent
    # (statuses the earlier tests' requests got, 413 and 422, are series that did not grow)
    assert {s: n for s, n in res["server"]["requests_by_status"].items() if n} == {"200": sent}
    # NFE: the server summed the API's nfe over the same requests (euler 1, rk4 4 evaluations a step).
    cells = res["cells"]
    assert len(cells) == 4
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


def test_loadtests_autoscale_trace_against_the_service(made: MadeService, tmp_path: Path) -> None:
    proc = loadtests(
        "autoscale",
        "--url",
        made.url,
        "--model",
        "moons-fm",
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
        *outputs(made, tmp_path),
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


def test_ctrl_c_stops_it(made: MadeService) -> None:
    interrupt(made.proc)
    assert made.proc.returncode == 0, made.log.read_text()[-3000:]
