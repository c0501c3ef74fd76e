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
# Ray Serve's controller gauge: per replica 1 (healthy) / 0, or the healthy count per deployment,
# depending on RAY_SERVE_CONTROLLER_METRICS_INCLUDE_HIGH_CARDINALITY_TAGS; summing covers both.
REPLICAS_HEALTHY = "ray_serve_deployment_replica_healthy"
REPLICAS_TARGET = "ray_serve_autoscaling_target_replicas"


def parse(text: str) -> dict[Key, float]:
    """Every sample of a Prometheus text exposition: (name, labels) -> value."""
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def scrape(url: str, timeout: float = 10.0) -> dict[Key, float]:
    """GET the metrics URL and parse it; raises httpx.HTTPError when it is unreachable."""
    resp = httpx.get(url, timeout=timeout)
    resp.raise_for_status()
    return parse(resp.text)


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
    """deployment -> {"healthy": n, "target": n} from Ray Serve's controller gauges."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (name, labels), v in samples.items():
        for series, field in ((REPLICAS_HEALTHY, "healthy"), (REPLICAS_TARGET, "target")):
            if name == series:
                dep = dict(labels).get("deployment", "")
                out[dep][field] = out[dep].get(field, 0.0) + v
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
    {deployment: {"healthy": n, "target": n}}); scrape failures are counted, not raised."""

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
                    counts = replica_counts(parse(resp.text))
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
