"""The front door under a burst: shedding at the door on and off, behind Serve's proxy and behind HAProxy.

Starts the shipped application (`python -m serving.serve_cli --config deploy/serve.yaml`, four models, two
Ingress replicas) once per variant, in turn: the door on (`shed_at_door: true`, as shipped) or off (every
request reaches an engine to be refused), with Serve's Python proxy or HAProxy in front (`--ingress
haproxy`). Each gets the same open-loop burst: evenly spaced K = 50, 256-sample fm-euler requests to
moons-fm at `--rate` per second (150, about 15x what its one replica serves) for `--seconds`, every request
timed from its own send, then one K = 5, 64-sample request. Records per status the count and p50 / p99
latency, answers whose body is not JSON, and the request after. Writes door.json.

    python -m bench --only door [--quick]      (or python -m bench.door [--rate 150] [--seconds 10])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import ROOT, machine
from bench.path import free_port

BODY = {"model": "moons-fm", "sampler": "fm-euler", "steps": 50, "num_samples": 256}
AFTER = {**BODY, "steps": 5, "num_samples": 64}
VARIANTS = {  # name -> (shed_at_door, ingress)
    "door, Serve proxy": (True, "serve"),
    "no door, Serve proxy": (False, "serve"),
    "door, HAProxy": (True, "haproxy"),
    "no door, HAProxy": (False, "haproxy"),
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


def _serve(config: Path, ingress: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "serving.serve_cli", "--config", str(config), "--port", str(port)]
    cmd += ["--metrics-port", str(free_port()), "--ingress", ingress]
    log = Path(tempfile.mkstemp(prefix="bench-door-", suffix=".log")[1])
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
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
    _stop(proc)
    raise RuntimeError(f"the service did not come up within 180 s; its log: {log}")


def _stop(proc: subprocess.Popen) -> None:
    group = os.getpgid(proc.pid)
    os.killpg(group, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        proc.wait()


def run(out_dir: Path, quick: bool = False, rate: float = 150.0, seconds: float | None = None) -> dict[str, Any]:
    seconds = seconds if seconds is not None else (5.0 if quick else 10.0)
    shipped = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (door, ingress) in VARIANTS.items():
            config = Path(tmp) / f"serve-{door}.yaml"
            shipped["applications"][0]["args"]["shed_at_door"] = door
            config.write_text(yaml.safe_dump(shipped, sort_keys=False))
            print(f"{name}: {rate:g} req/s for {seconds:g} s", flush=True)
            proc, url = _serve(config, ingress)
            try:
                time.sleep(3.0)  # the replicas' first answers after start-up are slower
                results[name] = asyncio.run(burst(url, rate, seconds))
            finally:
                _stop(proc)
            print(f"  {json.dumps(results[name])}", flush=True)
    report = {"machine": machine(), "rate": rate, "seconds": seconds, "body": BODY, "variants": results}
    (out_dir / "door.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.door", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-results")
    p.add_argument("--rate", type=float, default=150.0, help="requests per second of the burst (default 150)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long the burst lasts (default 10)")
    a = p.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    run(Path(a.out), rate=a.rate, seconds=a.seconds)


if __name__ == "__main__":
    main()
