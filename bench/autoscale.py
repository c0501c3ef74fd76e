"""Autoscaling on a step change in load: Serve's default policy (ongoing requests per replica) against the
project's `serving.autoscale.WorkPolicy` (predicted backlog seconds, deadline misses and refusals), side by side.

    python -m bench.autoscale [--out DIR] [--quick]

One moons-fm model deployment with deploy/serve.yaml's settings for it (read from the file, its own
application's: its autoscaling bounds and delays, engine limits, max_ongoing_requests), reached in two hops
(an Ingress in front, by handle) where the shipped file also gives it a route of its own, but for the policy:
"default" is Serve's own with target_ongoing_requests 32 (docs/deploy.md, "Turn the policy off"), "work" the
shipped WorkPolicy. Serve's
autoscaling metric push intervals are what `make serve` sets (serving/serve_cli.py). First one replica's
capacity is measured (a fixed single-replica application, closed loop); then each policy in turn (A B A B ...)
gets a fresh application, idle, and a step from idle to Poisson arrivals at STEP x that capacity of K = 100,
256-sample fm-euler requests for the window.

Reported per policy (medians over rounds, with every round): seconds from the step until a second replica is
asked for (STARTING) and until it is RUNNING (Serve routes to it from then; polled every 0.25 s, until
WATCH_AFTER_S after the step; null if it never came), the requests sent before then that were refused (503 /
429) and all refused, and p50 / p99 latency of the 200s. Writes autoscale.json.

On this 2-core machine a second replica shares the cores of the first, so it adds little capacity here: the
benchmark measures how soon each policy asks for it and what was refused meanwhile, not the relief it brings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import ROOT, deploy, load, local_serve, machine
from loadtests.client import RequestSpec
from loadtests.runner import fire_at, make_client, poisson_arrivals
from serving.app import build_app
from serving.serve_cli import RAY_ENV

MODEL = "moons-fm"
# Heavy enough that the engine, not the HTTP path, is what saturates (at 3x a light request's capacity in
# requests per second the proxy and the Ingress queue first, and no replica's backlog grows).
BODY = {"model": MODEL, "sampler": "fm-euler", "steps": 100, "num_samples": 256}
WATCH_AFTER_S = 30.0  # the replica count is watched this long after the step ends, for a policy that is late
STEP = 3.0  # the step's arrival rate, in multiples of one replica's measured capacity
SHIPPED_CONFIG = ROOT / "deploy" / "serve.yaml"
POLICIES: dict[str, dict[str, Any] | None] = {
    "default": {"target_ongoing_requests": 32},  # replaces the shipped `policy` (docs/deploy.md)
    "work": None,  # the shipped `policy`, as it is
}
REFUSED = ("503", "429")


def shipped() -> tuple[dict[str, Any], dict[str, Any]]:
    """The args of the model's own application in deploy/serve.yaml and its deployment's options (without its
    name)."""
    apps = yaml.safe_load(SHIPPED_CONFIG.read_text())["applications"]
    application = next(a for a in apps if list(a["args"]["models"]) == [MODEL])
    options = next(d for d in application["deployments"] if d["name"] == MODEL)
    return application["args"], {k: v for k, v in options.items() if k != "name"}


def app(policy: dict[str, Any] | None, fixed: bool = False) -> Any:
    """The shipped model deployment with `policy` replacing its autoscaling policy (None: as shipped), or with
    one fixed replica."""
    args, options = shipped()
    autoscaling = dict(options.pop("autoscaling_config"))
    if policy is not None:
        autoscaling.pop("policy", None)
        autoscaling.update(policy)
    options.update({"num_replicas": 1} if fixed else {"autoscaling_config": autoscaling})
    return build_app(
        {
            "models": {MODEL: {"path": str(ROOT / "models" / MODEL)}},
            "limits": args["limits"],
            "engine": args["engine"],
            "deployment_options": {MODEL: options, "Ingress": {"ray_actor_options": {"num_cpus": 0.25}}},
        }
    )


def replica_counts(name: str) -> tuple[int, int]:
    """(RUNNING, asked for: every replica not stopping) of the application's model deployment."""
    from ray import serve

    status = serve.status().applications.get(name)
    if status is None or MODEL not in status.deployments:
        return 0, 0
    states = status.deployments[MODEL].replica_states
    return states.get("RUNNING", 0), sum(n for s, n in states.items() if s != "STOPPING")


class ReplicaWatch:
    """Polls the application's replica counts every `every_s` in a thread: (seconds since start, RUNNING,
    asked for)."""

    def __init__(self, name: str, every_s: float = 0.25) -> None:
        self.name, self.every_s = name, every_s
        self.trace: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, t0: float) -> ReplicaWatch:
        self.t0 = t0
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.trace.append((time.perf_counter() - self.t0, *replica_counts(self.name)))
            self._stop.wait(self.every_s)

    def stop(self) -> list[tuple[float, int, int]]:
        self._stop.set()
        self._thread.join(10)
        return self.trace


def step(url: str, name: str, rate: float, window_s: float, seed: int) -> dict[str, Any]:
    """Idle -> `rate` requests/s for `window_s` on the application `name` at `url`; what its autoscaler did."""
    spec = RequestSpec(MODEL, BODY["sampler"], BODY["steps"], BODY["num_samples"], seed=seed * 100_000)
    arrivals = poisson_arrivals(rate, window_s, seed)

    async def fire() -> list:
        async with make_client(url, timeout=300) as client:
            t0 = time.perf_counter()
            watch.start(t0)
            return await fire_at(client, spec, arrivals, t0, rate)

    watch = ReplicaWatch(name)
    records = asyncio.run(fire())
    until = time.perf_counter() + WATCH_AFTER_S
    while time.perf_counter() < until and not any(n >= 2 for _, n, _ in watch.trace):
        time.sleep(0.25)
    trace = watch.stop()
    second = next((t for t, n, _ in trace if n >= 2), None)
    asked = next((t for t, _, n in trace if n >= 2), None)
    refused = [r for r in records if r.status in REFUSED]
    ok = sorted(r.latency for r in records if r.ok)
    return {
        "second_replica_s": second,
        "second_asked_s": asked,
        "requests": len(records),
        "refused": len(refused),
        "refused_before_second": sum(1 for r in refused if second is None or r.start < second),
        "sent_before_second": sum(1 for r in records if second is None or r.start < second),
        "other_errors": sorted({r.status for r in records if not r.ok and r.status not in REFUSED}),
        "ok_p50_ms": 1e3 * ok[len(ok) // 2] if ok else None,
        "ok_p99_ms": 1e3 * ok[min(len(ok) - 1, int(0.99 * len(ok)))] if ok else None,
        "replicas_trace": trace[:: max(1, len(trace) // 200)],
    }


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    window = 40.0 if quick else 60.0
    rounds = 1 if quick else 2
    result: dict[str, Any] = {"machine": machine(), "quick": quick, "body": BODY, "window_s": window, "step": STEP}
    # Serve's autoscaling metric push intervals as `make serve` sets them (serving/serve_cli.py RAY_ENV),
    # before Ray starts: its processes inherit them.
    for key, value in RAY_ENV.items():
        if "AUTOSCALING_METRIC_PUSH" in key:
            os.environ.setdefault(key, value)
    result["push_intervals_s"] = {k: os.environ[k] for k in RAY_ENV if "AUTOSCALING_METRIC_PUSH" in k}
    with local_serve() as base:
        url = deploy(app(None, fixed=True), "calib", base)
        load(url, [BODY], concurrency=2, seconds=2)  # warm
        capacity = load(url, [BODY], concurrency=8, seconds=8)["requests_per_s"]
        from ray import serve

        serve.delete("calib")
        rate = STEP * capacity
        result.update(capacity_requests_per_s=capacity, rate=rate)
        print(f"one replica: {capacity:.1f} requests/s; the step: {rate:.1f} requests/s for {window:.0f} s", flush=True)
        cells: dict[str, list[dict[str, Any]]] = {name: [] for name in POLICIES}
        for r in range(rounds):
            for name, policy in POLICIES.items():
                app_name = f"{name}{r}"
                url = deploy(app(policy), app_name, base)
                load(url, [BODY], concurrency=1, seconds=2)  # warm, then idle
                time.sleep(3.0)
                print(f"round {r + 1}/{rounds}: {name}", flush=True)
                cell = step(url, app_name, rate, window, seed=r)
                print({k: v for k, v in cell.items() if k != "replicas_trace"}, flush=True)
                cells[name].append(cell)
                serve.delete(app_name)
    result["cells"] = cells
    keys = ("second_asked_s", "second_replica_s", "refused_before_second", "refused", "ok_p50_ms", "ok_p99_ms")
    result["summary"] = {
        name: {k: statistics.median([c[k] for c in values if c[k] is not None] or [float("nan")]) for k in keys}
        | {"never_scaled_rounds": sum(c["second_replica_s"] is None for c in values)}
        for name, values in cells.items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "autoscale.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.autoscale", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-results", help="output directory (default bench-results)")
    p.add_argument("--quick", action="store_true", help="one round of a 40 s step (default: two of 60 s)")
    args = p.parse_args(argv)
    run(Path(args.out), quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
