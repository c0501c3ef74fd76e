"""Served throughput of one model with the onnxruntime backend against the torch backend, same load.

Both backends serve moons-fm as two applications on one local Ray, each replica with 1 CPU and 1
intra-op thread; a closed loop of 64 clients sends the same fm-euler requests (K = 100, 64 samples) to
each in turn, windows interleaved A B A B with medians. Throughput counts net rows: sum over finished
requests of num_samples x nfe, per second. Beside it, each backend's raw batched forward throughput in
this process (the ceiling the served figure is held against).

The ONNX file is made by running `python -m export` on a scratch copy of the checkpoint (serving does
not import export, and models/ is left as committed).

    python -m bench --only backends [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import deploy, load, local_serve, machine, scratch_checkpoint
from serving.app import build_app
from serving.backends import load_backend
from training.checkpoint import load_checkpoint

MODEL = "moons-fm"
BACKENDS = ("torch", "onnxruntime")
REQUEST = {"model": MODEL, "sampler": "fm-euler", "steps": 100, "num_samples": 64}
CONCURRENCY = 64


def forward_rate(net: Any, batch: int = 4096, seconds: float = 2.0) -> float:
    """Rows per second of net.forward at `batch` (a full engine tick of the load below)."""
    x, t, y = torch.randn(batch, 2), torch.rand(batch), torch.full((batch,), 2, dtype=torch.long)
    net(x, t, y)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        net(x, t, y)
        n += 1
    return n * batch / (time.perf_counter() - t0)


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Writes out_dir/served-backends.json and returns the same dict."""
    window, rounds = (6.0, 2) if quick else (15.0, 3)
    result: dict[str, Any] = {
        "machine": machine(),
        "model": MODEL,
        "request": REQUEST,
        "concurrency": CONCURRENCY,
        "window_s": window,
    }
    with tempfile.TemporaryDirectory() as scratch:
        ckpt_dir = scratch_checkpoint(MODEL, Path(scratch), onnx=True)
        # In-process forwards at 1 thread, measured inside each round beside the served windows, so that
        # served / ceiling compares figures from the same moments of a shared machine.
        nets = {b: load_backend(b, load_checkpoint(ckpt_dir), num_threads=1) for b in BACKENDS}
        with local_serve() as base:
            urls = {}
            for b in BACKENDS:
                args = {
                    "models": {MODEL: {"path": str(ckpt_dir), "backend": b, "backend_options": {"num_threads": 1}}},
                    "limits": {"max_num_samples": 64},
                    "engine": {"max_rows_per_tick": 4096, "max_in_flight": 64, "max_queue": 1024},
                    "deployment_options": {
                        MODEL: {"ray_actor_options": {"num_cpus": 1}},
                        "Ingress": {"ray_actor_options": {"num_cpus": 0.5}},
                    },
                }
                urls[b] = deploy(build_app(args), b, base)
            for b in BACKENDS:
                load(urls[b], [REQUEST], CONCURRENCY, 2.0)  # warm-up
            served: dict[str, list[float]] = {b: [] for b in BACKENDS}
            ceiling: dict[str, list[float]] = {b: [] for b in BACKENDS}
            for _ in range(rounds):  # A B A B ...
                for b in BACKENDS:
                    ceiling[b].append(forward_rate(nets[b]))
                    served[b].append(load(urls[b], [REQUEST], CONCURRENCY, window)["rows_per_s"])
    med = {b: statistics.median(v) for b, v in served.items()}
    result["forward_rows_per_s_at_4096"] = ceiling
    result["served_rows_per_s"] = served
    result["served_median_rows_per_s"] = med
    result["onnxruntime_over_torch"] = med["onnxruntime"] / med["torch"]
    result["forward_onnxruntime_over_torch"] = statistics.median(ceiling["onnxruntime"]) / statistics.median(
        ceiling["torch"]
    )
    result["served_over_forward_ceiling"] = {b: med[b] / statistics.median(ceiling[b]) for b in BACKENDS}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "served-backends.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--quick", action="store_true", help="shorter windows, fewer rounds")
    args = p.parse_args(argv)
    print(json.dumps(run(args.out, args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
