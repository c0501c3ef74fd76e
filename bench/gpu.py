"""Short GPU benchmark: per-evaluation latency of every GPU backend variant, side by side, JSON out.

Variants (each skipped with its reason where its runtime is missing): torch eager on CUDA, torch.compile,
CUDA graphs with batch buckets, compile + CUDA graphs, onnxruntime's CUDA provider, a TensorRT engine.
Every call goes through the serving backend (CPU tensors in, CPU tensors out, as served). Method: per
repeat, a timed block of each variant in turn (interleaved), median per-call time over repeats.

    python -m bench.gpu --out bench-results/gpu/gpu-bench.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import scratch_checkpoint
from export.parity import random_inputs
from export.tensorrt_build import BatchProfile, build_engine
from serving.backends import load_backend
from training.checkpoint import Checkpoint, load_checkpoint

MODELS = ("moons-fm", "digits-fm")
BATCHES = (1, 16, 256)
BLOCK_SECONDS = 0.05


def _variants(ckpt: Checkpoint, scratch: Path) -> dict[str, Callable[[], Any] | str]:
    """name -> backend, or the reason it is unavailable."""
    buckets = list(BATCHES)
    out: dict[str, Any] = {}
    specs = {
        "torch-eager": ("torch", {"device": "cuda"}),
        "torch-compile": ("torch", {"device": "cuda", "compile": True}),
        "torch-cudagraphs": ("torch", {"device": "cuda", "cuda_graphs": True, "buckets": buckets}),
        "torch-compile-cudagraphs": (
            "torch",
            {"device": "cuda", "compile": True, "cuda_graphs": True, "buckets": buckets},
        ),
        "onnxruntime-cuda": ("onnxruntime", {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}),
    }
    for name, (kind, options) in specs.items():
        try:
            out[name] = load_backend(kind, ckpt, **options)
        except Exception as e:  # one missing runtime must not cost the other measurements
            out[name] = f"{type(e).__name__}: {e}"
    if importlib.util.find_spec("tensorrt") is None:
        out["tensorrt"] = "tensorrt is not installed"
    else:
        try:
            build_engine(ckpt, "net-ema.onnx", BatchProfile(1, 16, max(BATCHES)), timing_cache=scratch / "tc")
            out["tensorrt"] = load_backend("tensorrt", load_checkpoint(ckpt.path))
        except Exception as e:
            out["tensorrt"] = f"{type(e).__name__}: {e}"
    return out


def _time(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def bench(ckpt: Checkpoint, variants: dict[str, Any], batch: int, repeats: int) -> dict[str, Any]:
    x, t, y = random_inputs(ckpt, batch)
    calls = {name: (lambda b=b: b(x, t, y)) for name, b in variants.items() if not isinstance(b, str)}
    ref = ckpt.net()(x, t, y)
    row: dict[str, Any] = {"batch": batch, "ms": {}, "max_abs_diff_vs_cpu": {}}
    per_block = {}
    for name, fn in calls.items():
        row["max_abs_diff_vs_cpu"][name] = float((fn() - ref).abs().max())
        start = time.perf_counter()
        for _ in range(3):
            fn()
        per_block[name] = max(1, int(BLOCK_SECONDS / max((time.perf_counter() - start) / 3, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            samples[name].append(_time(fn, per_block[name]))
    row["ms"] = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA GPU is visible; this benchmark needs one", file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "what": "per-evaluation latency in ms (CPU tensors in and out, as served), median of interleaved repeats",
        "models": {},
    }
    with tempfile.TemporaryDirectory() as scratch, torch.inference_mode():
        for name in MODELS:
            ckpt = load_checkpoint(scratch_checkpoint(name, Path(scratch), onnx=True))
            variants = _variants(ckpt, Path(scratch))
            result["models"][name] = {
                "unavailable": {k: v for k, v in variants.items() if isinstance(v, str)},
                "rows": [bench(ckpt, variants, b, args.repeats) for b in BATCHES],
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
