"""The in-flight gauge of a model replica reads 0 from the replica's start (before any request), so an idle
replica exports 0 rather than no series at all."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.serving.conftest import ServeCluster, app_args
from tests.serving.test_metrics import scrape

pytestmark = pytest.mark.slow


def test_idle_replica_exports_in_flight_zero(serve_cluster: ServeCluster, tiny_checkpoints: dict[str, Path]) -> None:
    serve_cluster.deploy("idlegauge", "/idlegauge", app_args(tiny_checkpoints, models=("digits-fm",)))
    try:
        # /healthz (what deploy waits for) calls `load`, never `sample`: no request has entered the engine.
        deadline = time.monotonic() + 30
        series: list = []
        while not series and time.monotonic() < deadline:
            series = [
                (labels, value)
                for name, labels, value in scrape(serve_cluster.metrics_url)
                if name == "ray_stepserve_requests_in_flight" and labels.get("application") == "idlegauge"
            ]
            time.sleep(1.0)
        assert series, "no in-flight series for an idle replica"
        assert all(labels["model"] == "digits-fm" and value == 0 for labels, value in series), series
    finally:
        serve_cluster.delete("idlegauge")
