"""`make bench`: run every benchmark section and write JSON into --out (default bench-results/).

    python -m bench [--out DIR] [--quick] [--only quality,export,serving,backends]

Sections: quality (bench.foundation: quality against K, sampler overhead, training speed), export
(bench.export: onnxruntime against torch per evaluation), serving (bench.serving: served throughput, step-
level against request-level batching, lone-request overhead), backends (bench.backends: served throughput with
onnxruntime against torch), reliability (bench.reliability: goodput and latency at 1x, 2x and 3x capacity),
scheduling (bench.scheduling: short requests amid long ones, the deadline scheduler against FIFO), deadline
(bench.deadline: goodput of steps "auto" against fixed K and request-level batching at 1x, 2x and 4x
capacity), streaming (bench.streaming: a streamed K = 50 request against the same unstreamed, and the
playground's click-to-drawn-samples time in headless Chromium), path (bench.path: the request path's fixed
cost against no-op Serve applications, behind Serve's proxy and behind HAProxy), door (bench.door: a 15x burst
on the shipped application, shedding at the door on and off, behind Serve's proxy and HAProxy), routing
(bench.routing: Serve's default router against the work-aware one on two replicas, a mixed workload),
routing_sim (bench.routing_sim: the same routers by simulation, a core per replica, 2 to 8 replicas),
autoscale (bench.autoscale: a step from idle to 3x one replica's capacity, Serve's default autoscaling policy
against the project's), latent (bench.latent: a latent model's decode stage, batched against one request at a
time, and its share of a request's latency), latent_vs_pixel (bench.latent_vs_pixel: a latent DiT against a
pixel-space DiT of the same recipe, quality against training time and sampling time per image; ~25 min). Each
writes its own JSON file; `summary.json` lists what ran and
how long it took. On a GPU machine, `python -m bench.gpu` (run by scripts/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

SECTIONS = {
    "quality": "bench.foundation",
    "export": "bench.export",
    "serving": "bench.serving",
    "backends": "bench.backends",
    "reliability": "bench.reliability",
    "scheduling": "bench.scheduling",
    "deadline": "bench.deadline",
    "streaming": "bench.streaming",
    "path": "bench.path",
    "door": "bench.door",
    "routing": "bench.routing",
    "routing_sim": "bench.routing_sim",
    "autoscale": "bench.autoscale",
    "latent": "bench.latent",
    "latent_vs_pixel": "bench.latent_vs_pixel",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="Run stepserve's benchmarks; JSON into --out.")
    p.add_argument("--out", default="bench-results", help="output directory (default bench-results)")
    p.add_argument("--quick", action="store_true", help="smaller grids and fewer repeats")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {list(SECTIONS)}")
    args = p.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        print(f"error: unknown section(s) {unknown}; expected some of {list(SECTIONS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in wanted:
        print(f"== {name} ==", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(SECTIONS[name]).run(out, quick=args.quick)
        summary[name] = {"seconds": round(time.perf_counter() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"results in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
