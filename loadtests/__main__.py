"""python -m loadtests: latency, throughput and quality of a running stepserve against the step budget K.

python -m loadtests --url URL --model M --sampler S[,S2] --steps 5,10,20,50
                    (--concurrency 1,4,16 | --rate 2,8,32) --duration SECONDS --out DIR
python -m loadtests autoscale --url URL --model M --sampler S --steps K --rates 1,4,16,4,1 ...
python -m loadtests deadline --url URL --model M --sampler S|auto --deadline-ms 50,100 --duration SECONDS ...
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from loadtests import costmodel, report
from loadtests.cli import (
    OneLineParser,
    add_service_args,
    float_list,
    int_list,
    non_negative,
    parse_guidances,
    positive,
    preflight,
    run_cli,
)
from loadtests.client import num_classes, sampler_max_steps
from loadtests.sweep import SweepConfig, run_sweep


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m loadtests",
        description="Load-test a running stepserve over HTTP: for every sampler x K x load level, run "
        "`--duration` seconds (after `--warmup` seconds that are not counted) and report requests, errors "
        "by status, throughput, latency percentiles and the server's queue / compute times; fit latency = "
        "a + b * NFE per sampler and print the largest K meeting a p95 budget. Closed loop (--concurrency): "
        "N clients send back to back. Open loop (--rate): Poisson arrivals fired on schedule whether or not "
        "earlier requests have answered, so queueing shows in latency. `python -m loadtests autoscale -h` "
        "ramps load up and down and traces replicas; `python -m loadtests deadline -h` measures "
        'goodput of deadline requests (steps "auto").',
    )
    add_service_args(p)
    p.add_argument("--steps", required=True, type=int_list, help="step budgets K, comma-separated, e.g. 5,10,20,50")
    load = p.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int_list, help="closed loop: concurrent clients, e.g. 1,4,16")
    load.add_argument("--rate", type=float_list, help="open loop: Poisson arrival rates in requests/s, e.g. 2,8,32")
    p.add_argument("--duration", required=True, type=positive, help="measured seconds per cell")
    p.add_argument("--warmup", type=non_negative, default=1.0, help="unmeasured seconds before each cell (default 1)")
    p.add_argument("--slo", type=float_list, help="latency budgets in ms for the SLO table (default 50..5000)")
    p.add_argument(
        "--quality",
        action="store_true",
        help="also fetch samples for each sampler and K and score them (moons: sliced-Wasserstein "
        "ratio; digits and shapes: classifier accuracy and Frechet distance); plots quality against latency",
    )
    p.add_argument(
        "--quality-guidance",
        type=str,
        help="with --quality: guidance weights w to score, comma-separated ('none' for unguided), e.g. "
        "none,1,3 (default: --guidance); digits and shapes report accuracy against w",
    )
    p.add_argument("--quality-samples", type=int, default=2000, help="samples per sampler and K for --quality")
    p.add_argument("--scrape-interval", type=positive, default=2.0, help="seconds between replica-count scrapes")
    return p


def run(args: argparse.Namespace) -> int:
    info, labels = preflight(args)
    guidances = parse_guidances(args.quality_guidance) if args.quality_guidance else [args.guidance]
    mode, loads = ("closed", [float(c) for c in args.concurrency]) if args.concurrency else ("open", args.rate)
    cfg = SweepConfig(
        url=args.url,
        model=args.model,
        samplers=args.sampler,
        steps=args.steps,
        mode=mode,
        loads=loads,
        duration=args.duration,
        warmup=args.warmup,
        num_samples=args.num_samples,
        guidance=args.guidance,
        class_labels=labels,
        eta=args.eta,
        seed=args.seed,
        timeout=args.timeout,
        metrics_url=args.metrics_url,
        scrape_interval=args.scrape_interval,
        settle=args.settle,
        progress=not args.no_progress,
    )
    started = time.time()
    result = asyncio.run(run_sweep(cfg))
    models = costmodel.fit_cost_models(result.cells)
    budgets = tuple(b / 1e3 for b in args.slo) if args.slo else costmodel.DEFAULT_BUDGETS_S
    slo = costmodel.slo_table(result.cells, models, budgets, sampler_max_steps(info))
    results = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "mode": mode,
        "started_at": started,
        "model_info": info,
        "requests_sent": result.requests_sent,
        "probe_requests": result.probes,
        "warmup_requests": sum(c["warmup_requests"] for c in result.cells),
        "measured_requests": sum(c["requests"] for c in result.cells),
        "cells": result.cells,
        "cost_model": models,
        "slo": slo,
        "server": result.server,
        "server_error": result.metrics_error,
        "replica_trace": result.replica_trace,
        "quality": None,
    }
    from loadtests import plots  # matplotlib loads in ~1 s: not before the arguments are known to be good

    out: Path = args.out
    # Written before the quality step, so that a failure there keeps the sweep's results.
    written = report.write_results(out, results, result.records)
    written.append(plots.latency_vs_k(result.cells, out / "latency_vs_k.png"))
    written.append(plots.throughput_vs_load(result.cells, out / "throughput_vs_load.png"))
    written.append(plots.latency_cdf(result.records, out / "latency_cdf.png"))
    print(report.cells_table(result.cells))
    print("\ncost model: latency = a + b * NFE")
    print(report.cost_table(models))
    print("\nlargest K meeting p95 <= budget (measured in the sweep / from the p95 line; * extrapolated)")
    print(report.slo_text(slo))
    print("\n" + report.server_text(result.server, result.requests_sent, result.metrics_error))
    if args.quality:
        from loadtests.quality_over_http import primary_metric, quality_sweep

        quality_rows = quality_sweep(
            args.url,
            args.model,
            info,
            args.sampler,
            args.steps,
            result.cells,
            args.quality_samples,
            guidances,
            num_classes(info),
            args.seed,
        )
        results["quality"] = quality_rows
        report.write_results(out, results, result.records)
        metric = primary_metric(quality_rows[0]["kind"])
        written.append(plots.quality_frontier(quality_rows, metric, out / "quality_vs_latency.png"))
        if len(guidances) > 1:
            written.append(plots.quality_vs_guidance(quality_rows, out / "quality_vs_guidance.png"))
        print("\nquality against K")
        print(report.quality_text(quality_rows))
    print(f"\nwrote {', '.join(p.name for p in written)} to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["autoscale"]:
        from loadtests.autoscale import main as autoscale_main

        return autoscale_main(argv[1:])
    if argv[:1] == ["deadline"]:
        from loadtests.deadline import main as deadline_main

        return deadline_main(argv[1:])
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
