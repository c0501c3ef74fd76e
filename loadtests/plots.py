"""PNG plots of a sweep (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402

from loadtests.client import Record  # noqa: E402

STYLES = {"p50": "-", "p95": "--", "p99": ":"}


def _load_label(mode: str) -> str:
    return "concurrency" if mode == "closed" else "arrival rate (req/s)"


def _k_ticks(ax: plt.Axes, ks: list[int]) -> None:
    """Label a log K axis with the swept K themselves (not powers of ten)."""
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def latency_vs_k(cells: list[dict[str, Any]], path: Path) -> Path:
    """Latency p50 / p95 / p99 (ms) against K: one panel per sampler, one colour per load level."""
    samplers = sorted({c["sampler"] for c in cells})
    loads = sorted({c["load"] for c in cells})
    colours = dict(zip(loads, plt.cm.viridis(np.linspace(0, 0.85, len(loads))), strict=True))
    fig, axes = plt.subplots(1, len(samplers), figsize=(5 * len(samplers), 4), squeeze=False, sharey=True)
    for ax, sampler in zip(axes[0], samplers, strict=True):
        for load in loads:
            group = sorted(
                (c for c in cells if c["sampler"] == sampler and c["load"] == load), key=lambda c: c["steps"]
            )
            ks = [c["steps"] for c in group]
            for p, style in STYLES.items():
                ys = [np.nan if c["latency_s"][p] is None else 1e3 * c["latency_s"][p] for c in group]
                label = f"{_load_label(group[0]['mode']).split()[0]} {load:g}" if p == "p50" else None
                ax.plot(ks, ys, style, marker="o", ms=3, color=colours[load], label=label)
        ax.set(title=f"{sampler} (solid p50, dashed p95, dotted p99)", xlabel="steps K", xscale="log")
        _k_ticks(ax, sorted({c["steps"] for c in cells}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("latency (ms)")
    return _save(fig, path)


def throughput_vs_load(cells: list[dict[str, Any]], path: Path) -> Path:
    """Requests/s and samples/s against load, one line per sampler and K."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        groups[(c["sampler"], c["steps"])].append(c)
    for (sampler, steps), group in sorted(groups.items()):
        group.sort(key=lambda c: c["load"])
        loads = [c["load"] for c in group]
        for ax, key in zip(axes, ("throughput_rps", "samples_per_s"), strict=True):
            ax.plot(
                loads,
                [np.nan if c[key] is None else c[key] for c in group],
                marker="o",
                label=f"{sampler} K={steps}",
            )
    mode = cells[0]["mode"] if cells else "closed"
    for ax, ylabel in zip(axes, ("requests/s", "samples/s"), strict=True):
        ax.set(xlabel=_load_label(mode), ylabel=ylabel, xscale="log")
        ax.grid(alpha=0.3)
    if mode == "open":  # the offered rate, for reference: answers/s at or below it
        lim = [min(c["load"] for c in cells), max(c["load"] for c in cells)]
        axes[0].plot(lim, lim, color="grey", lw=0.8, ls="--", label="offered")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def latency_cdf(records: list[Record], path: Path) -> Path:
    """Empirical CDF of measured latencies of answered requests, one curve per cell."""
    groups: dict[tuple[str, int, float], list[float]] = defaultdict(list)
    for r in records:
        if r.ok and not r.warmup:
            groups[(r.sampler, r.steps, r.load)].append(1e3 * r.latency)
    fig, ax = plt.subplots(figsize=(6, 4))
    for (sampler, steps, load), lat in sorted(groups.items()):
        x = np.sort(lat)
        ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", label=f"{sampler} K={steps} load={load:g}")
    ax.set(xlabel="latency (ms)", ylabel="fraction of requests", xscale="log", ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    if len(groups) <= 16:
        ax.legend(fontsize=6)
    return _save(fig, path)


def _w(w: float | None) -> str:
    return "unguided" if w is None else f"w={w:g}"


def quality_frontier(rows: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """The step-budget frontier: quality `metric` against p50 latency, one line per sampler (and guidance
    weight, when several were scored), K annotated."""
    fig, ax = plt.subplots(figsize=(6, 4))
    several_w = len({r["guidance"] for r in rows}) > 1
    for sampler, w in sorted({(r["sampler"], r["guidance"]) for r in rows}, key=lambda p: (p[0], p[1] or -1.0)):
        group = [r for r in rows if r["sampler"] == sampler and r["guidance"] == w and r.get("latency_p50_s")]
        group.sort(key=lambda r: r["steps"])
        xs = [1e3 * r["latency_p50_s"] for r in group]
        ys = [r[metric] for r in group]
        ax.plot(xs, ys, marker="o", label=f"{sampler} {_w(w)}" if several_w else sampler)
        for x, y, r in zip(xs, ys, group, strict=True):
            ax.annotate(f"K={r['steps']}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="p50 latency at the lowest load (ms)", ylabel=metric, xscale="log")
    if metric in ("sw_ratio", "frechet"):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def quality_vs_guidance(rows: list[dict[str, Any]], path: Path) -> Path:
    """Quality against the guidance weight w at the largest K, one line per sampler: classifier accuracy
    and Frechet distance for digits and shapes, the SW ratio for moons. Unguided rows are left out: with a class
    label, unguided sampling is w = 1 (uncond + 1 * (cond - uncond) = cond), not w = 0."""
    metrics = ["accuracy", "frechet"] if "accuracy" in rows[0] else ["sw_ratio"]
    k_max = max(r["steps"] for r in rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for sampler in sorted({r["sampler"] for r in rows}):
            group = sorted(
                (r for r in rows if r["sampler"] == sampler and r["steps"] == k_max and r["guidance"] is not None),
                key=lambda r: r["guidance"],
            )
            ax.plot([r["guidance"] for r in group], [r[metric] for r in group], marker="o", label=sampler)
        ax.set(xlabel="guidance weight w", ylabel=metric, title=f"K={k_max}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def autoscale_trace(
    series: list[dict[str, Any]],
    trace: list[dict[str, Any]],
    model: str,
    rates: list[float],
    stage: float,
    width: float,
    path: Path,
) -> Path:
    """Three panels over time: offered (per stage) and measured request rates, latency p50 / p95 of the
    requests started in each window (points at window centres), and replicas of `model`."""
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    t = [w["t"] + width / 2 for w in series]
    edges = [i * stage for i in range(len(rates) + 1)]
    axes[0].stairs(rates, edges, label="offered", color="grey")
    axes[0].plot(t, [w["start_rate"] for w in series], marker=".", label="sent")
    axes[0].plot(t, [w["answer_rate"] for w in series], marker=".", label="answered")
    axes[0].set_ylabel("requests/s")
    for key, style in (("latency_p50_s", "-"), ("latency_p95_s", "--")):
        ys = [np.nan if w[key] is None else 1e3 * w[key] for w in series]
        axes[1].plot(t, ys, style, marker=".", label=key.split("_")[1])
    axes[1].set(ylabel="latency (ms)", yscale="log")
    rt = [s["t"] for s in trace]
    for key, style in (("running", "-"), ("target", "--")):
        ys = [s["replicas"].get(model, {}).get(key, np.nan) for s in trace]
        axes[2].step(rt, ys, style, where="post", label=key)
    axes[2].set(ylabel=f"{model} replicas", xlabel="time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def deadline_goodput(cells: list[dict[str, Any]], path: Path) -> Path:
    """Goodput (answers within their deadline per second), deadline attainment and mean predicted quality
    against the offered rate: one colour per deadline, solid the steps "auto" arm, dashed the fixed-K arm."""
    deadlines = sorted({c["deadline_ms"] for c in cells})
    colours = dict(zip(deadlines, plt.cm.viridis(np.linspace(0, 0.85, len(deadlines))), strict=True))
    panels = (
        ("goodput_rps", "goodput (met deadlines / s)", 1.0),
        ("attainment", "deadline attainment (%)", 100.0),
        ("quality", "mean predicted quality", 1.0),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        for (arm, deadline), group in sorted(_by(cells, "arm", "deadline_ms").items()):
            group = sorted(group, key=lambda c: c["offered_rps"])
            value = (lambda c: (c["quality"] or {}).get("mean")) if key == "quality" else (lambda c, k=key: c[k])
            ys = [np.nan if value(c) is None else scale * value(c) for c in group]
            ax.plot(
                [c["offered_rps"] for c in group],
                ys,
                "-" if arm == "auto" else "--",
                marker="o",
                ms=3,
                color=colours[deadline],
                label=f"{arm} {deadline:g} ms",
            )
        if key == "goodput_rps":
            top = max(c["offered_rps"] for c in cells)
            ax.plot([0, top], [0, top], ":", color="grey", label="goodput = offered")
        ax.set(xlabel="offered rate (req/s)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def deadline_k_histogram(cells: list[dict[str, Any]], path: Path) -> Path:
    """The K the service chose for steps "auto" requests: one panel per deadline, bars per load level."""
    auto = [c for c in cells if c["arm"] == "auto"]
    deadlines = sorted({c["deadline_ms"] for c in auto}) or [0.0]
    fig, axes = plt.subplots(1, len(deadlines), figsize=(4.5 * len(deadlines), 3.6), squeeze=False, sharey=True)
    for ax, deadline in zip(axes[0], deadlines, strict=True):
        group = sorted((c for c in auto if c["deadline_ms"] == deadline), key=lambda c: c["load_multiple"])
        labels = sorted({(h["sampler"], h["steps"] or 0) for c in group for h in c["k_histogram"]}, key=lambda x: x[1])
        width = 0.8 / max(1, len(group))
        for i, c in enumerate(group):
            counts = {(h["sampler"], h["steps"] or 0): h["count"] for h in c["k_histogram"]}
            total = max(1, sum(counts.values()))
            xs = np.arange(len(labels)) + i * width
            ax.bar(xs, [100 * counts.get(lab, 0) / total for lab in labels], width, label=f"{c['load_multiple']:g}x")
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, [f"{s}\nK={k}" for s, k in labels], fontsize=7)
        ax.set(title=f"deadline {deadline:g} ms", ylabel="share of answers (%)")
        ax.legend(fontsize=7, title="load")
    return _save(fig, path)


def _by(cells: list[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        groups[tuple(c[k] for k in keys)].append(c)
    return groups
