"""Step-level (continuous) batching: one net call per tick for every request in flight.

Each request holds its sampler generator (`sampling.request.prepare`). Every tick the engine gathers
the pending `Evaluation` of every in-flight request, doubles the rows of guided ones
(`sampling.guidance.expand`), concatenates them along the batch axis, runs ONE backend call off the event
loop, splits the output, folds guided rows (`sampling.guidance.combine`) and sends each request its prediction. A
request that finishes leaves at once; a new one joins at the next tick, so a K = 5 request never waits
behind a K = 500 one.

Bounds (`EngineLimits`): rows per tick (a request is admitted only when its rows fit beside the
others; a lone request is always admitted, validation keeps it within the bound), requests in flight
and waiting requests, and the predicted wait. Waiting is bounded by work, not by count: each request
carries its work (rows x net evaluations), and `submit` predicts how much longer than alone a new
request would take because of the others, from the replica's latency model (`serving.latency.TickModel`,
tick seconds as a function of rows): when its rows fit the next tick, its evaluations times the extra
tick time of the rows in flight; else the work ahead of it (every in-flight and queued request's
remaining rows x evaluations) at the full-tick throughput, plus its evaluations times the extra time of
a full tick. A request on an idle replica waits 0 whatever its size (the work cap bounds size). Past
`max_wait_s`,
or past the count bounds, `submit` raises `Overloaded` at once, with a Retry-After from that prediction
(the time for the work ahead to drain below the bound), instead of letting latency grow without limit.
A request that runs past `request_timeout_s` leaves the engine (its rows are freed) and raises
`RequestTimeout`.

Express lane (`EngineLimits.express_lane`, for backends with `concurrent_calls`): a tick too long for the
event loop goes to the engine's thread; the requests that limit the ticks they are in (a deadline, or short)
and whose rows make an inline tick are left out of it and, while it runs, tick on the event loop beside it.
A short request then does not wait for a long tick, and long ticks keep their size (measured in
docs/benchmarks.md: K = 5 under six K = 100 requests). Each request's rows still run once per evaluation,
in one lane at a time.

A request's noise comes from its own torch.Generator, so its samples do not depend on its batch
neighbours (up to float summation order inside the net's matmuls).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sampling.guidance import combine, expand
from sampling.samplers import Evaluation, SamplerGen
from serving.backends.base import Backend
from serving.latency import TickModel
from serving.refusals import Overloaded, RequestTimeout
from serving.scheduler import Efficiency, Load, Policy, Slot, allowance, plan_tick, predicted_latency
from serving.scheduler import order as order_slots


@dataclass(frozen=True)
class EngineLimits:
    """max_rows_per_tick: net rows per backend call (guided rows counted twice); max_in_flight: requests
    advancing together; max_queue: requests waiting to join."""

    max_rows_per_tick: int = 4096
    max_in_flight: int = 64
    max_queue: int = 256
    max_wait_s: float = 5.0  # refuse a request predicted to take longer than this beyond its time alone
    request_timeout_s: float = 300.0  # a request still running after this leaves the engine
    # Which rows run each tick (serving.scheduler): "deadline" (EDF, then least work first, under a per-tick
    # row budget) or "fifo" (every request every tick, whole).
    scheduling: str = "deadline"
    stretch: float = 1.5  # how much slower than alone others may make a request's ticks
    max_skip_ticks: int = 8  # no request waits longer than this many ticks between two advances
    efficiency: float = 0.9  # below this share of recent tick time on rows, ticks may always grow to it
    tick_efficiency: float = 0.95  # the efficiency guard's yardstick: ticks with this share on rows
    min_tick_rows: int = 256  # the efficient tick size is never taken below this
    size_ratio: float = 4.0  # a request without a deadline limits only the ticks of requests this many times its size
    # While a long tick runs in the engine's thread, short requests (`Engine.express`) tick on the event loop
    # beside it, when the backend allows two calls at once (`concurrent_calls`); see the module docstring.
    express_lane: bool = True

    def __post_init__(self) -> None:
        if self.max_rows_per_tick < 1 or self.max_in_flight < 1 or self.max_queue < 0:
            raise ValueError(f"engine limits must be positive (max_queue >= 0), got {self}")
        if not self.max_wait_s > 0 or not self.request_timeout_s > 0:
            raise ValueError(f"max_wait_s and request_timeout_s must be > 0, got {self}")
        if self.scheduling not in ("deadline", "fifo"):
            raise ValueError(f"scheduling must be 'deadline' or 'fifo', got {self.scheduling!r}")
        self.policy  # noqa: B018 -- checks stretch, max_skip_ticks and efficiency

    @property
    def policy(self) -> Policy:
        return Policy(
            max_rows_per_tick=self.max_rows_per_tick,
            stretch=self.stretch,
            max_skip_ticks=self.max_skip_ticks,
            efficiency=self.efficiency,
            tick_efficiency=self.tick_efficiency,
            min_tick_rows=self.min_tick_rows,
            size_ratio=self.size_ratio,
            fifo=self.scheduling == "fifo",
        )


@dataclass(frozen=True)
class EngineResult:
    """samples (N, *shape) in the sampler's space; evaluations: net evaluations the sampler asked for;
    nfe: evaluations times 2 when guided (rows the net ran per sample); times in seconds."""

    samples: Tensor
    evaluations: int
    nfe: int
    queue_s: float
    compute_s: float


@dataclass(eq=False)
class _Job:
    gen: SamplerGen
    y: Tensor  # (N,) long labels (class label or null label)
    guidance: float | None
    rows: int  # rows per evaluation: N, or 2N when guided
    planned: int  # net evaluations the sampler will ask for
    future: asyncio.Future
    submitted: float
    slot: Slot  # what the scheduler sees of it
    admitted: float = 0.0
    pending: tuple[Tensor, Tensor, Tensor] | None = None  # the current evaluation's rows (x, t, y), guided expanded
    parts: list[Tensor] = field(default_factory=list)  # outputs of its rows run so far in this evaluation
    evaluations: int = 0
    done: bool = field(default=False)

    @property
    def work_left(self) -> int:
        """Rows x evaluations still to run (at least one evaluation while it is not done)."""
        return self.rows * max(self.planned - self.evaluations, 1)

    def set_pending(self, ev: Evaluation, null_label: int) -> None:
        self.pending = expand(ev.x, ev.t, self.y, self.guidance is not None, null_label)
        self.parts = []
        self.slot.cursor = 0
        self.slot.evals_left = max(self.planned - self.evaluations, 1)


@dataclass(frozen=True)
class EngineStats:
    in_flight: int
    queued: int
    rows_in_flight: int
    ticks: int
    express_ticks: int = 0  # of the ticks, those of the express lane


class Engine:
    """Step-level batching over one backend. Create it inside the event loop's thread; call `submit`
    from coroutines on that loop.

    backend(x (B, *shape), t (B,), y (B,)) -> (B, *shape) runs on a single worker thread, so the loop
    keeps admitting requests while the net runs. on_tick(rows, requests) is called after each tick.
    """

    def __init__(
        self,
        backend: Backend,
        null_label: int,
        limits: EngineLimits | None = None,
        on_tick: Callable[[int, int], None] | None = None,
        tick_model: TickModel | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """tick_model: the replica's latency model, seeded from a profile of `backend` (`profile_backend`);
        None starts one with no profile. clock: the time deadlines are given in."""
        self.backend = backend
        self.null_label = null_label
        self.limits = limits or EngineLimits()
        self.policy = self.limits.policy
        self.on_tick = on_tick
        self.clock = clock
        self._queue: deque[_Job] = deque()
        self._active: list[_Job] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        # One thread: backend calls are serialised (one net call per tick) and torch's own intra-op
        # threads do the parallel work.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-forward")
        self._ticks = 0
        self._seq = 0
        self._running_rows = 0  # rows of the tick running now (0 between ticks)
        self._running_since = 0.0
        self.tick_model = tick_model or TickModel()
        self.efficiency = Efficiency(self.policy.efficiency_window_s)
        # the express lane needs a backend whose forward may run in two threads at once
        self._lane = self.limits.express_lane and bool(getattr(backend, "concurrent_calls", False))
        self._express_ticks = 0

    # -- public -------------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        return EngineStats(
            in_flight=len(self._active),
            queued=len(self._queue),
            rows_in_flight=sum(j.rows for j in self._active),
            ticks=self._ticks,
            express_ticks=self._express_ticks,
        )

    def work_ahead(self) -> int:
        """Rows x evaluations left of every request in flight or waiting."""
        return sum(j.work_left for j in self._active) + sum(j.work_left for j in self._queue)

    def alone_s(self, rows: int, evaluations: int) -> float:
        """Seconds a request of `rows` rows x `evaluations` evaluations takes on an idle engine."""
        cap = self.limits.max_rows_per_tick
        return evaluations * math.ceil(rows / cap) * self.tick_model.tick_s(min(rows, cap))

    def predicted_latency(self, rows: int, evaluations: int, deadline: float | None = None) -> float:
        """Seconds from now until a new request of `rows` rows x `evaluations` evaluations (deadline on
        `clock`, or None) would finish, given the requests in flight and queued. One that would tick in the
        express lane beside others' long ticks is predicted against the other express requests only."""
        if self.policy.fifo:
            return self.predicted_wait(rows, evaluations) + evaluations * self.tick_model.tick_s(rows)
        now = self.clock()
        jobs = [*self._active, *self._queue]
        load = Load([j.slot for j in jobs], self._running_rows, self._running_since, self.efficiency.value())
        if self._lane and jobs and self.tick_model.inline(rows):
            probe = Slot(rows, evaluations, deadline, seq=self._seq + 1)
            if math.isfinite(allowance(probe, now, self.tick_model, self.policy)):
                in_lane = [self.express(j, now) for j in jobs]
                others = sum(j.rows for j, e in zip(jobs, in_lane, strict=True) if not e)
                others = min(others, self.limits.max_rows_per_tick)
                if others and not self.tick_model.inline(others):  # it would tick beside the others' long ticks
                    load = Load([j.slot for j, e in zip(jobs, in_lane, strict=True) if e])
        return predicted_latency(rows, evaluations, deadline, load, now, self.tick_model, self.policy)

    def predicted_wait(self, rows: int, evaluations: int, deadline: float | None = None) -> float:
        """Seconds a new request would take beyond its time alone. Under FIFO: when it fits the next tick,
        its evaluations times the extra tick time of the rows in flight; else the work ahead at the
        full-tick throughput plus its evaluations times the extra time of a full tick. Under the deadline
        policy: `serving.scheduler.predicted_latency` minus its time alone."""
        lim = self.limits
        model = self.tick_model
        alone = model.tick_s(rows)
        if not self.policy.fifo:
            return max(0.0, self.predicted_latency(rows, evaluations, deadline) - evaluations * alone)
        in_flight_rows = sum(j.rows for j in self._active)
        fits = in_flight_rows + rows <= lim.max_rows_per_tick or not self._active
        if not self._queue and fits and len(self._active) < lim.max_in_flight:
            return evaluations * (model.tick_s(in_flight_rows + rows) - alone)
        full = lim.max_rows_per_tick
        tick = model.tick_s(full)
        return self.work_ahead() * tick / full + evaluations * max(tick - alone, 0.0)

    async def submit(
        self,
        gen: SamplerGen,
        y: Tensor,
        guidance: float | None = None,
        evaluations: int | None = None,
        deadline: float | None = None,
    ) -> EngineResult:
        """Run sampler `gen` (labels y (N,), guidance w or None) to completion amid the other requests;
        `evaluations`: the net evaluations it will ask for (its work; None counts one); `deadline`: when it
        should be done, on `clock` (None: the default class).

        Raises Overloaded at once when the count bounds are full or the predicted wait exceeds max_wait_s;
        RequestTimeout when it runs past request_timeout_s. If the awaiting coroutine is cancelled (client
        gone), the request leaves the engine before the next tick."""
        lim = self.limits
        rows = int(y.shape[0]) * (2 if guidance is not None else 1)
        evaluations = evaluations or 1
        if len(self._active) + len(self._queue) >= lim.max_in_flight + lim.max_queue:
            gen.close()
            wait = self.predicted_wait(rows, evaluations, deadline)
            raise Overloaded(
                f"engine full: {len(self._active)} requests in flight, {len(self._queue)} queued",
                _retry_after(wait, lim.max_wait_s),
            )
        wait = self.predicted_wait(rows, evaluations, deadline)
        if wait > lim.max_wait_s:
            gen.close()
            raise Overloaded(
                f"predicted wait {wait:.1f} s exceeds the bound of {lim.max_wait_s:g} s",
                _retry_after(wait, lim.max_wait_s),
            )
        loop = asyncio.get_running_loop()
        self._seq += 1
        slot = Slot(rows, evaluations, deadline, self._seq)
        job = _Job(gen, y, guidance, rows, evaluations, loop.create_future(), time.perf_counter(), slot)
        self._queue.append(job)
        self._ensure_running()
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), lim.request_timeout_s)
        except TimeoutError:
            self._drop(job)
            raise RequestTimeout(f"the request ran past the limit of {lim.request_timeout_s:g} s") from None
        except asyncio.CancelledError:
            self._drop(job)
            raise

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in list(self._active) + list(self._queue):
            self._drop(job)
        self._executor.shutdown(wait=False)

    # -- the loop -----------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stepserve-engine")

    def _drop(self, job: _Job) -> None:
        """Remove a request wherever it is; its generator is closed."""
        if job.done:
            return
        job.done = True
        if job in self._active:
            self._active.remove(job)
        else:
            with contextlib.suppress(ValueError):
                self._queue.remove(job)
        job.gen.close()
        if not job.future.done():
            job.future.cancel()
        self._wake.set()  # a place in flight may have come free

    def _admit(self) -> None:
        """Move waiting requests in while the in-flight bound allows: under FIFO in arrival order and while
        their rows fit one tick beside the others; under the deadline policy most urgent first, whatever
        their rows (the per-tick budget decides what runs)."""
        rows = sum(j.rows for j in self._active)
        now = time.perf_counter()
        if not self.policy.fifo and len(self._queue) > 1:
            ranked = {id(s): i for i, s in enumerate(order_slots([j.slot for j in self._queue], self.policy))}
            self._queue = deque(sorted(self._queue, key=lambda j: ranked[id(j.slot)]))
        while self._queue and len(self._active) < self.limits.max_in_flight:
            job = self._queue[0]
            if self.policy.fifo and self._active and rows + job.rows > self.limits.max_rows_per_tick:
                break
            self._queue.popleft()
            job.admitted = now
            try:
                job.set_pending(next(job.gen), self.null_label)
            except StopIteration as stop:  # a sampler that needs no evaluation (not one we ship)
                self._finish(job, stop.value)
                continue
            except Exception as e:
                self._fail(job, e)
                continue
            self._active.append(job)
            rows += job.rows

    def express(self, job: _Job, now: float) -> bool:
        """Whether `job` may tick in the express lane: the lane is on and the backend allows two calls at once,
        the job limits the ticks it is in (a finite `allowance`: a deadline, or a short request) and its rows
        alone make a tick short enough to run on the event loop."""
        return (
            self._lane
            and self.tick_model.inline(job.rows)
            and math.isfinite(allowance(job.slot, now, self.tick_model, self.policy))
        )

    def _plan(self, jobs: list[_Job], recent_efficiency: float) -> list[tuple[_Job, int]]:
        by_slot = {id(j.slot): j for j in jobs}
        slots = [j.slot for j in jobs]
        return [
            (by_slot[id(s)], n)
            for s, n in plan_tick(slots, self.clock(), self.tick_model, self.policy, recent_efficiency)
        ]

    def _gather(self, plan: list[tuple[_Job, int]]) -> tuple[Tensor, Tensor, Tensor]:
        """The tick's rows: each planned request's next `n` rows of its current evaluation."""
        pieces = []
        for j, n in plan:
            x, t, y = j.pending
            c = j.slot.cursor
            pieces.append((x[c : c + n], t[c : c + n], y[c : c + n]) if c or n < j.rows else j.pending)
        if len(pieces) == 1:  # a lone request: its rows as they are, no copy
            return pieces[0]
        return tuple(torch.cat([p[i] for p in pieces]) for i in range(3))  # type: ignore[return-value]

    def _scatter(self, plan: list[tuple[_Job, int]], out: Tensor) -> None:
        """Each planned request's share of the output; a request whose evaluation is complete advances."""
        offset = 0
        for j, n in plan:
            chunk = out[offset : offset + n]
            offset += n
            if j.done:  # cancelled while the net ran
                continue
            j.parts.append(chunk)
            j.slot.cursor += n
            if j.slot.cursor >= j.rows:
                pred = j.parts[0] if len(j.parts) == 1 else torch.cat(j.parts)
                self._advance(j, combine(pred, j.guidance))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._admit()
            if not self._active:
                self._wake.clear()
                if not self._queue:
                    await self._wake.wait()
                continue
            started = time.perf_counter()  # the whole tick is timed: planning and bookkeeping cost per tick too
            efficiency = self.efficiency.value()
            plan = None
            lane: set[int] = set()  # the jobs that ran in the express lane beside this tick
            if self._lane and not self.policy.fifo and len(self._active) > 1:
                now = self.clock()
                express = {id(j) for j in self._active if self.express(j, now)}
                if 0 < len(express) < len(self._active):  # the express requests may tick beside the others
                    plan = self._plan([j for j in self._active if id(j) not in express], efficiency)
                    if self.tick_model.inline(sum(n for _, n in plan)):
                        plan = None  # a short tick anyway: one tick for all, as without the lane
            if plan is None:
                plan = self._plan(self._active, efficiency)
            try:
                x, t, y = self._gather(plan)
                total = int(x.shape[0])
                self._running_rows, self._running_since = total, self.clock()
                inline = self.tick_model.inline(total)
                handoff = None
                waited = 0.0  # time awaited beyond the thread's: the handoff, and any express ticks meanwhile
                try:
                    if inline:
                        out = self._forward_chunked(x, t, y)
                    else:
                        sent = time.perf_counter()
                        future = loop.run_in_executor(self._executor, self._timed_forward, x, t, y)
                        lane = await self._express_beside(future, plan)
                        out, in_thread = future.result()
                        waited = max(0.0, time.perf_counter() - sent - in_thread)
                        if not lane:  # else the wait also held express ticks: not a handoff's measure
                            handoff = waited
                finally:
                    self._running_rows = 0
                self._ticks += 1
                if self.on_tick is not None:
                    self.on_tick(total, len(plan))
            except Exception as e:  # the tick failed (backend or bookkeeping): fail its requests, keep serving
                for j, _ in plan:
                    self._fail(j, e)
                continue
            ran = {id(j) for j, _ in plan}
            for j in self._active:
                if id(j) in ran:
                    j.slot.idle_ticks = 0
                elif id(j) not in lane:
                    j.slot.idle_ticks += 1
            self._scatter(plan, out)
            self.tick_model.observe(total, time.perf_counter() - started - waited, handoff)
            self.efficiency.record(total, self.clock(), self.tick_model, self.policy)
            if inline:  # finished requests answer, new ones and the HTTP edge get the loop, before the next tick
                await asyncio.sleep(0)

    async def _express_beside(self, future: asyncio.Future, running: list[tuple[_Job, int]]) -> set[int]:
        """Wait for the handed-off tick `future`; meanwhile, in the express lane, tick the express requests that
        are not in it on the event loop (admitting new ones first). Returns the ids of the jobs that ran in an
        express tick meanwhile (empty: none ran)."""
        if not self._lane or self.policy.fifo:
            await future
            return set()
        loop = asyncio.get_running_loop()
        busy = {id(j) for j, _ in running}
        ran: set[int] = set()
        try:
            while not future.done():
                self._admit()
                now = self.clock()
                ready = [j for j in self._active if id(j) not in busy and self.express(j, now)]
                if ready:
                    ran |= self._express_tick(ready)
                    await asyncio.sleep(0)  # answers go out, new requests come in
                    continue
                self._wake.clear()
                woken = loop.create_task(self._wake.wait())
                try:
                    await asyncio.wait({future, woken}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
        except BaseException:  # cancelled (close) or failed: the tick's outcome is not awaited any more
            future.cancel()
            raise
        return ran

    def _express_tick(self, jobs: list[_Job]) -> set[int]:
        """One short tick of express requests on the event loop, at most what runs inline (the first always);
        the ids of the jobs it ran. Those left out wait a tick longer (`idle_ticks`). A failure fails its own
        requests only. Its time is not observed by the tick model: it ran beside the thread's tick, on cores
        that tick was using, and would make short ticks look slow (which would shrink the inline limit and
        with it the lane). Nor does the throughput guard count it (`Efficiency`: the long ticks' size)."""
        plan: list[tuple[_Job, int]] = []
        try:
            limit = self.tick_model.rows_within(self.tick_model.inline_s, self.limits.max_rows_per_tick)
            total = 0
            for j, n in self._plan(jobs, 1.0):  # no throughput floor: these ticks are short by design
                if plan and total + n > limit:
                    continue
                plan.append((j, n))
                total += n
            out = self._forward_chunked(*self._gather(plan))
            ran = {id(j) for j, _ in plan}
            for j in jobs:
                j.slot.idle_ticks = 0 if id(j) in ran else j.slot.idle_ticks + 1
            self._ticks += 1
            self._express_ticks += 1
            if self.on_tick is not None:
                self.on_tick(total, len(plan))
            self._scatter(plan, out)
            return ran
        except Exception as e:  # fail its requests, keep serving (if planning failed, the first of `jobs`, so
            # that the lane does not try the same again and again while the thread's tick runs)
            for j, _ in plan or [(j, 0) for j in jobs[:1]]:
                self._fail(j, e)
            return set()

    def _timed_forward(self, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, float]:
        """`_forward_chunked` and the seconds it took, timed in the thread it runs on."""
        start = time.perf_counter()
        out = self._forward_chunked(x, t, y)
        return out, time.perf_counter() - start

    def _forward_chunked(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """One backend call, or several in a row when the tick exceeds the backend's `max_batch` (a TensorRT
        profile's maximum); requests are unaffected since rows are independent."""
        max_batch = self.backend.max_batch
        if not max_batch or x.shape[0] <= max_batch:
            return self.backend(x, t, y)
        outs = [
            self.backend(x[i : i + max_batch], t[i : i + max_batch], y[i : i + max_batch])
            for i in range(0, x.shape[0], max_batch)
        ]
        return torch.cat(outs)

    def _advance(self, job: _Job, pred: Tensor) -> None:
        job.evaluations += 1
        try:
            job.set_pending(job.gen.send(pred), self.null_label)
        except StopIteration as stop:
            self._finish(job, stop.value)
        except Exception as e:
            self._fail(job, e)

    def _leave(self, job: _Job) -> None:
        job.done = True
        if job in self._active:
            self._active.remove(job)

    def _finish(self, job: _Job, samples: Tensor) -> None:
        self._leave(job)
        compute = time.perf_counter() - job.admitted
        if not job.future.done():
            job.future.set_result(
                EngineResult(
                    samples=samples,
                    evaluations=job.evaluations,
                    nfe=job.evaluations * (2 if job.guidance is not None else 1),
                    queue_s=job.admitted - job.submitted,
                    compute_s=compute,
                )
            )

    def _fail(self, job: _Job, error: BaseException) -> None:
        self._leave(job)
        job.gen.close()
        if not job.future.done():
            job.future.set_exception(error)


def _retry_after(wait_s: float, bound_s: float) -> int:
    """Seconds until the work ahead has drained below the wait bound, in [1, 60]."""
    return int(min(60, max(1, math.ceil(wait_s - bound_s))))
