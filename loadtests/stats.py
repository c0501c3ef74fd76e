"""Per-cell statistics of a sweep: counts, errors by status, throughput, latency percentiles, server times."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from loadtests.client import Record

PERCENTILES = (50, 90, 95, 99)


def percentiles(values: list[float] | np.ndarray) -> dict[str, float | None]:
    """p50 / p90 / p95 / p99 (linear interpolation between order statistics) and max; None when empty.
    Monotone by construction: p50 <= p90 <= p95 <= p99 <= max."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {**{f"p{q}": None for q in PERCENTILES}, "max": None}
    qs = np.percentile(x, PERCENTILES)
    return {**{f"p{q}": float(v) for q, v in zip(PERCENTILES, qs, strict=True)}, "max": float(x.max())}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(records: list[Record]) -> dict[str, Any]:
    """Statistics of the measured (non-warmup) records of one cell.

    window_s: from the first measured start to the last measured answer; throughput = ok answers /
    window_s and samples/s = returned samples / window_s. latency_s: client-side end - start of ok
    answers. schedule_lag_s: start - scheduled (open loop: how late the generator fired; it should stay
    near zero, otherwise the generator, not the server, limited the arrival rate). arrival_rate: measured
    starts per second.
    """
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    errors = Counter(r.status for r in measured if not r.ok)
    out: dict[str, Any] = {
        "requests": len(measured),
        "ok": len(ok),
        "errors": dict(sorted(errors.items())),
        "error_rate": (len(measured) - len(ok)) / len(measured) if measured else None,
        "warmup_requests": len(records) - len(measured),
    }
    if measured:
        first = min(r.start for r in measured)
        window = max(r.end for r in measured) - first
        starts = sorted(r.start for r in measured)
        span = starts[-1] - starts[0]
        out["window_s"] = window
        out["throughput_rps"] = len(ok) / window if window > 0 else None
        out["samples_per_s"] = sum(r.num_samples for r in ok) / window if window > 0 else None
        out["arrival_rate"] = (len(starts) - 1) / span if span > 0 else None
        out["schedule_lag_s"] = percentiles([r.start - r.scheduled for r in measured])
    else:
        out.update(
            window_s=None,
            throughput_rps=None,
            samples_per_s=None,
            arrival_rate=None,
            schedule_lag_s=percentiles([]),
        )
    out["latency_s"] = percentiles([r.latency for r in ok])
    out["latency_mean_s"] = _mean([r.latency for r in ok])
    nfes = [r.nfe for r in ok if r.nfe is not None]
    out["nfe"] = int(np.median(nfes)) if nfes else None
    for name in ("queue", "compute", "total"):
        vals = [v for r in ok if (v := getattr(r, f"server_{name}_s")) is not None]
        out[f"server_{name}_s"] = {"mean": _mean(vals), **percentiles(vals)} if vals else None
    return out
