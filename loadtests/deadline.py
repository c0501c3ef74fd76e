"""python -m loadtests deadline: goodput of deadline requests against offered load and deadline.

First the service's capacity is measured (closed loop, fixed-K requests, or `--capacity`); then for every
deadline x load multiple, open-loop Poisson arrivals at multiple x capacity, one cell for the `steps: "auto"`
arm (the service picks K, and with `sampler: "auto"` the sampler, to meet `deadline_ms`) and one for the
fixed-K arm with the same deadline, for comparison. Statistics per cell: `loadtests/goodput.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from loadtests.cli import OneLineParser, add_service_args, float_list, non_negative, positive, preflight, run_cli
from loadtests.client import LoadTestError, Record, RequestSpec, send
from loadtests.goodput import capacity_from, check_supported, deadline_text, summarize_deadline
from loadtests.runner import closed_loop, make_client, open_loop
from loadtests.stats import summarize


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m loadtests deadline",
        description='Send requests with a latency budget (deadline_ms) and steps "auto" at multiples of the '
        "service's measured capacity (open loop, Poisson arrivals), beside a fixed-K arm with the same "
        "deadline, and report goodput (answers that met their deadline per second), deadline attainment, "
        "the K the service chose and the quality it predicted (results.json, results.csv, "
        "requests.csv, deadline_goodput.png, deadline_k.png). --sampler may be 'auto' (the service picks the "
        "sampler too). "
        "--metrics-url and --settle are not used by this mode.",
    )
    add_service_args(p)
    p.add_argument("--deadline-ms", required=True, type=float_list, help="deadlines in ms, e.g. 50,100,250")
    p.add_argument(
        "--load",
        type=float_list,
        default=[0.5, 1.0, 2.0],
        help="offered load as multiples of the measured capacity (default 0.5,1,2)",
    )
    p.add_argument("--duration", required=True, type=positive, help="measured seconds per cell")
    p.add_argument("--warmup", type=non_negative, default=1.0, help="unmeasured seconds before each cell (default 1)")
    p.add_argument("--fixed-steps", type=int, default=10, help="K of the fixed arm (default 10; 0: no fixed arm)")
    p.add_argument(
        "--fixed-sampler", help="sampler of the fixed arm (default: --sampler, or the model's first one if 'auto')"
    )
    p.add_argument("--min-quality", type=float, help="quality floor in [0, 1] sent with the auto requests")
    p.add_argument("--capacity", type=positive, help="capacity in req/s: skip measuring it")
    p.add_argument(
        "--capacity-concurrency",
        type=int,
        default=8,
        help="closed-loop clients for measuring capacity with fixed-K requests (default 8)",
    )
    p.add_argument("--capacity-duration", type=positive, default=5.0, help="seconds of the capacity measurement")
    return p


def _specs(args: argparse.Namespace, info: dict[str, Any], labels: tuple[int, ...] | None) -> dict[str, RequestSpec]:
    """The arms' request templates (deadline_ms filled in per cell)."""
    common = {"num_samples": args.num_samples, "guidance": args.guidance, "class_labels": labels, "seed": args.seed}
    specs = {"auto": RequestSpec(args.model, args.sampler[0], "auto", min_quality=args.min_quality, **common)}
    if args.fixed_steps > 0:
        sampler = args.fixed_sampler or (args.sampler[0] if args.sampler[0] != "auto" else info["samplers"][0])
        specs["fixed"] = RequestSpec(args.model, sampler, args.fixed_steps, eta=args.eta, **common)
    return specs


def _check(args: argparse.Namespace) -> tuple[dict[str, Any], tuple[int, ...] | None]:
    if len(args.sampler) != 1:
        raise LoadTestError(f"--sampler takes one name (or 'auto') in deadline mode, got {','.join(args.sampler)}")
    if args.min_quality is not None and not 0.0 <= args.min_quality <= 1.0:
        raise LoadTestError(f"--min-quality must be in [0, 1], got {args.min_quality}")
    if args.fixed_steps < 0 or args.capacity_concurrency < 1:
        raise LoadTestError("--fixed-steps must be >= 0 and --capacity-concurrency >= 1")
    requested = args.sampler
    # 'auto' is no sampler of the model: check the named ones only
    args.sampler = [s for s in [*requested, args.fixed_sampler] if s and s != "auto"]
    try:
        info, labels = preflight(args)
    finally:
        args.sampler = requested
    if "members" in info and args.fixed_steps > 0:
        raise LoadTestError(
            f"{args.model} is a family ({', '.join(info['members'])}): it takes only steps 'auto'; pass "
            "--fixed-steps 0 (and --capacity, to compare at the rate of a member's run)"
        )
    return info, labels


async def run_deadline(
    args: argparse.Namespace, specs: dict[str, RequestSpec], profile: dict[str, Any] | None
) -> tuple[float, list[dict[str, Any]], list[Record]]:
    """Probe, capacity, then every deadline x load x arm cell: (capacity, cells, records)."""
    cells: list[dict[str, Any]] = []
    records: list[Record] = []
    async with make_client(args.url, args.timeout) as client:
        probe = replace(specs["auto"], deadline_ms=max(args.deadline_ms))
        rec = await send(client, probe, 0, 0.0, 0.0, time.perf_counter(), warmup=True)
        check_supported(rec, args.url)
        if not rec.ok:
            raise LoadTestError(f"the service refused a steps 'auto' request: {rec.status} {rec.detail or ''}")
        capacity = args.capacity
        if capacity is None:
            yardstick = specs.get("fixed", probe)
            recs = await closed_loop(client, yardstick, args.capacity_concurrency, args.capacity_duration, 1.0, 1)
            capacity = capacity_from(summarize(recs))
        n_cells = len(args.deadline_ms) * len(args.load) * len(specs)
        bar = tqdm(total=n_cells, unit="cell", disable=args.no_progress, dynamic_ncols=True)
        index = 1_000_000  # seeds apart from the capacity probe's
        try:
            for deadline in args.deadline_ms:
                for multiple in args.load:
                    for arm, template in specs.items():
                        rate = multiple * capacity
                        bar.set_description(f"{arm} {deadline:g} ms {multiple:g}x ({rate:.2f}/s)")
                        spec = replace(template, deadline_ms=deadline)
                        seed = args.seed * 1_000_003 + index
                        cell_records = await open_loop(client, spec, rate, args.duration, args.warmup, seed, index)
                        index += len(cell_records)
                        records += cell_records
                        stats = summarize_deadline(cell_records, deadline, profile)
                        head = {"arm": arm, "sampler": spec.sampler, "steps": spec.steps, "mode": "open"}
                        cells.append({**head, "load": rate, "load_multiple": multiple, "offered_rps": rate, **stats})
                        bar.update(1)
        finally:
            bar.close()
    return capacity, cells, records


def run(args: argparse.Namespace) -> int:
    info, labels = _check(args)
    specs = _specs(args, info, labels)
    profile = info.get("quality_profile")
    started = time.time()
    capacity, cells, records = asyncio.run(run_deadline(args, specs, profile))
    from loadtests import plots, report  # matplotlib loads in ~1 s: not before the arguments are known to be good

    out: Path = args.out
    results = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "started_at": started,
        "model_info": info,
        "capacity_rps": capacity,
        "cells": cells,
    }
    written = report.write_results(out, results, records)
    written.append(plots.deadline_goodput(cells, out / "deadline_goodput.png"))
    written.append(plots.deadline_k_histogram(cells, out / "deadline_k.png"))
    print(f"capacity: {capacity:.2f} req/s ({'given' if args.capacity else 'measured'})")
    print(deadline_text(cells))
    print(f"\nwrote {', '.join(p.name for p in written)} to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
