"""A sweep: every sampler x K x load level as one cell of warmup + duration seconds, with a progress bar,
a server scrape before and after, and replica counts sampled while it runs."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from tqdm import tqdm

from loadtests import prom
from loadtests.client import LoadTestError, Record, RequestSpec, send
from loadtests.runner import closed_loop, make_client, open_loop
from loadtests.stats import summarize
from stepserve_client import AsyncClient


@dataclass
class SweepConfig:
    """mode "closed": loads are concurrencies; mode "open": loads are arrival rates (requests/s)."""

    url: str
    model: str
    samplers: list[str]
    steps: list[int]
    mode: str
    loads: list[float]
    duration: float
    warmup: float = 0.0
    num_samples: int = 1
    guidance: float | None = None
    class_labels: tuple[int, ...] | None = None
    eta: float | None = None
    seed: int = 0
    timeout: float = 120.0
    metrics_url: str | None = None
    scrape_interval: float = 2.0
    settle: float = 30.0
    progress: bool = True

    def spec(self, sampler: str, steps: int) -> RequestSpec:
        return RequestSpec(
            self.model,
            sampler,
            steps,
            self.num_samples,
            self.guidance,
            self.class_labels,
            self.seed,
            self.eta,
        )


@dataclass
class SweepResult:
    cells: list[dict[str, Any]]
    records: list[Record]
    probes: int
    server: dict[str, Any] | None = None
    replica_trace: list[dict[str, Any]] = field(default_factory=list)
    metrics_error: str | None = None

    @property
    def requests_sent(self) -> int:
        """Every POST the sweep made: probes, warmup and measured requests."""
        return self.probes + len(self.records)


async def _probe(client: AsyncClient, spec: RequestSpec) -> None:
    """One request per (sampler, K) before its cells: a refusal (bad sampler, K over the limit) ends the
    sweep with the service's own message, and first-call costs (lazy loading) stay out of the cells."""
    rec = await send(client, spec, 0, 0.0, 0.0, time.perf_counter(), warmup=True)
    if not rec.ok:
        raise LoadTestError(f"the service refused {spec.sampler} K={spec.steps}: {rec.status} {rec.detail or ''}")


def _fmt_load(mode: str, load: float) -> str:
    return f"c={load:g}" if mode == "closed" else f"rate={load:g}/s"


async def run_sweep(cfg: SweepConfig) -> SweepResult:
    """Run every cell in order (sampler, K, load); returns per-cell statistics and the raw records."""
    before = _scrape(cfg.metrics_url)
    t_start = time.perf_counter()
    sampler_task = None
    if cfg.metrics_url and before[0] is not None:
        sampler_task = prom.ReplicaSampler(cfg.metrics_url, cfg.scrape_interval, t0=t_start)
        sampler_task.start()
    cells: list[dict[str, Any]] = []
    records: list[Record] = []
    probes = 0
    per_cell = cfg.warmup + cfg.duration
    n_cells = len(cfg.samplers) * len(cfg.steps) * len(cfg.loads)
    bar = tqdm(
        total=round(n_cells * per_cell),
        unit="s",
        disable=not cfg.progress,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}] {postfix}",
    )
    try:
        async with make_client(cfg.url, cfg.timeout) as client:
            index = 1
            for sampler in cfg.samplers:
                for steps in cfg.steps:
                    spec = cfg.spec(sampler, steps)
                    await _probe(client, spec)
                    probes += 1
                    for load in cfg.loads:
                        base = len(cells) * per_cell
                        cell_records = await _run_cell(client, cfg, spec, load, index, bar, base)
                        index += len(cell_records)
                        bar.update(base + per_cell - bar.n)
                        records += cell_records
                        cells.append(
                            {
                                "sampler": sampler,
                                "steps": steps,
                                "mode": cfg.mode,
                                "load": load,
                                **summarize(cell_records),
                            }
                        )
    finally:
        bar.close()
        if sampler_task:
            await sampler_task.stop()
    result = SweepResult(cells, records, probes)
    after = await _settled_scrape(cfg, before[0], result.requests_sent)
    if sampler_task:
        result.replica_trace = sampler_task.trace
    if before[0] is not None and after[0] is not None:
        result.server = prom.summarize_server(before[0], after[0])
        result.server["wall_s"] = time.perf_counter() - t_start
    else:
        result.metrics_error = before[1] or after[1]
    return result


async def _run_cell(
    client: AsyncClient,
    cfg: SweepConfig,
    spec: RequestSpec,
    load: float,
    index: int,
    bar: tqdm,
    base: float,
) -> list[Record]:
    """One cell; the bar advances with wall time inside [base, base + warmup + duration]."""
    counts = {"done": 0, "err": 0}
    label = f"{spec.sampler} K={spec.steps} {_fmt_load(cfg.mode, load)}"
    bar.set_description(label)
    t0 = time.perf_counter()

    def on_record(rec: Record) -> None:
        counts["done"] += 1
        counts["err"] += not rec.ok
        bar.set_postfix_str(f"done={counts['done']} err={counts['err']}", refresh=False)

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.5)
            elapsed = min(time.perf_counter() - t0, cfg.warmup + cfg.duration)
            bar.update(base + elapsed - bar.n)

    ticker = asyncio.create_task(tick())
    try:
        if cfg.mode == "closed":
            return await closed_loop(client, spec, int(load), cfg.duration, cfg.warmup, index, on_record)
        # Each cell gets its own arrival stream, reproducible from the seed and the cell's position.
        seed = cfg.seed * 1_000_003 + index
        return await open_loop(client, spec, load, cfg.duration, cfg.warmup, seed, index, on_record)
    finally:
        ticker.cancel()


async def _settled_scrape(cfg: SweepConfig, before: dict | None, sent: int) -> tuple[dict | None, str | None]:
    """Scrape after the run until the server's request counter has grown by what we sent and its NFE
    counter has stopped moving (3 s unchanged), or `settle` seconds pass: Ray's metrics agents export on
    an interval, and the Ingress (requests) and the model replicas (NFE) export independently, so the
    first scrapes can lag."""
    deadline = time.perf_counter() + cfg.settle
    nfe_seen, stable_since = None, 0.0
    while True:
        after = _scrape(cfg.metrics_url)
        if before is None or after[0] is None:
            return after
        summary = prom.summarize_server(before, after[0])
        now = time.perf_counter()
        if summary.get("nfe") != nfe_seen:
            nfe_seen, stable_since = summary.get("nfe"), now
        counted = (summary["requests"] or 0.0) >= sent
        if (counted and now - stable_since >= 3.0) or now > deadline:
            return after
        await asyncio.sleep(1.0)


def _scrape(url: str | None) -> tuple[dict | None, str | None]:
    if not url:
        return None, "no metrics URL given"
    try:
        return prom.scrape(url), None
    except (httpx.HTTPError, ValueError) as e:
        return None, f"metrics scrape of {url} failed: {type(e).__name__}: {e}"
