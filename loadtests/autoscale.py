"""python -m loadtests autoscale: ramp an open-loop load up and down and trace latency and replicas.

The offered load is a piecewise-constant Poisson process: stage i runs `--stage` seconds at rate
rates[i] (e.g. 1,4,16,4,1 ramps up and down). Replica counts (running and the autoscaler's target, from
Ray Serve's metrics) are scraped every `--scrape-interval` seconds on the same clock, also through an
optional idle `--tail` that lets a downscale show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import prom
from loadtests.cli import OneLineParser, add_service_args, float_list, non_negative, positive, preflight
from loadtests.client import LoadTestError, Record, RequestSpec
from loadtests.runner import fire_at, make_client, poisson_arrivals
from loadtests.stats import percentiles


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m loadtests autoscale",
        description="Offer Poisson load in stages (--rates r1,r2,... each for --stage seconds), record every "
        "request, scrape replica counts from Ray's metrics port, and plot offered load, latency and "
        "replicas over time (autoscale.png, autoscale.json, autoscale.csv).",
    )
    add_service_args(p)
    p.add_argument("--steps", required=True, type=int, help="step budget K of every request")
    p.add_argument("--rates", required=True, type=float_list, help="arrival rate per stage (req/s), e.g. 1,4,16,4,1")
    p.add_argument("--stage", required=True, type=positive, help="seconds per stage")
    p.add_argument("--tail", type=non_negative, default=0.0, help="idle seconds after the last stage, still traced")
    p.add_argument("--window", type=positive, default=2.0, help="seconds per point of the latency trace")
    p.add_argument("--scrape-interval", type=positive, default=1.0, help="seconds between replica scrapes")
    return p


def stage_arrivals(rates: list[float], stage: float, seed: int) -> np.ndarray:
    """Arrival offsets of the staged Poisson process: stage i's arrivals lie in [i stage, (i+1) stage)."""
    parts = [i * stage + poisson_arrivals(r, stage, seed * 1_000_003 + i) for i, r in enumerate(rates)]
    return np.concatenate(parts)


def windows(records: list[Record], rates: list[float], stage: float, width: float, end: float) -> list[dict[str, Any]]:
    """Per time window [t, t + width): offered rate, measured starts/s, answers/s, p50 / p95 latency of
    requests that started in it, errors."""
    out = []
    for t in np.arange(0.0, end, width):
        started = [r for r in records if t <= r.start < t + width]
        answered = [r for r in records if t <= r.end < t + width and r.ok]
        lat = percentiles([r.latency for r in started if r.ok])
        i = int(t // stage)
        out.append(
            {
                "t": float(t),
                "offered_rate": rates[i] if i < len(rates) else 0.0,
                "start_rate": len(started) / width,
                "answer_rate": len(answered) / width,
                "latency_p50_s": lat["p50"],
                "latency_p95_s": lat["p95"],
                "errors": sum(not r.ok for r in started),
            }
        )
    return out


async def trace(args: argparse.Namespace, spec: RequestSpec) -> tuple[list[Record], list[dict[str, Any]], float]:
    arrivals = stage_arrivals(args.rates, args.stage, args.seed)
    t0 = time.perf_counter()
    sampler = prom.ReplicaSampler(args.metrics_url, args.scrape_interval, t0=t0) if args.metrics_url else None
    if sampler:
        sampler.start()
    async with make_client(args.url, args.timeout) as client:
        records = await fire_at(client, spec, arrivals, t0, load=0.0)
    for r in records:  # each record's load: the offered rate of its stage
        r.load = args.rates[min(int(r.scheduled // args.stage), len(args.rates) - 1)]
    await asyncio.sleep(max(0.0, len(args.rates) * args.stage + args.tail - (time.perf_counter() - t0)))
    if sampler:
        await sampler.stop()
    return records, (sampler.trace if sampler else []), time.perf_counter() - t0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if len(args.sampler) != 1:
            raise LoadTestError("autoscale takes one --sampler")
        _, labels = preflight(args)
        spec = RequestSpec(
            args.model,
            args.sampler[0],
            args.steps,
            args.num_samples,
            args.guidance,
            labels,
            args.seed,
            args.eta,
        )
        records, replica_trace, end = asyncio.run(trace(args, spec))
    except LoadTestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    series = windows(records, args.rates, args.stage, args.window, end)
    stages = []
    for i, rate in enumerate(args.rates):
        recs = [r for r in records if i * args.stage <= r.scheduled < (i + 1) * args.stage]
        reps = [
            s["replicas"].get(args.model, {}) for s in replica_trace if i * args.stage <= s["t"] < (i + 1) * args.stage
        ]
        stages.append(
            {
                "stage": i,
                "offered_rate": rate,
                "requests": len(recs),
                "errors": sum(not r.ok for r in recs),
                "latency_s": percentiles([r.latency for r in recs if r.ok]),
                "schedule_lag_p99_s": percentiles([r.start - r.scheduled for r in recs])["p99"],
                "running_max": max((x.get("running", 0) for x in reps), default=None),
                "target_max": max((x.get("target", 0) for x in reps), default=None),
            }
        )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "requests_sent": len(records),
        "stages": stages,
        "windows": series,
        "replica_trace": replica_trace,
    }
    (out / "autoscale.json").write_text(json.dumps(result, indent=2) + "\n")
    _write_csv(out / "autoscale.csv", series, replica_trace, args.model, args.window)
    from loadtests.plots import autoscale_trace

    autoscale_trace(series, replica_trace, args.model, args.rates, args.stage, args.window, out / "autoscale.png")
    from loadtests.report import table

    rows = [
        [str(s["stage"]), f"{s['offered_rate']:g}", str(s["requests"]), str(s["errors"])]
        + ["-" if s["latency_s"][p] is None else f"{1e3 * s['latency_s'][p]:.1f}" for p in ("p50", "p95")]
        + ["-" if s["schedule_lag_p99_s"] is None else f"{1e3 * s['schedule_lag_p99_s']:.1f}"]
        + ["-" if s[k] is None else f"{s[k]:g}" for k in ("running_max", "target_max")]
        for s in stages
    ]
    headers = [
        "stage",
        "rate/s",
        "req",
        "err",
        "p50 ms",
        "p95 ms",
        "send lag p99 ms",
        "replicas max",
        "target max",
    ]
    print(table(headers, rows))
    print(f"wrote autoscale.json, autoscale.csv, autoscale.png to {out}")
    return 0


def _write_csv(path: Path, series: list[dict[str, Any]], trace: list[dict[str, Any]], model: str, width: float) -> None:
    """One row per window; replicas: the last scrape inside the window (blank if none)."""
    keys = list(series[0]) if series else ["t"]
    with path.open("w") as f:
        f.write(",".join([*keys, "replicas_running", "replicas_target"]) + "\n")
        for w in series:
            inside = [s["replicas"].get(model, {}) for s in trace if w["t"] <= s["t"] < w["t"] + width]
            last = inside[-1] if inside else {}
            cells = ["" if w[k] is None else f"{w[k]:g}" for k in keys]
            cells += [f"{last[k]:g}" if k in last else "" for k in ("running", "target")]
            f.write(",".join(cells) + "\n")
