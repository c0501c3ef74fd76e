"""Services for the load-test tests.

`stub`: a slow stand-in over real HTTP (a uvicorn thread; cheap, one per module).
`live_stepserve`: the real application on a real local Ray, started once for test_live.py by the project's
own launcher (`python -m serving.serve_cli`) in a child process with its own Ray, serving the tiny
moons-fm checkpoint with autoscaling between 1 and 2 replicas; Ray exports metrics every second.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.loadtests.stub_service import StubService

ROOT = Path(__file__).resolve().parents[2]
LIVE_ENV = {
    "RAY_ADDRESS": "local",  # a Ray of its own, even if this test process already runs one
    "RAY_metrics_report_interval_ms": "1000",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}


@pytest.fixture(scope="module")
def stub() -> Iterator[StubService]:
    service = StubService().start()
    yield service
    service.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Live:
    url: str
    metrics_url: str
    model: str = "moons-fm"


def serve_config(checkpoint: Path, port: int) -> dict:
    return {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "stepserve",
                "route_prefix": "/",
                "import_path": "serving.app:build_app",
                "args": {"models": {"moons-fm": {"path": str(checkpoint)}}, "limits": {"max_num_samples": 256}},
                "deployments": [
                    {
                        "name": "moons-fm",
                        "ray_actor_options": {"num_cpus": 1},
                        "autoscaling_config": {
                            "min_replicas": 1,
                            "max_replicas": 2,
                            "target_ongoing_requests": 2,
                            "upscale_delay_s": 1,
                            "downscale_delay_s": 3,
                            "look_back_period_s": 2,
                        },
                    },
                    {"name": "Ingress", "ray_actor_options": {"num_cpus": 0.5}},
                ],
            }
        ],
    }


# Module scope: only tests/loadtests/test_live.py uses it, and a second Ray left running would take CPU from
# every later test of the session.
@pytest.fixture(scope="module")
def live_stepserve(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live-stepserve")
    port, metrics_port = free_port(), free_port()
    config = tmp / "serve.yaml"
    config.write_text(yaml.safe_dump(serve_config(tiny_checkpoints["moons-fm"], port)))
    log = (tmp / "serve.log").open("w")
    # Serve's Python proxy (not the default HAProxy): this is the one launch of serve_cli through that path.
    cmd = [sys.executable, "-m", "serving.serve_cli", "--config", str(config), "--metrics-port", str(metrics_port)]
    cmd += ["--ingress", "serve"]
    proc = subprocess.Popen(
        [*cmd, "--num-cpus", "4"], cwd=ROOT, env={**os.environ, **LIVE_ENV}, stdout=log, stderr=subprocess.STDOUT
    )
    live = Live(url=f"http://127.0.0.1:{port}", metrics_url=f"http://127.0.0.1:{metrics_port}/metrics")
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve_cli exited with {proc.returncode}; see {tmp / 'serve.log'}")
            try:
                if httpx.get(f"{live.url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"stepserve did not become healthy; see {tmp / 'serve.log'}")
            time.sleep(1.0)
        yield live
    finally:
        proc.send_signal(signal.SIGINT)  # serve_cli shuts Serve and its Ray down on SIGINT
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
