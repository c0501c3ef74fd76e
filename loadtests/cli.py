"""Command-line pieces shared by `python -m loadtests` and its `autoscale` command: the one-line-error
parser, argument types, the service arguments and the pre-flight check against GET /v1/models."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import httpx

from loadtests.client import LoadTestError, accepted_samplers, model_info, num_classes


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one `error: ...` line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def run_cli(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], argv: list[str]) -> int:
    """Parse `argv` and run; a LoadTestError becomes one `error: ...` line and exit status 2."""
    args = parser.parse_args(argv)
    try:
        return run(args)
    except LoadTestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


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
    bad = [s for s in args.sampler if s not in accepted]
    if bad:
        raise LoadTestError(
            f"model {args.model} does not accept sampler(s) {', '.join(bad)}; it accepts {', '.join(accepted)}"
        )
    return info, resolve_labels(args.class_label, num_classes(info))
