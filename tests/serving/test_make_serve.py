"""`make serve`'s script from the outside: a missing model is trained, the service comes up, the curl
example it prints works through the default ingress (HAProxy), every socket its process tree listens on is on
loopback (HAProxy's stats and metrics included; except Serve's inter-deployment gRPC server of each replica,
which Ray 2.60 binds to [::] with no setting; docs/security.md), and Ctrl-C stops it.
It also keeps the HTTP contract behind HAProxy that tests/serving/test_serve_hardening.py checks on the one-hop
config. Tiny checkpoints and free ports keep it quick."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import free_port, interrupt
from tests.serving.test_serve_hardening import check_haproxy_contract, is_loopback, listening_sockets, process_tree

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_serve_script_trains_missing_models_serves_and_prints_a_working_curl(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    for name in ("moons-ddpm", "digits-ddpm", "digits-fm"):  # moons-fm is missing: the script trains it
        shutil.copytree(tiny_checkpoints[name], models / name)
    port, metrics_port, haproxy_stats, haproxy_metrics = free_port(), free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "STEPSERVE_MODELS_DIR": str(models),
        "STEPSERVE_PORT": str(port),
        "STEPSERVE_METRICS_PORT": str(metrics_port),
        "STEPSERVE_TRAIN_MAX_STEPS": "5",
        "STEPSERVE_DISTILL_PAIRS": "256",
        # HAProxy's stats page and metrics on free ports (a HAProxy already running here keeps 8404 / 9101)
        "RAY_SERVE_HAPROXY_STATS_PORT": str(haproxy_stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(haproxy_metrics),
    }
    log = tmp_path / "serve.log"
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
        text = log.read_text()
        assert "training it now" in text and (models / "moons-fm" / "manifest.json").is_file()
        assert "distilling it now" in text and (models / "moons-fm-reflow" / "manifest.json").is_file()
        assert "ingress: HAProxy" in text  # the shipped default
        curl = next(line.split("try:", 1)[1].strip() for line in text.splitlines() if "try:" in line)
        assert f"127.0.0.1:{port}" in curl
        answer = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60, check=True)
        assert '"nfe":10' in answer.stdout and '"shape":[4,2]' in answer.stdout
        assert f"http://127.0.0.1:{metrics_port}/metrics" in text
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).status_code == 200
        assert "warning: Ray's node address" not in text
        sockets = listening_sockets(process_tree(proc.pid))
        by_port = {p: (a, c) for a, p, c in sockets}
        assert by_port[port][0] == "127.0.0.1" and by_port[metrics_port][0] == "127.0.0.1", sockets
        assert len(sockets) >= 10, sockets  # GCS, raylet, agents, Serve's actors: the tree was really read
        open_ = [(a, p, c) for a, p, c in sockets if not is_loopback(a)]
        # What remains on every interface: one gRPC server per Serve replica (hard-coded "[::]:0" in Ray 2.60).
        assert open_ and all(c.startswith("ray::ServeReplica") for _, _, c in open_), open_
        # The shipped path (two hops behind HAProxy) keeps the whole HTTP contract test_serve_hardening.py states.
        check_haproxy_contract(proc, port, haproxy_stats, haproxy_metrics, log, one_hop=False)
    finally:
        interrupt(proc)
    assert proc.returncode == 0
