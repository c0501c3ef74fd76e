"""The front door under a burst: shedding at the door on and off, behind Serve's proxy and behind HAProxy.

Starts the shipped application (`python -m serving.serve_cli --config deploy/serve.yaml`, five models, two
Ingress replicas) once per variant, in turn: the door on (`shed_at_door: true`, as shipped) or off (every
request reaches an engine to be refused), with Serve's Python proxy or HAProxy in front (`--ingress
haproxy`; once more with HAProxy and the Ingress replicas' slots unbounded, `--ingress-maxconn 0`). Each
gets the same open-loop burst: evenly spaced K = 50, 256-sample fm-euler requests to moons-fm at `--rate`
per second (150, about 15x what its one replica serves) for `--seconds`, every request
timed from its own send, then one K = 5, 64-sample request. Records per status the count and p50 / p99
latency, answers whose body is not JSON, and the request after.

The variants with the door on behind HAProxy (as shipped, and with `bulk_nice` 0) also get the burst and the
`mixed` probe below on moons-fm's own route, `/models/moons-fm/v1/samples` (one hop), as `model_route`.
The two variants with the door on and the shipped limits (the shipped application behind either ingress)
also get, on the same running service, the issue's other contracts as a client sees them (and the variant
with the engine's thread at the replica's own priority, `engine.bulk_nice: 0`, the `mixed` probe, to set
beside the shipped one):
- `mixed`: a K = 5, 64-sample request's p50 alone and amid six closed loops of K = 100, 256 samples, with the
  service's own timing medians beside each (queue, compute, total: what is the path's);
- `stalled`: 1 200 connections that send headers and part of a body and stall, while a normal client sends
  40 small requests 0.5 s apart: how many of those fail;
- `hang_up`: a client that gives up after 0.5 s on a request of several seconds: how long until its
  model replica is idle again (its work stopped) against the same request run to its end;
- `deadline`: `python -m loadtests deadline` (steps "auto", 1 024 samples, 1 000 ms, at 1x and 2x the
  capacity measured with fixed K = 20; the client sends its clock, so `deadline_met` counts the time in
  front of the engine): attainment as the service reports it and as the client timed it. Requests this
  large make compute, which the step budget trades, most of a request's cost; for small ones (64 samples)
  the HTTP path is, and no K makes room for twice the load.

Writes door.json.

    python -m bench --only door [--quick]      (or python -m bench.door [--rate 150] [--seconds 10])
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import ROOT, machine
from bench.ports import free_port

BODY = {"model": "moons-fm", "sampler": "fm-euler", "steps": 50, "num_samples": 256}
AFTER = {**BODY, "steps": 5, "num_samples": 64}
HEAVY = {**BODY, "steps": 100}  # the mixed probe's load
# seconds of one replica's CPU: 4 096 000 row evaluations, under moons-fm's max_work
LONG = {**BODY, "sampler": "fm-rk4", "steps": 1000, "num_samples": 1024}
VARIANTS = {  # name -> (shed_at_door, ingress, serve_cli's extra arguments, engine options over the shipped)
    "door, Serve proxy": (True, "serve", (), {}),
    "no door, Serve proxy": (False, "serve", (), {}),
    "door, HAProxy": (True, "haproxy", (), {}),
    "no door, HAProxy": (False, "haproxy", (), {}),
    # HAProxy with the Ingress replicas' slots unbounded (what the default was before --ingress-maxconn)
    "door, HAProxy, unbounded": (True, "haproxy", ("--ingress-maxconn", "0"), {}),
    # the engine's thread at the replica's own priority (engine.bulk_nice 0): burst and mixed probe only
    "door, HAProxy, bulk_nice 0": (True, "haproxy", (), {"bulk_nice": 0}),
}


async def _send(c: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, float, bool]:
    t0 = time.perf_counter()
    try:
        r = await c.post("/v1/samples", json=body)
        status, is_json = str(r.status_code), r.headers.get("content-type", "").startswith("application/json")
    except httpx.HTTPError as e:
        status, is_json = type(e).__name__, False
    return status, time.perf_counter() - t0, is_json


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return round(1e3 * v[int(q * (len(v) - 1))], 1)


async def burst(url: str, rate: float, seconds: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        t0, tasks = time.perf_counter(), []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(_send(c, {**BODY, "seed": i})))
        results = await asyncio.gather(*tasks)
        after = await _send(c, AFTER)
    by: dict[str, list[float]] = {}
    for status, latency, _ in results:
        by.setdefault(status, []).append(latency)
    return {
        "statuses": {s: {"n": len(v), "p50_ms": _pct(v, 0.5), "p99_ms": _pct(v, 0.99)} for s, v in sorted(by.items())},
        "not_json": sum(not j for _, _, j in results),
        "after": {"status": after[0], "ms": round(1e3 * after[1], 1)},
    }


async def _sequential(
    c: httpx.AsyncClient, body: dict[str, Any], seconds: float, timings: list[dict[str, float]] | None = None
) -> list[float]:
    """Latencies (s) of `body` sent one after another for `seconds`; a failure raises. `timings` gets each
    answer's `timing` (the service's own queue, compute and total ms)."""
    out, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        r = await c.post("/v1/samples", json={**body, "seed": len(out)})
        if r.status_code != 200:
            raise RuntimeError(f"a lone {body['steps']}-step request got {r.status_code}")
        out.append(time.perf_counter() - t0)
        if timings is not None:
            timings.append(r.json()["timing"])
    return out


def _timing_p50(timings: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(t[k] for t in timings), 2) for k in ("queue_ms", "compute_ms", "total_ms")}


async def mixed(url: str, loops: int = 6, seconds: float = 10.0) -> dict[str, Any]:
    """K = 5 p50 alone, then amid `loops` closed loops of HEAVY, and their ratio."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        await _sequential(c, AFTER, 1.0)  # warm
        idle_timing: list[dict[str, float]] = []
        loaded_timing: list[dict[str, float]] = []
        idle = await _sequential(c, AFTER, seconds / 2, idle_timing)
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                await _send(c, HEAVY)

        tasks = [asyncio.create_task(loop()) for _ in range(loops)]
        await asyncio.sleep(2.0)
        loaded = await _sequential(c, AFTER, seconds, loaded_timing)
        stop.set()
        await asyncio.gather(*tasks)
    a, b = _pct(idle, 0.5), _pct(loaded, 0.5)
    return {
        "idle_p50_ms": a,
        "loaded_p50_ms": b,
        "ratio": round(b / a, 2),
        "n": [len(idle), len(loaded)],
        # where the time goes: the service's own timing fields (medians), alone and under the load
        "server_idle_p50": _timing_p50(idle_timing),
        "server_loaded_p50": _timing_p50(loaded_timing),
    }


async def stalled(url: str, n: int = 1200, normal: int = 40) -> dict[str, Any]:
    """`n` stalled uploads held open while a client sends `normal` small requests 0.5 s apart."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/samples HTTP/1.1\r\nHost: {host}:{port}\r\ncontent-type: application/json\r\n"
        "content-length: 1000\r\n\r\n"
    ).encode() + b'{"model": "moons-fm", '
    writers = []
    for _ in range(n):
        try:
            _, w = await asyncio.open_connection(host, int(port))
        except OSError:
            break
        w.write(head)
        writers.append(w)
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def one(i: int) -> tuple[str, float, bool]:
            await asyncio.sleep(0.5 * i)
            return await _send(c, {**AFTER, "num_samples": 4, "seed": i})

        answers = await asyncio.gather(*(one(i) for i in range(normal)))
    for w in writers:
        w.close()
    ok = [lat for status, lat, _ in answers if status == "200"]
    return {
        "opened": len(writers),
        "failed": len(answers) - len(ok),
        "statuses": sorted({status for status, _, _ in answers}),
        "p50_ms": _pct(ok, 0.5) if ok else None,
        "max_ms": _pct(ok, 1.0) if ok else None,
    }


async def _idle_after(c: httpx.AsyncClient, since: float, limit_s: float) -> float | None:
    """Seconds from `since` until moons-fm's replica holds no request (None: not within `limit_s`)."""
    while time.perf_counter() - since < limit_s:
        load = (await c.get("/v1/models/moons-fm")).json()["replica_load"]
        if load["in_flight"] + load["queued"] == 0:
            return round(time.perf_counter() - since, 2)
        await asyncio.sleep(0.1)
    return None


async def hang_up(url: str, trials: int = 3, give_up_s: float = 0.5) -> dict[str, Any]:
    """A LONG request run to its end, then `trials` whose client leaves after `give_up_s`: seconds until the
    replica is idle, from the send."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        t0 = time.perf_counter()
        status, _, _ = await _send(c, LONG)
        full_s = round(time.perf_counter() - t0, 2)
        left = []
        for i in range(trials):
            t0 = time.perf_counter()
            with contextlib.suppress(httpx.TimeoutException):
                await c.post("/v1/samples", json={**LONG, "seed": i + 1}, timeout=give_up_s)
            left.append(await _idle_after(c, t0, 3 * full_s + 5))
    return {"run_to_end_s": full_s, "status": status, "idle_after_hang_up_s": left, "give_up_s": give_up_s}


def deadline(url: str, out: Path, seconds: float) -> dict[str, Any]:
    """`python -m loadtests deadline` at 1x and 2x: per load, attainment (service / client clock), chosen K."""
    cmd = [sys.executable, "-m", "loadtests", "deadline", "--url", url, "--model", "moons-fm"]
    cmd += ["--sampler", "fm-euler", "--num-samples", "1024", "--deadline-ms", "1000", "--load", "1,2"]
    cmd += ["--duration", f"{seconds:g}", "--fixed-steps", "20", "--out", str(out), "--no-progress"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    res = json.loads((out / "results.json").read_text())
    keep = ("arm", "load_multiple", "offered_rps", "requests", "ok", "attainment", "attainment_client")
    cells = [{k: c[k] for k in keep} | {"most_chosen": _top(c["k_histogram"])} for c in res["cells"]]
    return {"capacity_rps": round(res["capacity_rps"], 2), "cells": cells}


def _top(hist: list[dict[str, Any]]) -> int | None:
    return max(hist, key=lambda h: h["count"])["steps"] if hist else None


def start_service(config: Path, ingress: str, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`serving.serve_cli` with `config` behind `ingress` ("haproxy" or "serve") on free ports (HAProxy's stats
    page and metrics too), in a session of its own; returns it and its URL once /healthz answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "serving.serve_cli", "--config", str(config), "--port", str(port)]
    cmd += ["--metrics-port", str(free_port()), "--ingress", ingress, *extra]
    log = Path(tempfile.mkstemp(prefix="bench-door-", suffix=".log")[1])
    # HAProxy's defaults (8404, 9101) may be taken, e.g. by a `make serve` or a second service of a benchmark
    env = {**os.environ, "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port())}
    env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve_cli exited with {proc.returncode}; its log: {log}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    stop_service(proc)
    raise RuntimeError(f"the service did not come up within 180 s; its log: {log}")


def stop_service(proc: subprocess.Popen) -> None:
    """Ctrl-C to a `start_service` process group; killed if it has not exited within 60 s."""
    group = os.getpgid(proc.pid)
    os.killpg(group, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        proc.wait()


def run(
    out_dir: Path,
    quick: bool = False,
    rate: float = 150.0,
    seconds: float | None = None,
    variants: list[str] | None = None,
) -> dict[str, Any]:
    seconds = seconds if seconds is not None else (5.0 if quick else 10.0)
    shipped = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (door, ingress, extra, engine) in VARIANTS.items():
            if variants and name not in variants:
                continue
            config = Path(tmp) / "serve.yaml"
            app = copy.deepcopy(shipped)
            for application in app["applications"]:  # the Ingress's and each model's own
                application["args"]["shed_at_door"] = door
                application["args"]["engine"].update(engine)
            config.write_text(yaml.safe_dump(app, sort_keys=False))
            print(f"{name}: {rate:g} req/s for {seconds:g} s", flush=True)
            proc, url = start_service(config, ingress, extra)
            try:
                time.sleep(3.0)  # the replicas' first answers after start-up are slower
                results[name] = asyncio.run(burst(url, rate, seconds))
                if door and not extra:
                    time.sleep(5.0)  # the burst's accepted requests drain
                    results[name]["mixed"] = asyncio.run(mixed(url, seconds=seconds))
                if door and not extra and not engine:
                    results[name]["stalled"] = asyncio.run(stalled(url, normal=20 if quick else 40))
                    results[name]["hang_up"] = asyncio.run(hang_up(url, trials=2 if quick else 3))
                    scratch = Path(tmp) / name.replace(", ", "-").replace(" ", "_")
                    results[name]["deadline"] = deadline(url, scratch, seconds)
                if door and not extra and ingress == "haproxy":
                    # moons-fm's own route (one hop: the model's replica is the edge): the burst and the mixed
                    # probe again, there
                    route = f"{url}/models/{BODY['model']}"
                    time.sleep(5.0)
                    results[name]["model_route"] = {"burst": asyncio.run(burst(route, rate, seconds))}
                    time.sleep(5.0)
                    results[name]["model_route"]["mixed"] = asyncio.run(mixed(route, seconds=seconds))
            finally:
                stop_service(proc)
            print(f"  {json.dumps(results[name])}", flush=True)
    report = {"machine": machine(), "rate": rate, "seconds": seconds, "body": BODY, "variants": results}
    (out_dir / "door.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.door", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-results")
    p.add_argument("--rate", type=float, default=150.0, help="requests per second of the burst (default 150)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long the burst lasts (default 10)")
    p.add_argument(
        "--variant", action="append", choices=list(VARIANTS), help="run only this variant (repeatable; default all)"
    )
    a = p.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    run(Path(a.out), rate=a.rate, seconds=a.seconds, variants=a.variant)


if __name__ == "__main__":
    main()
