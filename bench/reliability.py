"""Overload: goodput and latency at 1x, 2x and 3x the measured capacity, open loop, one model replica.

Deploys moons-fm (one replica, 1 CPU) with the shipped engine bounds of deploy/serve.yaml, measures its
capacity with a closed loop (8 clients, fm-euler K = 50, 256 samples), then offers evenly spaced
arrivals at 1x, 2x and 3x that capacity for `--seconds` each and records every answer: goodput (200s
per second from the first send to the last answer), p50 / p99 latency of the 200s, the count and
p50 / max latency of 503s, timeouts (30 s), other statuses. Writes reliability.json.

    python -m bench.reliability [--out DIR] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, deploy, local_serve, machine

BODY = {"model": "moons-fm", "sampler": "fm-euler", "steps": 50, "num_samples": 256}
ENGINE = {"max_rows_per_tick": 4096, "max_in_flight": 64, "max_queue": 192, "max_wait_s": 5.0}


async def _send(c: httpx.AsyncClient, seed: int) -> tuple[str, float, float]:
    """(status, latency s, answer time s on the perf_counter clock)."""
    t0 = time.perf_counter()
    try:
        r = await c.post("/v1/samples", json={**BODY, "seed": seed})
        status = str(r.status_code)
    except httpx.TimeoutException:
        status = "timeout"
    end = time.perf_counter()
    return status, end - t0, end


async def capacity(url: str, seconds: float) -> float:
    done = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        end = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            nonlocal done
            while time.perf_counter() < end:
                status, _, _ = await _send(c, i)
                done += status == "200"

        await asyncio.gather(*(worker(i) for i in range(8)))
    return done / seconds


async def offered(url: str, rate: float, seconds: float) -> tuple[list[tuple[str, float, float]], float]:
    """Every answer, and the time the first request was sent."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
        t0, tasks = time.perf_counter(), []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(_send(c, i)))
        return list(await asyncio.gather(*tasks)), t0


def summarize(results: list[tuple[str, float, float]], t0: float) -> dict[str, Any]:
    """Goodput: 200s per second from the first send to the last answer (late answers stretch the span)."""
    ok = sorted(lat for s, lat, _ in results if s == "200")
    shed = sorted(lat for s, lat, _ in results if s == "503")
    span = max(end for _, _, end in results) - t0

    def q(xs: list[float], p: float) -> float | None:
        return round(1e3 * xs[int(p * (len(xs) - 1))], 1) if xs else None

    return {
        "sent": len(results),
        "ok": len(ok),
        "span_s": round(span, 1),
        "goodput_per_s": round(len(ok) / span, 2),
        "ok_p50_ms": q(ok, 0.5),
        "ok_p99_ms": q(ok, 0.99),
        "shed_503": len(shed),
        "shed_p50_ms": q(shed, 0.5),
        "shed_max_ms": q(shed, 1.0),
        "timeouts": sum(s == "timeout" for s, _, _ in results),
        "other": sorted({s for s, _, _ in results} - {"200", "503", "timeout"}),
    }


def run(out_dir: Path, quick: bool = False, seconds: float = 10.0) -> dict[str, Any]:
    from serving.app import build_app

    args = {
        "models": {"moons-fm": {"path": str(ROOT / "models" / "moons-fm")}},
        "limits": {"max_num_samples": 1024},
        "engine": ENGINE,
        "deployment_options": {
            "moons-fm": {"ray_actor_options": {"num_cpus": 1}, "max_ongoing_requests": 1024},
            "Ingress": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.25}},
        },
    }
    result: dict[str, Any] = {"machine": machine(), "request": BODY, "engine": ENGINE, "seconds": seconds}
    with local_serve() as base:
        url = deploy(build_app(args), "overload", base)
        asyncio.run(capacity(url, 2.0))  # warm-up
        cap = asyncio.run(capacity(url, 5.0 if quick else 10.0))
        result["capacity_per_s"] = round(cap, 2)
        result["levels"] = {}
        for x in (1, 2, 3):
            res, t0 = asyncio.run(offered(url, x * cap, seconds))
            result["levels"][f"{x}x"] = {"offered_per_s": round(x * cap, 2), **summarize(res, t0)}
            print(json.dumps({f"{x}x": result["levels"][f"{x}x"]}), flush=True)
            time.sleep(3.0)  # let the backlog drain between levels
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "reliability.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per load level (default 10)")
    a = p.parse_args(argv)
    run(a.out, seconds=a.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
