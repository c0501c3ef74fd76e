"""Routing across replicas: Serve's default router against the project's work-aware one, side by side.

    python -m bench.routing [--out DIR] [--quick] [--rate R] [--rounds N]

Two applications of the same moons-fm checkpoint, each with two model replicas, identical but for the model
deployment's `request_router_config` ("default": Serve's power of two choices on queue length; "work":
`serving.router.WorkAwareRouter`). The same seeded open-loop workload goes to each, in alternation over rounds
(A B A B ...): Poisson arrivals at RATE (--rate) per second, each request drawn from K in {5, 10, 20, 50, 100} and
num_samples in {1, 4, 16, 64, 256}, 20 % guided (w = 2), 20 % with a deadline of DEADLINE_FACTOR x the
request's time alone on an idle replica (from a short calibration on this machine) plus the path's 95th
percentile on the idle application: a deadline the idle service meets, so that a miss is time spent waiting
behind other work (what routing changes) rather than the HTTP path's jitter (with the path's median, half of
the small requests missed by the path alone).

Reported per router (medians over rounds, with the per-round values): p50 and p99 of the short requests
(rows x evaluations at most SHORT_WORK), deadline attainment (answered 200 within the deadline, of the
deadline requests), throughput (200s per second and net rows per second), and the work-aware router's
ratio to the default one's within each round. Writes routing.json.

On this 2-core machine every replica, the Ingress, Serve's proxy and the load generator share two cores: a
replica with a long backlog is slower partly because it takes CPU from the other, which no routing changes,
so the gap between the routers here understates what separate cores would show. This benchmark does not
estimate that by simulation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import ROOT, deploy, local_serve, machine
from serving.app import build_app

MODEL = "moons-fm"
RATE = 12.0
KS = (5, 10, 20, 50, 100)
SIZES = (1, 4, 16, 64, 256)
SHORT_WORK = 5 * 64
DEADLINE_FACTOR = 3.0
ROUTERS = {
    "default": None,
    "work": {"request_router_class": "serving.router:WorkAwareRouter", "request_routing_stats_period_s": 0.5},
}


def workload(n: int, seed: int, alone_ms: dict[tuple[int, int, bool], float], path_p95_ms: float) -> list[dict]:
    """`n` request bodies drawn from the mix (seeded); deadline requests carry deadline_ms."""
    rng = np.random.default_rng(seed)
    bodies = []
    for i in range(n):
        k, size = int(rng.choice(KS)), int(rng.choice(SIZES))
        guided = bool(rng.random() < 0.2)
        body: dict[str, Any] = {"model": MODEL, "sampler": "fm-euler", "steps": k, "num_samples": size, "seed": i}
        if guided:
            body.update(guidance=2.0, class_label=int(rng.integers(2)))
        if rng.random() < 0.2:
            body["deadline_ms"] = int(DEADLINE_FACTOR * alone_ms[(k, size, guided)] + path_p95_ms)
        bodies.append(body)
    return bodies


async def _fire(url: str, bodies: list[dict], arrivals: np.ndarray) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        t0 = time.perf_counter()

        async def one(body: dict, at: float) -> None:
            start = time.perf_counter()
            try:
                r = await c.post("/v1/samples", json=body)
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            latency = time.perf_counter() - start
            rows = body["num_samples"] * (2 if "guidance" in body else 1)
            out.append({"status": status, "latency_s": latency, "work": rows * body["steps"], "body": body})

        tasks = []
        for body, at in zip(bodies, arrivals, strict=True):
            delay = at - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body, float(at))))
        await asyncio.gather(*tasks)
    return out


def summarize(records: list[dict[str, Any]], span_s: float) -> dict[str, Any]:
    ok = [r for r in records if r["status"] == 200]
    short = sorted(r["latency_s"] for r in ok if r["work"] <= SHORT_WORK)
    due = [r for r in records if "deadline_ms" in r["body"]]
    met = [r for r in due if r["status"] == 200 and r["latency_s"] * 1e3 <= r["body"]["deadline_ms"]]
    met_ids = {id(r) for r in met}
    late = [r for r in due if id(r) not in met_ids and r["status"] == 200]  # answered, after the deadline
    return {
        "short_p50_ms": 1e3 * short[len(short) // 2] if short else None,
        "short_p99_ms": 1e3 * short[min(len(short) - 1, int(0.99 * len(short)))] if short else None,
        "attainment": len(met) / len(due) if due else None,
        # where the misses are: attainment of the deadline requests of each size, and how late the misses were
        "attainment_by_samples": {
            str(n): sum(id(r) in met_ids for r in sized) / len(sized)
            for n in SIZES
            if (sized := [r for r in due if r["body"]["num_samples"] == n])
        },
        "missed_late_ms_p50": statistics.median(
            [r["latency_s"] * 1e3 - r["body"]["deadline_ms"] for r in late] or [float("nan")]
        ),
        "ok_per_s": len(ok) / span_s,
        "rows_per_s": sum(r["work"] for r in ok) / span_s,
        "statuses": {str(s): sum(r["status"] == s for r in records) for s in sorted({r["status"] for r in records})},
        "requests": len(records),
    }


def calibrate(url: str) -> tuple[dict[tuple[int, int, bool], float], list[float]]:
    """Each (K, size, guided) alone on the idle application: its server-side time (ms), and the path's times
    (round trip less the server's time, ms) over all of them."""
    alone, path = {}, []
    with httpx.Client(base_url=url, timeout=120) as c:
        for k in KS:
            for size in SIZES:
                for guided in (False, True):
                    body = {"model": MODEL, "sampler": "fm-euler", "steps": k, "num_samples": size}
                    if guided:
                        body.update(guidance=2.0, class_label=0)
                    times = []
                    for _ in range(2):
                        t0 = time.perf_counter()
                        r = c.post("/v1/samples", json=body)
                        r.raise_for_status()
                        rtt = 1e3 * (time.perf_counter() - t0)
                        timing = r.json()["timing"]
                        server = timing["queue_ms"] + timing["compute_ms"]
                        times.append(server)
                        path.append(rtt - server)
                    alone[(k, size, guided)] = min(times)
    return alone, path


def run(out_dir: Path, quick: bool = False, rate: float = RATE, rounds: int | None = None) -> dict[str, Any]:
    window = 20.0 if quick else 40.0
    rounds = rounds or (2 if quick else 3)
    result: dict[str, Any] = {"machine": machine(), "quick": quick, "rate": rate, "window_s": window}
    ckpt = ROOT / "models" / MODEL
    engine = {"max_rows_per_tick": 4096, "max_in_flight": 64, "max_queue": 192, "max_wait_s": 5.0}
    with local_serve() as base:
        urls = {}
        for name, router in ROUTERS.items():
            options: dict[str, Any] = {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}
            if router:
                options["request_router_config"] = router
            args = {
                "models": {MODEL: {"path": str(ckpt)}},
                "limits": {"max_num_samples": 256},
                "engine": engine,
                "deployment_options": {MODEL: options, "Ingress": {"ray_actor_options": {"num_cpus": 0.25}}},
            }
            urls[name] = deploy(build_app(args), name, base)
        # every application takes the calibration set once (its replicas' first requests warm them up, so the
        # first round is not the only one to pay for that); the default one's figures set the workload
        alone, path = calibrate(urls["default"])
        for name in urls:
            if name != "default":
                calibrate(urls[name])
        path_ms, path_p95_ms = statistics.median(path), float(np.percentile(path, 95))
        named = {f"{k}x{s}{'g' if g else ''}": v for (k, s, g), v in alone.items()}
        result["calibration"] = {"path_ms": path_ms, "path_p95_ms": path_p95_ms, "alone_ms": named}
        n = int(rate * window)
        cells: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
        for r in range(rounds):
            bodies = workload(n, seed=r, alone_ms=alone, path_p95_ms=path_p95_ms)
            arrivals = np.sort(np.random.default_rng(1000 + r).uniform(0, window, n))
            for name, url in urls.items():
                print(f"round {r + 1}/{rounds}: {name}", flush=True)
                records = asyncio.run(_fire(url, bodies, arrivals))
                cells[name].append(summarize(records, window))
                time.sleep(2.0)  # let both replicas drain before the other router's turn
    result["cells"] = cells
    ratios = {}
    for key in ("short_p50_ms", "short_p99_ms", "attainment", "ok_per_s", "rows_per_s"):
        per_round = [
            w[key] / d[key] if w[key] is not None and d[key] else None
            for w, d in zip(cells["work"], cells["default"], strict=True)
        ]
        known = [p for p in per_round if p is not None] or [float("nan")]
        ratios[key] = {"median": statistics.median(known), "per_round": per_round}
    result["work_over_default"] = ratios
    result["summary"] = {
        name: {
            key: statistics.median([c[key] for c in values if c[key] is not None] or [float("nan")])
            for key in ("short_p50_ms", "short_p99_ms", "attainment", "ok_per_s", "rows_per_s")
        }
        for name, values in cells.items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "routing.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"summary": result["summary"], "work_over_default": ratios}, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-results", help="output directory (default bench-results)")
    p.add_argument("--quick", action="store_true", help="shorter windows and fewer rounds")
    p.add_argument("--rate", type=float, default=RATE, help=f"requests per second (default {RATE})")
    p.add_argument("--rounds", type=int, help="rounds, each router once a round (default 3; --quick 2)")
    args = p.parse_args(argv)
    if args.rate <= 0 or (args.rounds is not None and args.rounds < 1):
        p.error("--rate must be > 0 and --rounds >= 1")
    run(Path(args.out), quick=args.quick, rate=args.rate, rounds=args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
