"""Serving benchmarks (issue "Measure"): JSON out, ratios measured side by side in one run.

1. ceiling: the torch backend's raw batched forward throughput for moons-fm in this process
   (rows/s at the best batch size), with the thread count a served replica gets (1 here).
2. saturation: served throughput (sum over finished requests of num_samples x nfe, per second, seen
   by the client; 64-sample fm-euler requests, K = 30 .. 70, 64 clients) of the step-level engine,
   / the ceiling (target >= 0.5).
3. one at a time: the same application with engine max_in_flight = 1, same load; step / single
   (target >= 5); and the same with 4-sample requests (supplementary).
4. mixed load: K = 5 and K = 100 requests together; p50 latency of the K = 5 ones, step-level engine
   against Ray Serve's request-level @serve.batch (`bench.baseline`); step / request (target <= 1/4).
5. overhead: p50 latency of a lone K = 10 fm-euler request over HTTP against the bare in-process
   sampling time of the same request (ms).

Every served variant runs as its own application on one local Ray, and their windows are interleaved
(A B A B ...) with medians taken, so a ratio never compares measurements from different moments.
Run: `python -m bench --only serving [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.baseline import build_request_batched_app
from bench.common import ROOT, deploy, load, local_serve, machine, p50_ms
from sampling.driver import sample
from sampling.request import SampleSpec
from serving.app import build_app
from serving.backends import load_backend
from training.checkpoint import load_checkpoint

MODEL = "moons-fm"
REPLICA = {"ray_actor_options": {"num_cpus": 1}}  # -> torch runs 1 thread in the replica
THREADS = 1
CEILING_BATCHES = (64, 256, 1024, 4096)
SAT_STEPS = (30, 40, 50, 60, 70)


def ceiling(ckpt_dir: Path, batch_sizes: tuple[int, ...], seconds: float) -> dict[str, Any]:
    """Rows per second of backend.forward at each batch size (median of 5 timed windows)."""
    backend = load_backend("torch", load_checkpoint(ckpt_dir), num_threads=THREADS)
    out: dict[int, float] = {}
    for b in batch_sizes:
        x, t, y = torch.randn(b, 2), torch.rand(b), torch.full((b,), 2, dtype=torch.long)
        backend(x, t, y)  # warm-up
        rates = []
        for _ in range(5):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 5:
                backend(x, t, y)
                n += 1
            rates.append(n * b / (time.perf_counter() - t0))
        out[b] = statistics.median(rates)
    best = max(out, key=out.get)
    return {"rows_per_s_by_batch": out, "best_batch": best, "rows_per_s": out[best], "threads": THREADS}


def bare_latency_ms(
    ckpt_dir: Path, steps: int, num_samples: int, repeats: int, gap_s: float = 0.0, backend_kind: str = "torch"
) -> float:
    """Median in-process time of one fm-euler request: initial noise, K net calls, no HTTP, no engine.
    gap_s: the thread sleeps this long between requests (untimed), as a served replica idles between the
    requests of one client while they travel the path. backend_kind: "torch" or "onnxruntime" (1 thread)."""
    ckpt = load_checkpoint(ckpt_dir)
    backend = load_backend(backend_kind, ckpt, num_threads=THREADS)
    times = []
    for seed in range(repeats):
        t0 = time.perf_counter()
        sample(ckpt, backend, SampleSpec("fm-euler", steps, num_samples, seed=seed))
        times.append(time.perf_counter() - t0)
        if gap_s and seed < repeats - 1:
            time.sleep(gap_s)
    return 1e3 * statistics.median(times)


def _deploy_variants(base: str, ckpt_dir: Path) -> dict[str, str]:
    """The step-level engine, one-at-a-time serving and request-level batching as three applications."""
    engine = {"max_rows_per_tick": 4096, "max_in_flight": 64, "max_queue": 1024}
    args = {
        "models": {MODEL: {"path": str(ckpt_dir)}},
        "limits": {"max_num_samples": 64},
        "deployment_options": {MODEL: REPLICA, "Ingress": {"ray_actor_options": {"num_cpus": 0.5}}},
    }
    return {
        "step": deploy(build_app({**args, "engine": engine}), "step", base),
        "single": deploy(build_app({**args, "engine": {**engine, "max_in_flight": 1}}), "single", base),
        "request": deploy(build_request_batched_app({**args, "engine": engine}), "request", base),
    }


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """All measurements; writes out_dir/serving.json and returns the same dict."""
    ckpt_dir = ROOT / "models" / MODEL
    window = 8.0 if quick else 15.0
    rounds = 2 if quick else 3
    result: dict[str, Any] = {"machine": machine(), "quick": quick, "model": MODEL}
    with local_serve() as base:
        urls = _deploy_variants(base, ckpt_dir)
        # Saturation: 64-sample requests; the ceiling, the step-level engine and one-at-a-time serving
        # measured in turn (A B C A B C ...), medians over rounds.
        # K varies between clients (30 .. 70, mean 50) so that their requests do not finish in lockstep
        # waves, which would quantise the count of requests finishing inside a window.
        sat_body = [{"model": MODEL, "sampler": "fm-euler", "steps": k, "num_samples": 64} for k in SAT_STEPS]
        load(urls["step"], sat_body, 8, 2.0)  # warm-up
        ceil, step_tp, single_tp = [], [], []
        for _ in range(rounds):
            ceil.append(ceiling(ckpt_dir, CEILING_BATCHES, seconds=window / 4))
            step_tp.append(load(urls["step"], sat_body, 64, 2 * window)["rows_per_s"])
            single_tp.append(load(urls["single"], sat_body, 64, 2 * window)["rows_per_s"])
        best = [c["rows_per_s"] for c in ceil]
        at_64 = [c["rows_per_s_by_batch"][64] for c in ceil]
        result["ceiling"] = {"rounds": ceil, "rows_per_s": statistics.median(best)}
        result["saturation"] = {
            "requests": sat_body,
            "concurrency": 64,
            "window_s": 2 * window,
            "step_rows_per_s": step_tp,
            "single_rows_per_s": single_tp,
            "served_over_ceiling": statistics.median(step_tp) / statistics.median(best),
            "step_over_single": statistics.median(step_tp) / statistics.median(single_tp),
            # One-at-a-time serving runs 64-row ticks: batching can gain at most the backend's rows/s at
            # its best batch over its rows/s at 64 rows (from the same ceiling runs).
            "step_over_single_upper_bound": statistics.median(b / a for b, a in zip(best, at_64, strict=True)),
        }

        # Small requests (4 samples): where step-level batching pays on a CPU, whose forward is already
        # efficient at 64 rows. Supplementary to the 64-sample comparison above.
        small = [{"model": MODEL, "sampler": "fm-euler", "steps": 20, "num_samples": 4}]
        step_small, single_small = [], []
        for _ in range(rounds):
            step_small.append(load(urls["step"], small, 64, window)["rows_per_s"])
            single_small.append(load(urls["single"], small, 64, window)["rows_per_s"])
        result["small_requests"] = {
            "request": small[0],
            "concurrency": 64,
            "step_rows_per_s": step_small,
            "single_rows_per_s": single_small,
            "step_over_single": statistics.median(step_small) / statistics.median(single_small),
        }

        # Mixed load: K = 5 and K = 100 requests together, step-level against request-level batching.
        mixed = [
            {"model": MODEL, "sampler": "fm-euler", "steps": 5, "num_samples": 64},
            {"model": MODEL, "sampler": "fm-euler", "steps": 100, "num_samples": 64},
        ]
        step_p50, req_p50 = [], []
        for _ in range(rounds):
            step_p50.append(p50_ms(load(urls["step"], mixed, 16, window)["records"], 5))
            req_p50.append(p50_ms(load(urls["request"], mixed, 16, window)["records"], 5))
        result["mixed"] = {
            "requests": mixed,
            "concurrency": 16,
            "k5_p50_ms_step": step_p50,
            "k5_p50_ms_request_batch": req_p50,
            "step_over_request": statistics.median(step_p50) / statistics.median(req_p50),
        }

        # Overhead of the service for a lone request, against the bare sampler in this process.
        lone = {"model": MODEL, "sampler": "fm-euler", "steps": 10, "num_samples": 64}
        served, bare = [], []
        for _ in range(rounds):
            served.append(p50_ms(load(urls["step"], [lone], 1, window / 2)["records"], 10))
            bare.append(bare_latency_ms(ckpt_dir, 10, 64, repeats=50))
        result["overhead"] = {
            "request": lone,
            "served_p50_ms": served,
            "bare_p50_ms": bare,
            "overhead_ms": statistics.median(served) - statistics.median(bare),
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serving", description="serving benchmarks")
    p.add_argument("--out", default="bench-results", help="directory for serving.json")
    p.add_argument("--quick", action="store_true", help="shorter windows, fewer rounds")
    args = p.parse_args(argv)
    res = run(Path(args.out), args.quick)
    summary = {
        "ceiling_rows_per_s": res["ceiling"]["rows_per_s"],
        "served_over_ceiling": res["saturation"]["served_over_ceiling"],
        "step_over_single": res["saturation"]["step_over_single"],
        "step_over_single_upper_bound": res["saturation"]["step_over_single_upper_bound"],
        "mixed_k5_p50_step_over_request": res["mixed"]["step_over_request"],
        "small_requests_step_over_single": res["small_requests"]["step_over_single"],
        "lone_k10_overhead_ms": res["overhead"]["overhead_ms"],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
