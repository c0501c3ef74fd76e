"""Outputs of a sweep: results.json, results.csv (one row per cell), requests.csv (one row per request)
and the terminal tables."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from loadtests.client import Record
from loadtests.stats import PERCENTILES

CSV_FIELDS = (
    ["sampler", "steps", "mode", "load", "nfe", "requests", "ok", "errors", "error_rate", "warmup_requests"]
    + ["window_s", "throughput_rps", "samples_per_s", "arrival_rate", "latency_mean_s"]
    + [f"latency_p{q}_s" for q in PERCENTILES]
    + ["latency_max_s", "server_queue_mean_s", "server_queue_p95_s", "server_compute_mean_s"]
    + ["server_compute_p95_s", "server_total_mean_s", "schedule_lag_p99_s"]
)


def _flat(cell: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: nested percentiles flattened; errors as `status:count;...`."""
    row = {k: cell.get(k) for k in CSV_FIELDS if k in cell and not isinstance(cell[k], dict)}
    row["errors"] = ";".join(f"{s}:{n}" for s, n in cell["errors"].items())
    for q in PERCENTILES:
        row[f"latency_p{q}_s"] = cell["latency_s"][f"p{q}"]
    row["latency_max_s"] = cell["latency_s"]["max"]
    for name in ("queue", "compute", "total"):
        srv = cell.get(f"server_{name}_s") or {}
        row[f"server_{name}_mean_s"] = srv.get("mean")
        if name != "total":
            row[f"server_{name}_p95_s"] = srv.get("p95")
    row["schedule_lag_p99_s"] = cell["schedule_lag_s"]["p99"]
    return row


def write_results(out: Path, results: dict[str, Any], records: Iterable[Record]) -> list[Path]:
    """Write results.json, results.csv and requests.csv into `out`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.csv", out / "requests.csv"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    with paths[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for cell in results["cells"]:
            writer.writerow(_flat(cell))
    names = [f.name for f in fields(Record) if f.name != "detail"]
    with paths[2].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*names, "latency"])
        writer.writeheader()
        for rec in records:
            writer.writerow({**{n: getattr(rec, n) for n in names}, "latency": rec.latency})
    return paths


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.1f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Right-aligned plain-text table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def cells_table(cells: list[dict[str, Any]]) -> str:
    """The sweep at a glance: one line per cell, latencies in milliseconds; srv: the means of the service's
    own timing fields (engine queue, engine compute, ingress receive to response)."""
    load_name = "conc" if cells and cells[0]["mode"] == "closed" else "rate/s"
    headers = ["sampler", "K", load_name, "NFE", "req", "err", "req/s", "smp/s", "p50 ms", "p95 ms", "p99 ms"]
    headers += ["max ms", "srv queue ms", "srv compute ms", "srv total ms"]
    rows = []
    for c in cells:
        lat = c["latency_s"]
        rows.append(
            [c["sampler"], str(c["steps"]), f"{c['load']:g}", _num(c["nfe"], "d"), str(c["requests"])]
            + [str(c["requests"] - c["ok"]), _num(c["throughput_rps"]), _num(c["samples_per_s"], ".1f")]
            + [_ms(lat["p50"]), _ms(lat["p95"]), _ms(lat["p99"]), _ms(lat["max"])]
            + [_ms((c[f"server_{k}_s"] or {}).get("mean")) for k in ("queue", "compute", "total")]
        )
    return table(headers, rows)


def cost_table(models: list[dict[str, Any]]) -> str:
    """latency = a + b * NFE per sampler and load (p50 and p95 fits)."""
    rows = []
    for m in models:
        row = [m["sampler"], f"{m['load']:g}", str(m["points"])]
        for key in ("p50", "p95"):
            fit = m[key]
            row += ["-", "-", "-"] if fit is None else [_ms(fit["a_s"]), f"{1e3 * fit['b_s_per_nfe']:.3f}"]
            row += [] if fit is None else [f"{fit['r2']:.3f}"]
        rows.append(row)
    return table(["sampler", "load", "pts", "p50 a ms", "p50 b ms/NFE", "r2", "p95 a ms", "p95 b ms/NFE", "r2"], rows)


def slo_text(rows: list[dict[str, Any]]) -> str:
    """Largest K with p95 <= budget: measured in the sweep, and from the p95 line (* = extrapolated; a line
    beyond the sampler's max_steps shows max_steps and says so)."""
    out = []
    for r in rows:
        model = "-" if r["k_model"] is None else f"{r['k_model']}{'*' if r['extrapolated'] else ''}"
        if r.get("capped"):
            model += f" (line {r['k_line']} > max_steps)"
        measured = "-" if r["k_measured"] is None else str(r["k_measured"])
        out.append([r["sampler"], f"{r['load']:g}", _ms(r["budget_s"]), measured, model])
    return table(["sampler", "load", "budget ms", "K measured", "K model"], out)


def server_text(server: dict[str, Any] | None, sent: int, error: str | None) -> str:
    """The server's own counters over the run beside the client's count."""
    if server is None:
        return f"server view: unavailable ({error})"
    lines = [
        f"server view: requests +{_num(server['requests'], '.0f')} (client sent {sent}), "
        f"by status {server['requests_by_status'] or '-'}",
        f"  NFE +{_num(server['nfe'], '.0f')}, steps +{_num(server['steps'], '.0f')}, "
        f"rejections +{_num(server['rejections'], '.0f')}",
        f"  mean queue wait {_ms(server['queue_wait_mean'])} ms, mean rows per engine tick "
        f"{_num(server['rows_per_tick_mean'], '.1f')}, "
        f"mean request latency {_ms(server['request_latency_mean'])} ms",
    ]
    replicas = ", ".join(
        f"{d}={v.get('running', v.get('healthy', 0)):g}/{v.get('target', 0):g}"
        for d, v in server["replicas_after"].items()
    )
    lines.append(f"  replicas after the run (running/target): {replicas or '-'}")
    return "\n".join(lines)


def quality_text(rows: list[dict[str, Any]]) -> str:
    """Quality metrics per guidance w, sampler and K beside the sweep's p50 latency and NFE at its lowest
    load (measured at the sweep's own --guidance)."""
    keys = [k for k in ("sw_ratio", "accuracy", "frechet", "frechet_data") if k in rows[0]]
    out = [
        [r["sampler"], "-" if r["guidance"] is None else f"{r['guidance']:g}", str(r["steps"])]
        + [_num(r["nfe"], "d"), _ms(r["latency_p50_s"])]
        + [_num(r[k], ".3f") for k in keys]
        for r in rows
    ]
    return table(["sampler", "w", "K", "NFE", "p50 ms", *keys], out)
