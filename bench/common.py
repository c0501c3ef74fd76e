"""What every benchmark shares: the project root, machine facts, scratch checkpoints, a local Ray + Serve,
and the closed-loop HTTP client (the load tester's own, `loadtests.runner.closed_loop`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from loadtests.client import Record, RequestSpec
from loadtests.runner import closed_loop, make_client

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """The facts a reader needs to weigh an absolute number."""
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
    }


def scratch_checkpoint(name: str, scratch: Path, onnx: bool = False) -> Path:
    """models/<name> copied into `scratch` (or, where not trained, its config trained 20 steps: latency only),
    with its ONNX export made by `python -m export` when `onnx`; models/ is left as committed."""
    src, dst = ROOT / "models" / name, scratch / name
    if (src / "manifest.json").is_file():
        shutil.copytree(src, dst)
    else:
        from training.config import load_config
        from training.trainer import train

        train(load_config(ROOT / "configs" / f"{name}.yaml"), dst, max_steps=20, progress=False)
    if onnx:
        cmd = [sys.executable, "-m", "export", "--checkpoint", str(dst), "--format", "onnx", "--no-parity"]
        subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    return dst


@contextlib.contextmanager
def local_serve(num_cpus: int = 8) -> Iterator[str]:
    """A fresh local Ray with Serve's HTTP proxy on a free-ish port; yields the base URL; shuts both down."""
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, namespace="serve", log_to_driver=False)
    port = 18000 + os.getpid() % 1000
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _descendants(root: int) -> list[int]:
    """`root` and every process below it, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone since the listing
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` onto `cpus` (threads it starts later inherit it)."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):  # a thread that has just ended
                os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def pinned_replicas(deployment: str) -> Iterator[dict[str, Any]]:
    """Give the replicas of `deployment` (Serve's process title `ServeReplica:<app>:<deployment>`, every
    application) the machine's last CPU to themselves, and put this process and every process below it (the
    local Ray started by `local_serve`: GCS, raylet, Serve's proxy and controller, the other replicas, the
    load generator's own client) on the others: on a small machine the load generator and Serve's path then
    stop taking CPU from the replica, as on a cluster whose model replicas have nodes of their own. Yields
    what was placed where; on exit every process touched may use every CPU this one could before. Linux only."""
    if not hasattr(os, "sched_setaffinity") or not os.path.isdir("/proc"):
        raise RuntimeError("pinning replicas needs Linux (/proc and sched_setaffinity)")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise RuntimeError(f"pinning replicas needs 2 or more CPUs, this process may use {len(cpus)}")
    # Ray titles a replica's process `ray::ServeReplica:<app>:<deployment>` (its cmdline, possibly with more after).
    mark = re.compile(rb"ServeReplica:[^:\s]+:" + re.escape(deployment.encode()) + rb"(?![\w-])")
    titles = {}
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError):  # gone since the listing
            titles[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
    replicas = [pid for pid, title in titles.items() if title.startswith(b"ray::") and mark.search(title)]
    if not replicas:
        raise RuntimeError(f"no replica process of deployment {deployment!r} found below this process")
    try:
        for pid in titles:
            _set_affinity(pid, {cpus[-1]} if pid in replicas else set(cpus[:-1]))
        yield {"replica_pids": replicas, "replica_cpus": cpus[-1:], "other_cpus": cpus[:-1]}
    finally:
        for pid in (*titles, *_descendants(os.getpid())):  # and processes started meanwhile
            _set_affinity(pid, set(cpus))


def deploy(app: Any, name: str, base: str) -> str:
    """Run `app` as application `name` at /<name>; its URL."""
    from ray import serve

    serve.run(app, name=name, route_prefix=f"/{name}")
    return f"{base}/{name}"


def spec(body: dict[str, Any]) -> RequestSpec:
    return RequestSpec(body["model"], body["sampler"], body["steps"], body["num_samples"])


def load(url: str, bodies: list[dict[str, Any]], concurrency: int, seconds: float) -> dict[str, Any]:
    """Closed loop: `concurrency` clients split evenly over `bodies` (each client repeats its body), for
    `seconds` after a quarter of that as warm-up. Returns the counted records and the net rows per second
    (sum of num_samples x nfe of the 200s over the window from the end of warm-up to the last answer) and the
    200s per second over the same window."""
    warm = seconds / 4

    async def main() -> list[Record]:
        async with make_client(url, timeout=300) as client:
            parts = await asyncio.gather(
                *(
                    closed_loop(client, spec(b), max(1, concurrency // len(bodies)), seconds, warm, 1_000_000 * i)
                    for i, b in enumerate(bodies)
                )
            )
        return [r for part in parts for r in part if not r.warmup]

    records = asyncio.run(main())
    ok = [r for r in records if r.ok]
    span = max((r.end for r in records), default=warm + seconds) - warm
    return {
        "records": records,
        "rows_per_s": sum(r.num_samples * (r.nfe or 0) for r in ok) / span,
        "requests_per_s": len(ok) / span,
    }


def p50_ms(records: list[Record], steps: int) -> float:
    """Median latency (ms) of the answered requests of K = `steps`."""
    return 1e3 * statistics.median(r.latency for r in records if r.ok and r.steps == steps)


def median_times(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds of each function, one warm-up call each, then `rounds` rounds calling every one in turn."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
