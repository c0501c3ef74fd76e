"""Deadline requests measured: goodput, deadline attainment, the K the service chose and the quality it
predicted, per cell of `python -m loadtests deadline` (pure functions over records; no HTTP here).

A request meets its deadline when the response says so (`deadline_met`); a response without the field (a
fixed-K request to a service that leaves it null) is judged by the service's own `timing.total_ms`, which is
measured from the request's arrival at the ingress as the deadline is. Refusals (422, 503) and errors never
meet it. Quality is the response's `predicted_quality`, or else the model's quality profile (GET
/v1/models/{id}: quality_profile) read at the sampler and K that ran.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from loadtests.client import LoadTestError, Record
from loadtests.report import table
from loadtests.stats import summarize

# Fields of the step-budget contract that a service without it refuses as unknown (or, for steps, as
# not an integer).
DEADLINE_FIELDS = ("deadline_ms", "min_quality", "steps")


def unsupported(rec: Record) -> str | None:
    """The one-line reason when `rec` is a 422 saying that the service does not know deadline requests
    (an unknown deadline_ms / min_quality field, or steps "auto" refused as not an integer); else None."""
    if rec.status != "422" or not rec.detail:
        return None
    detail = rec.detail.lower()
    if "unknown field" in detail and ("deadline_ms" in detail or "min_quality" in detail):
        return rec.detail
    if "steps" in detail and "integer" in detail:
        return rec.detail
    return None


def check_supported(rec: Record, url: str) -> None:
    """LoadTestError (one line) when the probe shows a service without deadline requests."""
    reason = unsupported(rec)
    if reason is not None:
        raise LoadTestError(
            f'{url} does not take deadline requests (deadline_ms, steps "auto"): it answered 422 {reason}; '
            "serve a version with the step-budget feature"
        )


def met(rec: Record, deadline_ms: float) -> bool:
    """Whether an answered request met `deadline_ms` (see the module docstring)."""
    if not rec.ok:
        return False
    if rec.deadline_met is not None:
        return rec.deadline_met
    if rec.server_total_s is not None:
        return 1e3 * rec.server_total_s <= deadline_ms
    return 1e3 * rec.latency <= deadline_ms


def profile_quality(profile: dict[str, Any] | None, sampler: str | None, steps: int | None) -> float | None:
    """The quality profile's value for `sampler` at K = `steps`: the point itself, else linear in K between
    the neighbouring points (the end point's value outside them); None without a profile or that sampler."""
    if not profile or sampler is None or steps is None:
        return None
    pts = sorted((int(p["steps"]), float(p["quality"])) for p in profile.get("points", []) if p["sampler"] == sampler)
    if not pts:
        return None
    ks, qs = zip(*pts, strict=True)
    return float(np.interp(steps, ks, qs))


def quality_of(rec: Record, profile: dict[str, Any] | None) -> float | None:
    if rec.predicted_quality is not None:
        return rec.predicted_quality
    return profile_quality(profile, rec.served_sampler, rec.served_steps)


def summarize_deadline(records: list[Record], deadline_ms: float, profile: dict[str, Any] | None) -> dict[str, Any]:
    """A cell's statistics (`stats.summarize`) plus, over its measured requests:

    goodput_rps: answers that met the deadline per second of the cell's window; attainment: their share of
    all measured requests (refusals count as misses); attainment_client: the share whose client-side latency
    was within the deadline; k_histogram: [{sampler, steps, count}] of what ran; quality: mean / p10 / min of
    the predicted quality of the answers, and quality_goodput_rps, the met answers' quality summed per second.
    """
    out = summarize(records)
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    hits = [r for r in ok if met(r, deadline_ms)]
    window = out["window_s"]
    out["deadline_ms"] = deadline_ms
    out["met"] = len(hits)
    out["met_reported"] = sum(r.deadline_met is not None for r in ok)  # the rest judged by total_ms
    out["goodput_rps"] = len(hits) / window if window else None
    out["attainment"] = len(hits) / len(measured) if measured else None
    client_ok = sum(1e3 * r.latency <= deadline_ms for r in ok)
    out["attainment_client"] = client_ok / len(measured) if measured else None
    ran = Counter((r.served_sampler or r.sampler, r.served_steps) for r in ok)
    order = sorted(ran.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))
    out["k_histogram"] = [{"sampler": s, "steps": k, "count": n} for (s, k), n in order]
    out["models"] = dict(Counter(r.served_model for r in ok if r.served_model))  # a family: which members ran
    qs = [q for r in ok if (q := quality_of(r, profile)) is not None]
    out["quality"] = (
        {"mean": float(np.mean(qs)), "p10": float(np.percentile(qs, 10)), "min": float(min(qs)), "n": len(qs)}
        if qs
        else None
    )
    met_q = [q for r in hits if (q := quality_of(r, profile)) is not None]
    out["quality_goodput_rps"] = sum(met_q) / window if window and met_q else None
    out["predicted_ms_p50"] = (
        float(np.median(pm)) if (pm := [r.predicted_ms for r in ok if r.predicted_ms is not None]) else None
    )
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def top_k(cell: dict[str, Any]) -> str:
    """The most frequent (sampler, K) that ran, with its share."""
    hist = cell["k_histogram"]
    if not hist:
        return "-"
    best = max(hist, key=lambda h: h["count"])
    return f"{best['sampler']} K={best['steps']} ({best['count'] / sum(h['count'] for h in hist):.0%})"


def ran_on(cell: dict[str, Any]) -> str:
    """The models that answered, with their shares (a family's members; one model otherwise)."""
    models = cell.get("models") or {}
    total = sum(models.values())
    return " ".join(f"{m} {n / total:.0%}" for m, n in sorted(models.items())) if total else "-"


def deadline_text(cells: list[dict[str, Any]]) -> str:
    """One row per cell: arm, deadline, load, offered and answered rates, goodput, attainment, quality (the
    answers' mean; quality/s: the met answers' quality summed per second, what a deadline-bound client gets), K."""
    rows = [
        [
            c["arm"],
            f"{c['deadline_ms']:g}",
            f"{c['load_multiple']:g}x",
            _num(c["offered_rps"], ".2f"),
            str(c["requests"]),
            str(c["ok"]),
            ";".join(f"{s}:{n}" for s, n in c["errors"].items()) or "-",
            _num(c["goodput_rps"], ".2f"),
            _pct(c["attainment"]),
            _pct(c["attainment_client"]),
            _num((c["quality"] or {}).get("mean"), ".3f"),
            _num(c.get("quality_goodput_rps"), ".2f"),
            top_k(c),
            ran_on(c),
        ]
        for c in cells
    ]
    headers = ["arm", "deadline ms", "load", "offered/s", "sent", "ok", "errors", "goodput/s", "met", "met (client)"]
    return table([*headers, "quality", "quality/s", "most chosen", "ran on"], rows)


def capacity_from(cell: dict[str, Any]) -> float:
    """Answers per second of the capacity probe; LoadTestError when it answered nothing."""
    rps = cell.get("throughput_rps")
    if not rps or cell["ok"] == 0:
        errors = ";".join(f"{s}:{n}" for s, n in cell["errors"].items()) or "none"
        raise LoadTestError(f"capacity probe got no answers (errors {errors}); pass --capacity RPS to skip it")
    return float(rps)
