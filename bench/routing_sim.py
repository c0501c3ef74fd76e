"""Routing across replicas with a core each, by simulation: what this 2-core machine cannot run.

    python -m bench.routing_sim [--out DIR] [--quick]

Each simulated replica is the engine's own policy on its own core: requests are admitted and refused by
`serving.policy.admission` (the engine's predict / refusal), queued and ticked by `serving.policy.tick_plan`
(`order`, `plan_tick`, `Efficiency`: the deadline scheduler, without the express lane), and a tick of R rows
takes the tick model's time for R rows, the model's line measured here for the moons-fm net on one thread
(so the predictions are as right as the model: the simulation measures routing, not the latency model's
error). Nothing else shares a core; the HTTP path costs nothing.

Two routers send the same seeded Poisson stream of the bench.routing mix (K in {5, 10, 20, 50, 100},
num_samples in {1, 4, 16, 64, 256}, 20 % guided, 20 % with a deadline of DEADLINE_FACTOR x its time alone):
"queue" is Serve's default (two replicas drawn at random, the one with fewer requests in flight and queued,
known exactly), "work" is `serving.policy.routing.rank` over a `Board` fed as the router's is: a replica's
snapshot comes back with each of its answers and every STATS_PERIOD_S as routing stats, with the requests
routed there since (ties within a rank go to the shorter queue). Offered load is set as a utilization: the
arrival rate whose work, at the throughput of full ticks, is that share of the replicas' capacity.

Reported per (replicas, utilization, router): short-request (rows x evaluations <= SHORT_WORK) p50 / p99,
deadline attainment, refused share, and the work router's ratios to the queue router's. Writes
routing_sim.json.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import ROOT, machine
from serving.policy import routing
from serving.policy.admission import alone_s, predict, refusal, snapshot
from serving.policy.limits import EngineLimits
from serving.policy.state import Load, RequestState
from serving.policy.tick_model import TickModel
from serving.policy.tick_plan import Efficiency, order, plan_tick

KS = (5, 10, 20, 50, 100)
SIZES = (1, 4, 16, 64, 256)
SHORT_WORK = 5 * 64
DEADLINE_FACTOR = 3.0
STATS_PERIOD_S = 0.5
PROFILE_ROWS = (1, 4096)  # the line through these two: a least-squares fit over more sizes is all large rows


def measured_model(threads: int = 1) -> TickModel:
    """The moons-fm net's time at PROFILE_ROWS rows on `threads` threads (medians of 30), as a TickModel: its fixed
    cost is the 1-row call's, which a fit dominated by large ticks would put near 0."""
    from training.checkpoint import load_checkpoint

    net = load_checkpoint(ROOT / "models" / "moons-fm").net("ema")
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    profile = []
    try:
        with torch.inference_mode():
            for rows in PROFILE_ROWS:
                x, t, y = torch.randn(rows, 2), torch.rand(rows), torch.zeros(rows, dtype=torch.long)
                times = []
                for _ in range(30):
                    t0 = time.perf_counter()
                    net(x, t, y)
                    times.append(time.perf_counter() - t0)
                profile.append((rows, float(np.median(times))))
    finally:
        torch.set_num_threads(saved)
    return TickModel(profile, inline_s=0.0)


@dataclass
class Job:
    state: RequestState  # its deadline is the due time on the simulation's clock; its size rows x evaluations
    arrival: float


@dataclass
class Replica:
    name: str
    active: list[Job] = field(default_factory=list)
    queue: list[Job] = field(default_factory=list)
    plan: list[tuple[Job, int]] = field(default_factory=list)
    tick_started: float = 0.0
    tick_rows: int = 0
    efficiency: Efficiency = field(default_factory=lambda: Efficiency(1.0))  # simulate() passes the policy's window

    def load(self) -> Load:
        return Load(
            [j.state for j in self.active],
            [j.state for j in self.queue],
            self.tick_rows,
            self.tick_started,
            self.efficiency.value(),
            False,
        )


def workload(
    n: int, rate: float, model: TickModel, limits: EngineLimits, seed: int
) -> list[tuple[float, int, int, float | None]]:
    """(arrival, rows, evaluations, due or None) for n requests of the mix at `rate` per second."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    out = []
    for at in arrivals:
        k, size = int(rng.choice(KS)), int(rng.choice(SIZES))
        rows = size * (2 if rng.random() < 0.2 else 1)
        due = None
        if rng.random() < 0.2:
            due = float(at) + DEADLINE_FACTOR * alone_s(RequestState(rows, k), model, limits)
        out.append((float(at), rows, k, due))
    return out


def offered_rate(utilization: float, replicas: int, model: TickModel, limits: EngineLimits) -> float:
    """Arrivals per second whose mean work is `utilization` of `replicas` engines' rows per second in full ticks."""
    mean_work = np.mean([size * k for size in SIZES for k in KS]) * 1.2  # 20 % guided: twice the rows
    cap = limits.max_rows_per_tick
    return utilization * replicas * (cap / model.tick_s(cap)) / mean_work


def simulate(router: str, replicas: int, arrivals: list, model: TickModel, limits: EngineLimits, seed: int) -> dict:
    rng = random.Random(seed)
    pool = [Replica(f"r{i}", efficiency=Efficiency(limits.policy.efficiency_window_s)) for i in range(replicas)]
    board = routing.Board()
    seq = itertools.count()
    events: list[tuple[float, int, str, Any]] = []  # (time, tiebreak, kind, payload)
    for a in arrivals:
        heapq.heappush(events, (a[0], next(seq), "arrive", a))
    horizon = arrivals[-1][0]
    for k in range(int(horizon / STATS_PERIOD_S) + 1):
        heapq.heappush(events, (k * STATS_PERIOD_S, next(seq), "stats", None))
    done: list[tuple[Job, float]] = []
    refused: list[Job] = []
    policy = limits.policy

    def publish(r: Replica, now: float) -> None:
        board.observe(snapshot(r.load(), now, model, limits, r.name, now))

    def start_tick(r: Replica, now: float) -> None:
        if len(r.queue) > 1:  # the engine admits most urgent first (tick_plan.order)
            by_state = {id(j.state): j for j in r.queue}
            r.queue = [by_state[id(s)] for s in order([j.state for j in r.queue], policy)]
        while r.queue and len(r.active) < limits.max_in_flight:
            r.active.append(r.queue.pop(0))
        if not r.active:
            r.plan, r.tick_rows = [], 0
            return
        by_state = {id(j.state): j for j in r.active}
        plan = plan_tick([j.state for j in r.active], now, model, policy, r.efficiency.value())
        r.plan = [(by_state[id(s)], n) for s, n in plan]
        r.tick_rows = sum(n for _, n in r.plan)
        r.tick_started = now
        r.efficiency.record(r.tick_rows, now, model, policy)
        heapq.heappush(events, (now + model.tick_s(r.tick_rows), next(seq), "tick", r))

    def end_tick(r: Replica, now: float) -> None:
        ran = {id(j) for j, _ in r.plan}
        for j, n in r.plan:
            s = j.state
            s.cursor += n
            s.idle_ticks = 0
            if s.cursor >= s.rows:
                s.cursor, s.evaluations = 0, s.evaluations + 1
        for j in r.active:
            if id(j) not in ran:
                j.state.idle_ticks += 1
        finished = [j for j in r.active if j.state.evaluations >= j.state.planned]
        r.active = [j for j in r.active if j.state.evaluations < j.state.planned]
        r.plan, r.tick_rows = [], 0
        for j in finished:
            done.append((j, now))
        if finished:
            publish(r, now)  # the answers carry the replica's snapshot back to the router
        start_tick(r, now)

    def choose(rows: int, evaluations: int, due: float | None, now: float) -> Replica:
        ongoing = {r.name: len(r.active) + len(r.queue) for r in pool}
        if router == "queue":
            a, b = rng.sample(pool, 2)
            return a if ongoing[a.name] <= ongoing[b.name] else b
        names = [r.name for r in pool]
        snapshots, sent = board.view(names)
        ranks = routing.rank(names, snapshots, routing.Work(rows, evaluations, due), now, sent)
        best = min(ranks[0], key=lambda n: ongoing[n])
        return next(r for r in pool if r.name == best)

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "stats":
            for r in pool:
                publish(r, now)
        elif kind == "tick":
            end_tick(payload, now)
        else:
            at, rows, evaluations, due = payload
            r = choose(rows, evaluations, due, now)
            job = Job(RequestState(rows, evaluations, due, next(seq)), at)
            load = r.load()
            if refusal(predict(job.state, load, now, model, limits), load, limits) is not None:
                refused.append(job)
                continue
            r.queue.append(job)
            board.sent(r.name, rows, evaluations, due, now)
            if not r.plan:
                start_tick(r, now)
    short = sorted(t - j.arrival for j, t in done if j.state.size <= SHORT_WORK)
    due_all = [a for a in arrivals if a[3] is not None]
    met = [j for j, t in done if j.state.deadline is not None and t <= j.state.deadline]
    return {
        "short_p50_ms": 1e3 * short[len(short) // 2] if short else None,
        "short_p99_ms": 1e3 * short[min(len(short) - 1, int(0.99 * len(short)))] if short else None,
        "attainment": len(met) / len(due_all) if due_all else None,
        "refused_share": len(refused) / len(arrivals),
        "requests": len(arrivals),
    }


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    model = measured_model()
    limits = EngineLimits.from_options(max_rows_per_tick=4096, max_in_flight=64, max_queue=192, max_wait_s=5.0)
    seconds = 20.0 if quick else 60.0
    result: dict[str, Any] = {
        "machine": machine(),
        "quick": quick,
        "simulated_seconds": seconds,
        "tick_model": {"fixed_ms": 1e3 * model.fixed_s, "per_row_us": 1e6 * model.per_row_s},
        "cells": [],
    }
    for replicas in (2, 4, 8):
        for utilization in (0.5, 0.8):
            rate = offered_rate(utilization, replicas, model, limits)
            arrivals = workload(int(rate * seconds), rate, model, limits, seed=replicas)
            cell: dict[str, Any] = {"replicas": replicas, "utilization": utilization, "rate": rate}
            for router in ("queue", "work"):
                cell[router] = simulate(router, replicas, arrivals, model, limits, seed=replicas)
            cell["work_over_queue"] = {
                k: cell["work"][k] / cell["queue"][k] if cell["queue"][k] else None
                for k in ("short_p50_ms", "short_p99_ms", "attainment")
            }
            print(json.dumps(cell), flush=True)
            result["cells"].append(cell)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "routing_sim.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.routing_sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-results", help="output directory (default bench-results)")
    p.add_argument("--quick", action="store_true", help="20 simulated seconds per cell (default 60)")
    args = p.parse_args(argv)
    run(Path(args.out), quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
