"""Real Ray Serve on localhost, started once per test session, and helpers to deploy applications on it.

`serve_cluster` starts Ray (metrics export port, 1 s metrics report interval, short autoscaling
metric push intervals) and Serve's HTTP proxy on free ports. `serve_cluster.deploy(name, prefix, args)`
deploys `serving.app:build_app(args)` as one more application; `app_args(...)` builds those args for
any backend, so an onnxruntime-backed deployment is tested the same way:

    url = serve_cluster.deploy("ort", "/ort", app_args(ckpts, backend="onnxruntime"))
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.ports import free_port

# Shorter than Ray's defaults (10 s) so metrics and autoscaling react within a test's patience. Set
# before ray.init so that every Ray worker inherits them.
TEST_ENV = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_REPLICA_UTILIZATION_REPORT_INTERVAL_S": "1",
    "RAY_DEDUP_LOGS": "0",
    # An API key that Ray workers inherit from the driver's environment (tests/serving/test_auth_serve.py):
    # the way to hand keys_env a key without runtime_env, which Ray writes to runtime_env_agent.log.
    "STEPSERVE_TEST_API_KEYS": f"kenv-{secrets.token_urlsafe(24)}",
}
# A replica told to stop (an application deleted, a scale-down) checks for requests in flight every
# graceful_shutdown_wait_loop_s (Serve's default 2 s, which every delete would wait at least once).
SMALL_REPLICA = {"ray_actor_options": {"num_cpus": 0.5}, "graceful_shutdown_wait_loop_s": 0.2}


def interrupt(proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    """Ctrl-C to `proc` (started with start_new_session=True), and its process group killed if it has not
    exited within timeout_s."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def app_args(
    checkpoints: dict[str, Path],
    models: tuple[str, ...] | None = None,
    backend: str = "torch",
    backend_options: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    deployment_options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`build_app` args serving `models` (default: all) from their checkpoint dirs with one backend."""
    names = models or tuple(checkpoints)
    return {
        "models": {
            n: {"path": str(checkpoints[n]), "backend": backend, "backend_options": backend_options or {}}
            for n in names
        },
        # Tests not about load shedding must not shed: a wide wait bound unless the test sets its own.
        "engine": {"max_wait_s": 300.0, **(engine or {})},
        "limits": limits or {"max_num_samples": 256},
        "deployment_options": deployment_options or {n: SMALL_REPLICA for n in (*names, "Ingress")},
    }


@dataclass
class ServeCluster:
    http_port: int
    metrics_port: int

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def url(self, route_prefix: str = "/") -> str:
        return f"http://127.0.0.1:{self.http_port}{route_prefix.rstrip('/')}"

    def deploy(self, name: str, route_prefix: str, args: dict[str, Any]) -> str:
        """Deploy build_app(args) as application `name` at `route_prefix`; its base URL once healthy."""
        from ray import serve

        from serving.app import build_app

        serve.run(build_app(args), name=name, route_prefix=route_prefix)
        base = self.url(route_prefix)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=10).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"application {name} did not become healthy at {base}")

    def delete(self, name: str) -> None:
        from ray import serve

        serve.delete(name)


@pytest.fixture(scope="session")
def serve_cluster() -> ServeCluster:
    import ray
    from ray import serve

    saved = {k: os.environ.get(k) for k in TEST_ENV}
    os.environ.update(TEST_ENV)
    cluster = ServeCluster(http_port=free_port(), metrics_port=free_port())
    ray.init(
        num_cpus=32,  # logical CPUs: replicas ask for 0.5 each (many applications live at once); the cores are shared
        include_dashboard=False,
        namespace="serve",
        _metrics_export_port=cluster.metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
        log_to_driver=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": cluster.http_port})
    yield cluster
    serve.shutdown()
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def stepserve_url(serve_cluster: ServeCluster, tiny_checkpoints: dict[str, Path]) -> str:
    """The four tiny models served as application "stepserve" at /."""
    return serve_cluster.deploy("stepserve", "/", app_args(tiny_checkpoints))


@pytest.fixture(scope="session")
def one_slot_url(serve_cluster: ServeCluster, tiny_checkpoints: dict[str, Path]) -> str:
    """Tiny moons-fm on an engine that takes one request and queues none (a second request is a real 503),
    one replica (autoscaling pinned to 1, so the autoscaler's series are exported), as application "oneslot".
    Shared by the tests that need a 503 on demand (the dashboard's scrape, the client's retry); each leaves it
    idle. Never deleted before the session ends: a deleted replica's last counts may never be exported."""
    one = {"moons-fm": {**SMALL_REPLICA, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}}
    args = app_args(
        tiny_checkpoints,
        models=("moons-fm",),
        engine={"max_in_flight": 1, "max_queue": 0},
        deployment_options={**one, "Ingress": SMALL_REPLICA},
    )
    return serve_cluster.deploy("oneslot", "/oneslot", args)
