"""Short requests amid long ones: the deadline scheduler against the FIFO engine, served side by side.

    python -m bench.scheduling [--out DIR] [--quick] [--pin]

Applications of the same moons-fm checkpoint, identical but for the engine's policy ("fifo": every
request every tick, as the engine ran before; "deadline": EDF, then least work first, under a per-tick row
budget, with its default throughput guard `efficiency` 0.9 and with 0.75). For each, in alternation
(A B C A B C ...) over rounds:

- alone: a K = 5, 64-sample fm-euler request from one closed-loop client, nothing else running (p50);
- mixed: the same K = 5 client while six closed-loop clients send K = 100, 256-sample requests (p50 of
  the K = 5 ones, and the net rows per second of everything answered);
- saturated: 64 closed-loop clients of 64-sample requests, K = 30 .. 70 (net rows per second).

Reported: K = 5 p50 under load over its p50 alone for each policy (target <= 1.5 for "deadline"), the same
for its time inside the replica's engine alone (queue + compute, from the response's timing: the rest is
the HTTP path, which on a small machine shares its cores with the busy replica), and each policy's
throughput over FIFO's (target >= 0.9). Each ratio is taken within a round and the median over rounds
reported, with the per-round values (`*_per_round`). Writes scheduling.json.

Then the mixed cell once more in this process (`in_process`: `ModelReplica`s of FIFO, the deadline policy
without its express lane and with it; no HTTP), whose closed loops offer the engine the same work whichever
policy answers the K = 5 client faster: served, a faster K = 5 answer means more K = 5 requests, whose
HTTP path takes CPU on a small machine.

`--pin` (Linux, 2+ CPUs) gives the model replicas the last CPU to themselves and puts everything else on the
others (`bench.common.pinned_replicas`), after the warm-up: the load generator and Serve's path then stop
taking CPU from the replica, as on a cluster whose replicas have nodes of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, deploy, local_serve, machine, pinned_replicas, spec
from loadtests.runner import closed_loop, make_client
from sampling.request import SampleSpec
from serving.app import build_app
from serving.replica import ModelReplica

MODEL = "moons-fm"
SHORT = {"model": MODEL, "sampler": "fm-euler", "steps": 5, "num_samples": 64}
LONG = {"model": MODEL, "sampler": "fm-euler", "steps": 100, "num_samples": 256}
SAT = [{"model": MODEL, "sampler": "fm-euler", "steps": k, "num_samples": 64} for k in (30, 40, 50, 60, 70)]
REPLICA = {"ray_actor_options": {"num_cpus": 1}}
# The engine's policies compared: FIFO, the deadline scheduler with its defaults, and the same with a looser
# throughput guard (efficiency 0.75: short requests keep their small ticks longer under a steady stream).
POLICIES = {
    "fifo": {"scheduling": "fifo"},
    "deadline": {"scheduling": "deadline"},
    "deadline-e075": {"scheduling": "deadline", "efficiency": 0.75},
}


def _apps(base: str, ckpt: Path) -> dict[str, str]:
    args = {
        "models": {MODEL: {"path": str(ckpt)}},
        "limits": {"max_num_samples": 256},
        "deployment_options": {MODEL: REPLICA, "Ingress": {"ray_actor_options": {"num_cpus": 0.5}}},
    }
    engine = {"max_rows_per_tick": 4096, "max_in_flight": 64, "max_queue": 1024, "max_wait_s": 300.0}
    return {
        name: deploy(build_app({**args, "engine": {**engine, **knobs}}), name, base) for name, knobs in POLICIES.items()
    }


def _run(url: str, groups: list[tuple[dict[str, Any], int]], seconds: float) -> dict[str, Any]:
    """Closed loops of (body, clients) together for `seconds` after a quarter of that as warm-up: the K = 5
    p50 (ms) when present and the net rows per second of every answered request."""
    warm = seconds / 4

    async def main():
        async with make_client(url, timeout=300) as client:
            parts = await asyncio.gather(
                *(closed_loop(client, spec(b), n, seconds, warm, 1_000_000 * i) for i, (b, n) in enumerate(groups))
            )
        return [r for part in parts for r in part if not r.warmup]

    records = asyncio.run(main())
    ok = [r for r in records if r.ok]
    span = max((r.end for r in records), default=warm + seconds) - warm
    short = [r for r in ok if r.steps == SHORT["steps"]]
    engine = [r.server_queue_s + r.server_compute_s for r in short if r.server_compute_s is not None]
    return {
        "k5_p50_ms": 1e3 * statistics.median(r.latency for r in short) if short else None,
        # the part of it inside the replica's engine (queue + compute), the rest being the path around it
        "k5_engine_p50_ms": 1e3 * statistics.median(engine) if engine else None,
        "rows_per_s": sum(r.num_samples * (r.nfe or 0) for r in ok) / span,
        "answered": len(ok),
        "failed": len(records) - len(ok),
    }


# The engine alone, in this process (no HTTP): FIFO, the deadline policy without its express lane, and with it.
IN_PROCESS = {
    "fifo": {"scheduling": "fifo"},
    "deadline-no-lane": {"express_lane": False},
    "deadline": {},
}


def in_process(rounds: int, window: float, gap_s: float = 0.02) -> dict[str, Any]:
    """The mixed cell on `ModelReplica`s in this process (torch, 1 thread, as a served replica of 1 CPU), one
    per variant of IN_PROCESS, windows alternating: the K = 5 client waits `gap_s` between its requests (about
    the served path's time) beside six closed loops of the K = 100 request. Per window: the K = 5 engine p50
    (ms) and the net rows per second of every tick (the engine's `on_tick`). Without the HTTP path, the
    closed loops offer the engine the same work whichever policy answers the K = 5 client faster."""
    short = SampleSpec("fm-euler", SHORT["steps"], SHORT["num_samples"])
    long = SampleSpec("fm-euler", LONG["steps"], LONG["num_samples"])

    async def window_of(replica: ModelReplica, seconds: float) -> dict[str, float]:
        stop = time.perf_counter() + seconds
        rows, k5 = [0], []
        on_tick = replica.engine.on_tick

        def count(n: int, requests: int) -> None:
            rows[0] += n
            if on_tick is not None:
                on_tick(n, requests)

        async def short_client() -> None:
            seed = 0
            while time.perf_counter() < stop:
                out = await replica.sample(dataclasses.replace(short, seed=seed))
                k5.append(out.queue_s + out.compute_s)
                seed += 1
                await asyncio.sleep(gap_s)

        async def long_client(i: int) -> None:
            seed = 1_000_000 * (i + 1)
            while time.perf_counter() < stop:
                await replica.sample(dataclasses.replace(long, seed=seed))
                seed += 1

        replica.engine.on_tick = count
        start = time.perf_counter()
        try:
            await asyncio.gather(short_client(), *(long_client(i) for i in range(6)))
        finally:
            replica.engine.on_tick = on_tick
        return {"k5_engine_p50_ms": 1e3 * statistics.median(k5), "rows_per_s": rows[0] / (time.perf_counter() - start)}

    async def main() -> dict[str, list[dict[str, float]]]:
        engine = {"max_rows_per_tick": 4096, "max_in_flight": 64, "max_queue": 1024, "max_wait_s": 300.0}
        replicas = {
            name: ModelReplica(
                MODEL, str(ROOT / "models" / MODEL), backend_options={"num_threads": 1}, engine={**engine, **knobs}
            )
            for name, knobs in IN_PROCESS.items()
        }
        for replica in replicas.values():
            await window_of(replica, 1.0)  # warm-up
        cells: dict[str, list[dict[str, float]]] = {name: [] for name in replicas}
        for r in range(rounds):
            for name, replica in replicas.items():
                print(f"in process, round {r + 1}/{rounds}: {name}", flush=True)
                cells[name].append(await window_of(replica, window))
        for replica in replicas.values():
            await replica.engine.close()
        return cells

    cells = asyncio.run(main())
    summary = {}
    for name, values in cells.items():
        over = [v["rows_per_s"] / f["rows_per_s"] for v, f in zip(values, cells["fifo"], strict=True)]
        summary[name] = {
            "k5_engine_p50_ms": statistics.median(v["k5_engine_p50_ms"] for v in values),
            "rows_per_s_over_fifo": statistics.median(over),
            "rows_per_s_over_fifo_per_round": over,
        }
    return {"gap_s": gap_s, "window_s": window, "cells": cells, "summary": summary}


def run(out_dir: Path, quick: bool = False, pin: bool = False) -> dict[str, Any]:
    window = 8.0 if quick else 15.0
    rounds = 2 if quick else 3
    result: dict[str, Any] = {"machine": machine(), "quick": quick, "model": MODEL, "window_s": window}
    cells: dict[str, dict[str, list]] = {p: {"alone": [], "mixed": [], "saturated": []} for p in POLICIES}
    with local_serve() as base:
        urls = _apps(base, ROOT / "models" / MODEL)
        for url in urls.values():
            _run(url, [(SHORT, 1), (LONG, 2)], 2.0)  # warm-up
        placement = pinned_replicas(MODEL) if pin else contextlib.nullcontext("shared: every process on every CPU")
        with placement as where:
            result["placement"] = where
            for r in range(rounds):
                for policy, url in urls.items():
                    print(f"round {r + 1}/{rounds}: {policy}", flush=True)
                    cells[policy]["alone"].append(_run(url, [(SHORT, 1)], window / 2))
                    cells[policy]["mixed"].append(_run(url, [(SHORT, 1), (LONG, 6)], window))
                    cells[policy]["saturated"].append(_run(url, [(b, 64 // len(SAT)) for b in SAT], window))

    def per_round(policy: str, cell: str, key: str, base: str | None = None, base_cell: str | None = None) -> list:
        """Each round's value, over the same round's value of `base` (a policy) or `base_cell` (a cell)."""
        mine = [c[key] for c in cells[policy][cell]]
        if base is None and base_cell is None:
            return mine
        ref = [c[key] for c in cells[base or policy][base_cell or cell]]
        return [a / b if a is not None and b else None for a, b in zip(mine, ref, strict=True)]

    def med(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    result["cells"] = cells
    summary: dict[str, dict[str, Any]] = {}
    for policy in POLICIES:
        ratios = {  # each taken within one round (its windows minutes apart at most), then the median over rounds
            "k5_slowdown": per_round(policy, "mixed", "k5_p50_ms", base_cell="alone"),
            "k5_engine_slowdown": per_round(policy, "mixed", "k5_engine_p50_ms", base_cell="alone"),
            "mixed_rows_per_s_over_fifo": per_round(policy, "mixed", "rows_per_s", base="fifo"),
            "saturated_rows_per_s_over_fifo": per_round(policy, "saturated", "rows_per_s", base="fifo"),
        }
        summary[policy] = {
            "k5_alone_p50_ms": med(per_round(policy, "alone", "k5_p50_ms")),
            "k5_mixed_p50_ms": med(per_round(policy, "mixed", "k5_p50_ms")),
            "k5_engine_alone_p50_ms": med(per_round(policy, "alone", "k5_engine_p50_ms")),
            "k5_engine_mixed_p50_ms": med(per_round(policy, "mixed", "k5_engine_p50_ms")),
            **{k: med(v) for k, v in ratios.items()},
            **{f"{k}_per_round": v for k, v in ratios.items()},
        }
    result["summary"] = summary
    result["in_process"] = in_process(rounds, window / 3)
    summary["in_process"] = result["in_process"]["summary"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scheduling.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scheduling", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-results")
    p.add_argument("--quick", action="store_true", help="shorter windows, two rounds")
    p.add_argument(
        "--pin",
        action="store_true",
        help="the model replicas on the last CPU alone, everything else (Ray, Serve's proxy, the ingress, this "
        "load generator) on the others, as on a cluster whose replicas have nodes of their own (Linux)",
    )
    args = p.parse_args(argv)
    run(Path(args.out), args.quick, args.pin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
