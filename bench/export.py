"""Per-evaluation latency: onnxruntime against torch eager, side by side in one process, on the CPU.

Method (docs/architecture.md, "Performance method"): both runtimes get the same inputs and the same
number of intra-op threads (1, as a serve replica with num_cpus < 2 runs, and in the full run also
every core of the machine); each repeat times a block of calls of A, then of B (interleaved A B A B, so
drift on a shared machine hits both alike); the figure is the median per-call time over repeats, and
the ratio torch / onnxruntime is taken of the medians. Weights do not change latency, so the nets come
from models/ where trained, else from a one-step checkpoint; exports go to a temporary copy.

    python -m bench --only export [--quick]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from bench.common import ROOT, scratch_checkpoint
from export.parity import random_inputs
from sampling.ort_session import cpu_session
from training.checkpoint import Checkpoint, load_checkpoint

MODELS = {"moons-fm": "moons MLP", "digits-fm": "digits DiT"}
BATCHES = (1, 16, 256)
SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BLOCK_SECONDS = 0.05  # time per timed block: long enough to swamp timer noise, short enough to interleave


def _calls_per_block(fn: Callable[[], Any]) -> int:
    start = time.perf_counter()
    for _ in range(3):
        fn()
    per_call = (time.perf_counter() - start) / 3
    return max(1, int(BLOCK_SECONDS / max(per_call, 1e-7)))


def _time_block(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def compare(ckpt: Checkpoint, batch: int, repeats: int, threads: int) -> dict[str, float]:
    """Median seconds per call of torch eager and onnxruntime at `batch`, interleaved."""
    torch.set_num_threads(threads)
    net = ckpt.net()
    session = cpu_session(ckpt.file("net-ema.onnx"), threads)
    x, t, y = random_inputs(ckpt, batch)

    def torch_call() -> torch.Tensor:
        with torch.inference_mode():
            return net(x, t, y)

    def ort_call() -> torch.Tensor:  # what OrtBackend.forward does: tensors in, tensor out
        feeds = {"x": x.numpy(), "t": t.numpy(), "y": y.numpy().astype(np.int64)}
        return torch.from_numpy(session.run(None, feeds)[0])

    n_torch, n_ort = _calls_per_block(torch_call), _calls_per_block(ort_call)
    times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for _ in range(repeats):
        times["torch"].append(_time_block(torch_call, n_torch))
        times["onnxruntime"].append(_time_block(ort_call, n_ort))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch": batch,
        "threads": threads,
        "torch_ms": med["torch"] * 1e3,
        "onnxruntime_ms": med["onnxruntime"] * 1e3,
        "speedup": med["torch"] / med["onnxruntime"],
        "repeats": repeats,
    }


def run(out_dir: Path, quick: bool) -> dict:
    """Latency tables for the moons MLP and the digits DiT; writes out_dir/export-latency.json."""
    cores = torch.get_num_threads()
    thread_counts = (1,) if quick or cores == 1 else (1, cores)
    repeats = 5 if quick else 15
    sweep = BATCHES if quick else SWEEP
    result: dict[str, Any] = {
        "what": "per-evaluation latency, torch eager vs onnxruntime (CPU), interleaved, median of repeats",
        "load_average_before": os.getloadavg(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "cpu": platform.processor() or platform.machine(),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        for name, label in MODELS.items():
            ckpt = load_checkpoint(scratch_checkpoint(name, Path(scratch), onnx=True))
            rows = [compare(ckpt, b, repeats, n) for n in thread_counts for b in sweep]
            catch_up = {
                n: next((r["batch"] for r in rows if r["threads"] == n and r["speedup"] <= 1.0), None)
                for n in thread_counts
            }
            result["models"][name] = {
                "net": label,
                "weights": "trained" if (ROOT / "models" / name).is_dir() else "20-step (latency only)",
                "rows": rows,
                "torch_catches_up_at_batch": catch_up,  # threads -> first batch with ratio <= 1 (None: never)
            }
    torch.set_num_threads(cores)
    result["load_average_after"] = os.getloadavg()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "export-latency.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict) -> str:
    """Markdown table of a `run` result."""
    lines = [
        "| net | threads | batch | torch eager ms | onnxruntime ms | torch / ort |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in result["models"].values():
        for r in m["rows"]:
            lines.append(
                f"| {m['net']} | {r['threads']} | {r['batch']} | {r['torch_ms']:.3f} | "
                f"{r['onnxruntime_ms']:.3f} | {r['speedup']:.2f}x |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--quick", action="store_true", help="batches 1, 16, 256 only, fewer repeats")
    args = p.parse_args()
    print(table(run(args.out, args.quick)))
