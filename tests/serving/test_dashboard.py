"""The Grafana dashboard asks only for series that a live scrape of Ray's metrics port contains after
traffic (stepserve's and Ray Serve's own), with the labels its `by (...)` and `{...}` clauses use; and the
Prometheus scrape config points at the port `make serve` exports on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT
from tests.serving.conftest import ServeCluster
from tests.serving.test_metrics import scrape

DASHBOARD = ROOT / "deploy" / "grafana" / "stepserve-dashboard.json"
SERIES = re.compile(r"\b(ray_[a-z0-9_]+)\b(?:\{([^}]*)\})?")
BY = re.compile(r"\bby \(([^)]*)\)")
MATCHER = re.compile(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def expressions() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_dashboard_panels_cover_the_operations_views() -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for view in ("status", "latency", "queue wait", "rows per tick", "nfe", "in flight", "replicas", "rejections"):
        assert view in titles, f"no panel for {view}"
    for p in dash["panels"]:
        assert p["targets"] and all(t["expr"].count("(") == t["expr"].count(")") for t in p["targets"])


def test_scrape_config_targets_the_make_serve_metrics_port() -> None:
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in cfg["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert "127.0.0.1:8080" in targets  # serving/serve_cli.py --metrics-port default


def _traffic(stepserve_url: str, one_slot_url: str) -> None:
    """200s (guided too), a 422, a 404, and engine rejections (503) on a one-request engine."""
    with httpx.Client(base_url=stepserve_url, timeout=60) as c:
        for seed in range(3):
            assert c.post("/v1/samples", json={"model": "moons-fm", "sampler": "fm-euler", "steps": 4, "seed": seed})
        guided = {"model": "digits-ddpm", "sampler": "ddim", "steps": 3, "guidance": 2.0, "class_label": 1}
        assert c.post("/v1/samples", json=guided).status_code == 200
        assert c.post("/v1/samples", json={"model": "moons-fm", "sampler": "fm-euler", "steps": 0}).status_code == 422
        assert c.post("/v1/samples", json={"model": "nope", "sampler": "ddim", "steps": 2}).status_code == 404
    base = one_slot_url
    long_body = {"model": "moons-fm", "sampler": "fm-rk4", "steps": 1000, "num_samples": 256}
    t = threading.Thread(target=lambda: httpx.post(f"{base}/v1/samples", json=long_body, timeout=120))
    t.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{base}/v1/models/moons-fm", timeout=10).json()["replica_load"]["in_flight"] == 0:
        assert time.monotonic() < deadline, "the long request never reached the engine"
        time.sleep(0.05)
    statuses = []
    deadline = time.monotonic() + 30
    while 503 not in statuses and time.monotonic() < deadline:
        body = {"model": "moons-fm", "sampler": "fm-euler", "steps": 2}
        statuses.append(httpx.post(f"{base}/v1/samples", json=body, timeout=60).status_code)
    t.join(120)
    assert 503 in statuses


@pytest.mark.slow
def test_every_dashboard_series_is_in_a_live_scrape(
    serve_cluster: ServeCluster, stepserve_url: str, one_slot_url: str
) -> None:
    _traffic(stepserve_url, one_slot_url)
    _check(expressions(), _scrape_until_complete(serve_cluster))


def _scrape_until_complete(serve_cluster: ServeCluster) -> list:
    """Scrapes until every dashboard series is exported (Ray's agent: every second)."""
    wanted = {name for e in expressions() for name, _ in SERIES.findall(e)}
    deadline = time.monotonic() + 60
    while True:
        samples = scrape(serve_cluster.metrics_url)
        names = {n for n, _, _ in samples}
        if wanted <= names or time.monotonic() > deadline:
            lacking = sorted(wanted - names)
            assert not lacking, f"the scrape lacks {lacking}; it has {sorted(n for n in names if 'stepserve' in n)}"
            return samples
        time.sleep(1.0)


def _check(exprs: list[str], samples: list) -> None:
    """Each expression's series, label matchers and `by (...)` labels exist in the scrape."""
    labels: dict[str, list[dict[str, str]]] = {}
    for n, lab, _ in samples:
        labels.setdefault(n, []).append(lab)
    for e in exprs:
        found = SERIES.findall(e)
        for name, matchers in found:
            for key, op, value in MATCHER.findall(matchers):
                assert any(key in lab for lab in labels[name]), f"{e}: {name} has no label {key!r}"
                if op == "=":
                    seen = sorted({lab.get(key, "") for lab in labels[name]})
                    assert value in seen, f"{e}: no {name}{{{key}={value!r}}}: {statuses_seen(labels[name])}"
        for group in BY.findall(e):
            for key in (k.strip() for k in group.split(",")):
                assert any(key in lab for name, _ in found for lab in labels[name]), f"{e}: no series has {key!r}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_the_config_and_every_expression(tmp_path: Path) -> None:
    """Prometheus' own parser: the scrape config, and each panel expression as a recording rule (Grafana's
    $__rate_interval replaced by a fixed window)."""
    config = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    ok = subprocess.run(["promtool", "check", "config", "--syntax-only", str(config)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rules = [
        {"record": f"stepserve:panel_{i}", "expr": e.replace("$__rate_interval", "1m")}
        for i, e in enumerate(expressions())
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    ok = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert ok.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in ok.stdout, ok.stdout + ok.stderr


def statuses_seen(series: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    return sorted({(lab.get("application", ""), lab.get("model", ""), lab.get("status", "")) for lab in series})
