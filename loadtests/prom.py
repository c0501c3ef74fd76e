"""The server-side view: Prometheus text scrapes of Ray's metrics export port, their difference over a
run, and a sampler that records replica counts over time.

Series are matched by name fragments (SERVER_SERIES) rather than full names, because Ray prefixes
application metrics with `ray_` and exports counters both as `<name>_total` and (for compatibility) as a
plain gauge `<name>`; only the `_total` form is used for counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)

# What the report shows -> a fragment of the Prometheus sample name (first match wins per sample).
# The series are defined in serving/metrics.py (exported as ray_stepserve_*).
APP_PREFIX = "ray_stepserve_"
SERVER_SERIES = {
    "requests": "stepserve_requests_total",
    "nfe": "stepserve_nfe_total",
    "steps": "stepserve_steps_total",
    "net_rows": "stepserve_net_rows_total",
    "rejections": "stepserve_rejections_total",
    "queue_wait": "stepserve_queue_wait_seconds",
    "request_latency": "stepserve_request_latency_seconds",
    "rows_per_tick": "stepserve_tick_rows",
}
# Replica counts from Ray Serve's own series (names as Ray 2.60 exports them):
#   target:  the controller's autoscaling target per deployment;
#   running: distinct `replica` tags of the per-replica gauge every live replica reports;
#   healthy: the controller's health gauge, per replica 1 / 0 or a per-deployment count depending on
#            RAY_SERVE_CONTROLLER_METRICS_INCLUDE_HIGH_CARDINALITY_TAGS (summing covers both); Ray only
#            exports it once set, so it is often absent on a quiet cluster.
REPLICAS_TARGET = "ray_serve_autoscaling_target_replicas"
REPLICAS_RUNNING = "ray_serve_replica_processing_queries"
REPLICAS_HEALTHY = "ray_serve_deployment_replica_healthy"


def parse(text: str) -> dict[Key, float]:
    """Every sample of a Prometheus text exposition: (name, labels) -> value."""
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def only(text: str, prefixes: tuple[str, ...]) -> str:
    """The sample lines of an exposition whose names start with `prefixes`: cheap string filtering before
    parsing, since Ray's full exposition (~1 MB) takes ~0.4 s to parse."""
    return "\n".join(line for line in text.splitlines() if line.startswith(prefixes)) + "\n"


def only_replicas(text: str) -> str:
    return only(text, (REPLICAS_TARGET, REPLICAS_RUNNING, REPLICAS_HEALTHY))


def scrape(url: str, timeout: float = 10.0) -> dict[Key, float]:
    """GET the metrics URL and parse the series the server view reads (stepserve's and the replica
    gauges); raises httpx.HTTPError when it is unreachable."""
    resp = httpx.get(url, timeout=timeout)
    resp.raise_for_status()
    return parse(only(resp.text, (APP_PREFIX, REPLICAS_TARGET, REPLICAS_RUNNING, REPLICAS_HEALTHY)))


def _is_cumulative(name: str) -> bool:
    return name.endswith(("_total", "_count", "_sum", "_bucket"))


def difference(before: dict[Key, float], after: dict[Key, float]) -> dict[Key, float]:
    """after - before for cumulative samples (counters, histogram count/sum/bucket); series that appeared
    during the run count from zero."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if _is_cumulative(k[0])}


def _sum_matching(samples: dict[Key, float], fragment: str, suffix: str = "") -> float | None:
    vals = [v for (name, _), v in samples.items() if fragment in name and name.endswith(suffix)]
    return float(sum(vals)) if vals else None


def _by_label(samples: dict[Key, float], fragment: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (name, labels), v in samples.items():
        if fragment in name and name.endswith("_total"):
            out[dict(labels).get(label, "")] += v
    return dict(sorted(out.items()))


def replica_counts(samples: dict[Key, float]) -> dict[str, dict[str, float]]:
    """deployment -> {"running": n, "target": n, "healthy": n} (each only where its series exists)."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    running: dict[str, set[str]] = defaultdict(set)
    for (name, labels), v in samples.items():
        tags = dict(labels)
        dep = tags.get("deployment", "")
        if name == REPLICAS_RUNNING:
            running[dep].add(tags.get("replica", ""))
        elif name == REPLICAS_TARGET:
            out[dep]["target"] = out[dep].get("target", 0.0) + v
        elif name == REPLICAS_HEALTHY:
            out[dep]["healthy"] = out[dep].get("healthy", 0.0) + v
    for dep, replicas in running.items():
        out[dep]["running"] = float(len(replicas))
    return dict(sorted(out.items()))


def summarize_server(before: dict[Key, float], after: dict[Key, float]) -> dict[str, Any]:
    """The run as the server counted it: increases of request / NFE / step / rejection counters (total
    and by status), mean queue wait, request latency and rows per engine tick over the run (histogram
    sum / count differences), and replica counts after the run."""
    d = difference(before, after)
    out: dict[str, Any] = {}
    for key in ("requests", "nfe", "steps", "net_rows", "rejections"):
        out[key] = _sum_matching(d, SERVER_SERIES[key], "_total")
    out["requests_by_status"] = _by_label(d, SERVER_SERIES["requests"], "status")
    for key in ("queue_wait", "request_latency", "rows_per_tick"):
        total = _sum_matching(d, SERVER_SERIES[key], "_sum")
        count = _sum_matching(d, SERVER_SERIES[key], "_count")
        out[f"{key}_mean"] = total / count if total is not None and count else None
        out[f"{key}_count"] = count
    out["replicas_after"] = replica_counts(after)
    return out


class ReplicaSampler:
    """Scrapes the metrics URL every `interval` seconds while a run goes on, keeping (seconds since t0,
    {deployment: {"running": n, "target": n, ...}}); scrape failures are counted, not raised."""

    def __init__(self, url: str, interval: float = 2.0, t0: float | None = None) -> None:
        self.url = url
        self.t0 = time.perf_counter() if t0 is None else t0
        self.interval = interval
        self.trace: list[dict[str, Any]] = []
        self.failures = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                try:
                    resp = await client.get(self.url)
                    # Parse off the event loop and only the replica series: Ray's full exposition takes
                    # ~0.1-0.5 s to parse, which would delay the requests this loop is due to send.
                    counts = await asyncio.to_thread(lambda text=resp.text: replica_counts(parse(only_replicas(text))))
                    self.trace.append({"t": time.perf_counter() - self.t0, "replicas": counts})
                except (httpx.HTTPError, ValueError):
                    self.failures += 1
                await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
