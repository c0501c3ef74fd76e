"""Goodput under deadlines: steps "auto" against a fixed K and against request-level batching, served.

    python -m bench.deadline [--out DIR] [--quick]

Two applications of moons-fm (its committed quality profile included): the product (step-level engine,
deadline scheduler) and the `@serve.batch` baseline (bench/baseline.py). `python -m loadtests deadline`
runs against each at 1x, 2x and 4x the service's capacity (measured with the fixed-K request, closed
loop): on the product an arm with `steps: "auto"` and an arm with the fixed K, both carrying the same
deadline; on the baseline the fixed-K arm only (the load tester runs an auto arm there too, but the
baseline's `steps: "auto"` goes through the product's engine, not request-level batching: its cells are
left out of deadline.json). The deadline is 4x the fixed-K request's latency alone, measured first.

Reported per arm and load: goodput (answers that met the deadline per second), deadline attainment and
the chosen K. Targets: auto >= 95 % attainment at 2x where fixed K falls below 50 %. Writes deadline.json
and the load tester's outputs under DIR/deadline-<app>/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.baseline import build_request_batched_app
from bench.common import ROOT, deploy, local_serve, machine
from loadtests import deadline as deadline_mode
from serving.app import build_app

MODEL = "moons-fm"
SAMPLER = "fm-euler"
FIXED_K = 50
NUM_SAMPLES = 64
LOADS = (1.0, 2.0, 4.0)


def _args(ckpt: Path) -> dict[str, Any]:
    return {
        "models": {MODEL: {"path": str(ckpt)}},
        "limits": {"max_num_samples": 256},
        "engine": {"max_wait_s": 30.0, "max_queue": 1024},
        "deployment_options": {
            MODEL: {"ray_actor_options": {"num_cpus": 1}},
            "Ingress": {"ray_actor_options": {"num_cpus": 0.5}},
        },
    }


def _alone_ms(url: str, repeats: int = 7) -> float:
    body = {"model": MODEL, "sampler": SAMPLER, "steps": FIXED_K, "num_samples": NUM_SAMPLES}
    times = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(repeats):
            t0 = time.perf_counter()
            c.post("/v1/samples", json={**body, "seed": i}).raise_for_status()
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[1:])


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    duration = 6.0 if quick else 12.0
    result: dict[str, Any] = {"machine": machine(), "quick": quick, "model": MODEL, "fixed_steps": FIXED_K}
    with local_serve() as base:
        ckpt = ROOT / "models" / MODEL
        urls = {
            "product": deploy(build_app(_args(ckpt)), "product", base),
            "baseline": deploy(build_request_batched_app(_args(ckpt)), "baseline", base),
        }
        deadline_ms = round(4 * _alone_ms(urls["product"]))
        result["deadline_ms"] = deadline_ms
        for app, url in urls.items():
            out = out_dir / f"deadline-{app}"
            argv = [
                *("--url", url, "--model", MODEL, "--sampler", SAMPLER),
                *("--num-samples", str(NUM_SAMPLES), "--deadline-ms", str(deadline_ms)),
                *("--load", ",".join(str(x) for x in LOADS), "--duration", str(duration)),
                *("--fixed-steps", str(FIXED_K), "--out", str(out), "--no-progress"),
            ]
            if deadline_mode.main(argv) != 0:
                raise RuntimeError(f"loadtests deadline failed against {app}")
            cells = json.loads((out / "results.json").read_text())["cells"]
            result[app] = [
                {
                    k: c.get(k)
                    for k in ("arm", "load_multiple", "offered_rps", "goodput_rps", "attainment", "attainment_client")
                }
                | {"k_histogram": c.get("k_histogram"), "quality_mean": (c.get("quality") or {}).get("mean")}
                for c in cells
                if app == "product" or c.get("arm") == "fixed"
            ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "deadline.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.deadline", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-results")
    p.add_argument("--quick", action="store_true", help="shorter cells")
    args = p.parse_args(argv)
    run(Path(args.out), args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
