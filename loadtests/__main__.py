"""python -m loadtests: latency, throughput and quality of a running stepserve against the step budget K.

python -m loadtests --url URL --model M --sampler S[,S2] --steps 5,10,20,50
                    (--concurrency 1,4,16 | --rate 2,8,32) --duration SECONDS --out DIR
python -m loadtests autoscale --url URL --model M --sampler S --steps K --rates 1,4,16,4,1 ...
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import httpx

from loadtests import costmodel, report
from loadtests.client import LoadTestError, accepted_samplers, model_info, num_classes
from loadtests.sweep import SweepConfig, run_sweep


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one `error: ...` line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def int_list(text: str) -> list[int]:
    """'5,10,20' -> [5, 10, 20]; every entry a positive integer, at least one."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    try:
        values = [int(s) for s in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"entries must be >= 1, got {text!r}")
    return values


def float_list(text: str) -> list[float]:
    """'2,8,32' -> [2.0, 8.0, 32.0]; every entry > 0, at least one."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    try:
        values = [float(s) for s in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"entries must be > 0, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    return items


def positive(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def non_negative(text: str) -> float:
    v = float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def add_service_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by the sweep and the autoscale trace."""
    p.add_argument("--url", required=True, help="service base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="model id as listed by GET /v1/models")
    p.add_argument("--sampler", required=True, type=name_list, help="sampler name(s), comma-separated")
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight w (class-conditional models)")
    p.add_argument(
        "--class-label",
        default="cycle",
        help="class-conditional models: an integer, 'cycle' (request i asks for class i mod C; "
        "the default) or 'none' (unconditional)",
    )
    p.add_argument("--num-samples", type=int, default=1, help="samples per request (default 1)")
    p.add_argument("--eta", type=float, help="DDIM eta (ddim sampler only)")
    p.add_argument("--seed", type=int, default=0, help="base seed: request i uses seed + i; arrivals too")
    p.add_argument("--timeout", type=positive, default=120.0, help="per-request timeout in seconds")
    p.add_argument(
        "--metrics-url",
        default="auto",
        help="Prometheus endpoint of the service's Ray cluster (Ray's metrics export port); 'auto' "
        "(default): port 8080 on the --url host, as `make serve` sets it; 'none': skip the server-side "
        "view. An unreachable endpoint is reported, not fatal",
    )
    p.add_argument(
        "--settle",
        type=non_negative,
        default=30.0,
        help="seconds to wait after a run for the server's request counter to catch up (Ray exports "
        "metrics on an interval)",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m loadtests",
        description="Load-test a running stepserve over HTTP: for every sampler x K x load level, run "
        "`--duration` seconds (after `--warmup` seconds that are not counted) and report requests, errors "
        "by status, throughput, latency percentiles and the server's queue / compute times; fit latency = "
        "a + b * NFE per sampler and print the largest K meeting a p95 budget. Closed loop (--concurrency): "
        "N clients send back to back. Open loop (--rate): Poisson arrivals fired on schedule whether or not "
        "earlier requests have answered, so queueing shows in latency. `python -m loadtests autoscale -h` "
        "ramps load up and down and traces replicas.",
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
        "ratio; digits: classifier accuracy and Frechet distance); plots quality against latency",
    )
    p.add_argument(
        "--quality-guidance",
        type=str,
        help="with --quality: guidance weights w to score, comma-separated ('none' for unguided), e.g. "
        "none,1,3 (default: --guidance); digits report accuracy against w",
    )
    p.add_argument("--quality-samples", type=int, default=2000, help="samples per sampler and K for --quality")
    p.add_argument("--scrape-interval", type=positive, default=2.0, help="seconds between replica-count scrapes")
    return p


def parse_guidances(text: str) -> list[float | None]:
    """'none,1,3' -> [None, 1.0, 3.0]."""
    out: list[float | None] = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        try:
            out.append(None if item == "none" else float(item))
        except ValueError:
            raise LoadTestError(f"--quality-guidance: {item!r} is neither a number nor 'none'") from None
    if not out:
        raise LoadTestError("--quality-guidance: empty list")
    return out


def resolve_labels(arg: str, classes: int) -> tuple[int, ...] | None:
    """--class-label against the model's class count."""
    if classes == 0 or arg == "none":
        if arg not in ("cycle", "none"):
            raise LoadTestError(f"--class-label {arg}: the model is unconditional")
        return None
    if arg == "cycle":
        return tuple(range(classes))
    try:
        label = int(arg)
    except ValueError:
        raise LoadTestError(f"--class-label must be an integer, 'cycle' or 'none', got {arg!r}") from None
    if not 0 <= label < classes:
        raise LoadTestError(f"--class-label {label} out of range: the model has {classes} classes")
    return (label,)


def metrics_url(arg: str, url: str) -> str | None:
    """--metrics-url: 'none' -> None; 'auto' -> http://<host of url>:8080/metrics; else as given."""
    if arg == "none":
        return None
    if arg == "auto":
        return f"http://{httpx.URL(url).host}:8080/metrics"
    return arg


def preflight(args: argparse.Namespace) -> tuple[dict[str, Any], tuple[int, ...] | None]:
    """Reachability, model and sampler checks before any load: model metadata and class labels."""
    args.url = args.url.rstrip("/")
    if not args.url.startswith(("http://", "https://")):
        raise LoadTestError(f"--url must start with http:// or https://, got {args.url!r}")
    args.metrics_url = metrics_url(args.metrics_url, args.url)
    if args.num_samples < 1:
        raise LoadTestError(f"--num-samples must be >= 1, got {args.num_samples}")
    info = model_info(args.url, args.model)
    accepted = accepted_samplers(info)
    bad = [s for s in args.sampler if accepted is not None and s not in accepted]
    if bad:
        raise LoadTestError(
            f"model {args.model} does not accept sampler(s) {', '.join(bad)}; it accepts {', '.join(accepted or [])}"
        )
    return info, resolve_labels(args.class_label, num_classes(info))


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
    slo = costmodel.slo_table(result.cells, models, budgets)
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
        from loadtests.quality import primary_metric, quality_sweep

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
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except LoadTestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
