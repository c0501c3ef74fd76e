"""Load generation on one asyncio loop: closed loop (fixed concurrency) and open loop (Poisson arrivals).

Closed loop: `concurrency` workers each send their next request as soon as the previous one answered,
so offered load adapts to the server (it measures capacity, and hides queueing).
Open loop: arrival times t_i = sum of Exp(rate) gaps are drawn up front from a seeded RNG and each
request is fired at its own t_i as its own task, whether or not earlier ones have answered, so a slow
server builds a queue that shows up in latency instead of silently lowering the arrival rate.
Requests that start in the first `warmup` seconds are marked warmup and left out of the statistics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import numpy as np

from loadtests.client import Record, RequestSpec, send
from stepserve_client import AsyncClient

# Open loop must never wait for a pooled connection (that would throttle arrivals), so no pool cap.
UNLIMITED = httpx.Limits(max_connections=None, max_keepalive_connections=256)

Progress = Callable[[Record], None]


def poisson_arrivals(rate: float, horizon: float, seed: int) -> np.ndarray:
    """Arrival offsets (seconds) of a Poisson process of `rate` per second on [0, horizon), sorted."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    rng = np.random.default_rng(seed)
    # Draw in chunks: the expected count is rate * horizon; keep drawing until we pass the horizon.
    gaps: list[np.ndarray] = []
    total = 0.0
    while total < horizon:
        chunk = rng.exponential(1.0 / rate, size=max(16, int(rate * horizon * 1.2) + 16))
        gaps.append(chunk)
        total += float(chunk.sum())
    times = np.cumsum(np.concatenate(gaps))
    return times[times < horizon]


def make_client(url: str, timeout: float) -> AsyncClient:
    http = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout, connect=10.0), limits=UNLIMITED)
    return AsyncClient(url, http=http)


async def closed_loop(
    client: AsyncClient,
    spec: RequestSpec,
    concurrency: int,
    duration: float,
    warmup: float,
    first_index: int = 0,
    on_record: Progress | None = None,
) -> list[Record]:
    """`concurrency` workers send back to back until warmup + duration has passed; requests already in
    flight at the deadline are awaited and counted (their start was inside the window)."""
    t0 = time.perf_counter()
    deadline = warmup + duration
    records: list[Record] = []
    counter = iter(range(first_index, 1 << 62))

    async def worker() -> None:
        while (now := time.perf_counter() - t0) < deadline:
            rec = await send(client, spec, next(counter), concurrency, now, t0, warmup=now < warmup)
            records.append(rec)
            if on_record:
                on_record(rec)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


async def fire_at(
    client: AsyncClient,
    spec: RequestSpec,
    arrivals: np.ndarray,
    t0: float,
    load: float,
    warmup_until: float = 0.0,
    first_index: int = 0,
    on_record: Progress | None = None,
) -> list[Record]:
    """Fire one task per arrival offset (seconds after t0, a perf_counter reading) at its time, never
    waiting for earlier answers; then await them all. Arrivals before warmup_until are warmup."""
    records: list[Record] = []

    async def one(i: int, at: float) -> None:
        rec = await send(client, spec, first_index + i, load, at, t0, warmup=at < warmup_until)
        records.append(rec)
        if on_record:
            on_record(rec)

    tasks = []
    for i, at in enumerate(arrivals):
        delay = at - (time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, float(at))))
    await asyncio.gather(*tasks)
    return records


async def open_loop(
    client: AsyncClient,
    spec: RequestSpec,
    rate: float,
    duration: float,
    warmup: float,
    seed: int = 0,
    first_index: int = 0,
    on_record: Progress | None = None,
) -> list[Record]:
    """Poisson arrivals at `rate` on [0, warmup + duration), each fired at its scheduled time."""
    arrivals = poisson_arrivals(rate, warmup + duration, seed)
    return await fire_at(client, spec, arrivals, time.perf_counter(), rate, warmup, first_index, on_record)
