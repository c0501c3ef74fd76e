"""Step-level (continuous) batching: one net call per tick for every request in flight.

Each request holds its sampler generator (`sampling.request.prepare`). The engine is the loop: admit
waiting requests, plan the tick (`serving.policy.tick_plan`), gather each planned request's rows of its
pending `Evaluation` (guided rows doubled, `sampling.guidance.expand`) into one batch, run ONE backend call
off the event loop, scatter the output, and send each request whose evaluation is complete its prediction
(guided rows folded, `sampling.guidance.combine`). A request that finishes leaves at once; a new one joins at
the next tick, so a K = 5 request never waits behind a K = 500 one. One record per request
(`serving.policy.state.RequestState`) is what the planner plans over and the loop advances.

Admission (`serving.policy.admission`, over the snapshot `Engine.load`): a new request is refused at once
(`Overloaded`, with a Retry-After) when the count bounds are full or its predicted wait beyond its time
alone exceeds `max_wait_s`, instead of letting latency grow without limit. A request that runs past
`request_timeout_s` leaves the engine (its rows are freed) and raises `RequestTimeout`.

Express lane (`EngineLimits.express_lane`, for backends with `concurrent_calls`): while a tick too long for
the event loop runs in the engine's thread, the short or deadline requests left out of it tick on the event
loop beside it (`serving.policy.tick_plan`), so a short request does not wait for a long tick.

Decode stage (a latent model's, `decode` given): a request whose sampler finishes waits for the next decode
call instead of answering at once; after each tick every request finished since the last is decoded together,
in one call of the decoder (in pieces of `decode_chunk` rows, the size the replica measured fastest per row)
in the engine's thread, and answers with its images.
Its time is predicted from `decode_model` (fitted to a profile and to every call, like the tick model) and
counted in each request's predicted latency and in its compute time, and so are the decodes due before it: those
of requests already finished (`Load.decoding_s`) and of those ordered before it (`RequestState.decode_s`).

A request's noise comes from its own torch.Generator, so its samples do not depend on its batch
neighbours (up to float summation order inside the net's matmuls).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from sampling.samplers import SamplerGen
from serving.backends.base import Backend, forward_in_chunks, timed_forward
from serving.policy import admission, tick_plan
from serving.policy.admission import Prediction
from serving.policy.limits import EngineLimits
from serving.policy.state import Load, RequestState
from serving.policy.tick_model import DecodeCost, TickModel, profile_tick_times
from serving.refusals import RequestTimeout

__all__ = ["Engine", "EngineLimits", "EngineResult", "EngineStats", "Prediction"]

DECODE_CHUNK = 512  # rows per decoder call unless the replica measured a better size (best_decode_chunk)
DECODE_PROFILE_SIZES = (1, 16, 64, 256, 512)


def lower_thread_priority(by: int) -> None:
    """Raise the calling thread's niceness by `by` (capped at 19; Linux's niceness is per thread): the engine's
    thread runs the ticks too long for the event loop and the decodes, so that where cores are shared the
    event loop (express ticks, answers, admission), the Ingress and the proxy are scheduled first and the bulk
    work takes the time left, all of it when nothing else wants it. Where the system refuses, nothing changes."""
    if by and hasattr(os, "setpriority"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))


def best_decode_chunk(profile: list[tuple[int, float]]) -> int:
    """The profiled batch size with the most rows per second: on a CPU a conv decoder's throughput falls past a
    size whose activations leave the cache (torch: 64 rows of the shapes decoder here, bench.latent), so
    a burst of finished requests is decoded in pieces of that size."""
    return max(profile, key=lambda p: p[0] / max(p[1], 1e-12))[0] if profile else DECODE_CHUNK


def profile_decode(
    decode: Callable[[Tensor], Tensor], data_shape: tuple[int, ...], null_label: int
) -> tuple[int, TickModel]:
    """A decode stage's chunk (`best_decode_chunk`) and its time model, fitted to the sizes up to that chunk, from a
    start-up profile of `decode` at DECODE_PROFILE_SIZES."""
    profile = profile_tick_times(lambda x, t, y: decode(x), data_shape, null_label, DECODE_PROFILE_SIZES)
    chunk = best_decode_chunk(profile)
    return chunk, TickModel([p for p in profile if p[0] <= chunk])


@dataclass(frozen=True)
class EngineResult:
    """samples (N, *shape) in the sampler's space (for a decode stage, decoded); evaluations: net evaluations
    the sampler asked for; nfe: evaluations times 2 when guided (rows the net ran per sample); times in
    seconds; predicted_s: the latency predicted at admission (`admission.Prediction.latency_s`),
    against queue_s + compute_s."""

    samples: Tensor
    evaluations: int
    nfe: int
    queue_s: float
    compute_s: float
    predicted_s: float = 0.0


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
        decode: Callable[[Tensor], Tensor] | None = None,
        decode_model: TickModel | None = None,
        decode_chunk: int = DECODE_CHUNK,
    ) -> None:
        """tick_model: the replica's latency model, seeded from a profile of `backend` (`profile_tick_times`);
        None starts one with no profile. clock: the time deadlines are given in. decode: a latent model's
        decoder (samples (N, *shape) -> images), run as a batched stage after the ticks; decode_model: its
        time per call (a TickModel over decoded rows); decode_chunk: the most rows one decoder call takes."""
        self.backend = backend
        self.null_label = null_label
        self.limits = limits or EngineLimits()
        self.policy = self.limits.policy
        self.on_tick = on_tick
        self.clock = clock
        self._queue: deque[RequestState] = deque()
        self._active: list[RequestState] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        # One thread: backend calls are serialised (one net call per tick) and torch's own intra-op
        # threads do the parallel work. It runs at a lower OS priority (limits.bulk_nice).
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="engine-forward",
            initializer=lower_thread_priority,
            initargs=(self.limits.bulk_nice,),
        )
        self._ticks = 0
        self._seq = 0
        self._running_rows = 0  # rows of the tick running now (0 between ticks)
        self._running_since = 0.0
        self.tick_model = tick_model or TickModel()
        self.efficiency = tick_plan.Efficiency(self.policy.efficiency_window_s)
        # the express lane needs a backend whose forward may run in two threads at once
        self._lane = self.limits.express_lane and bool(getattr(backend, "concurrent_calls", False))
        self._express_ticks = 0
        self.decode = decode
        self.decode_model = decode_model or TickModel()
        self.decode_chunk = max(1, int(decode_chunk))
        self.decode_cost = DecodeCost(self.decode_model, self.decode_chunk) if decode is not None else None
        self._decode_started = 0.0  # when the decode call running now began (perf_counter)
        self._decoding: list[tuple[RequestState, Tensor]] = []  # finished, waiting for the next decode call
        self._decode_batch: list[tuple[RequestState, Tensor]] = []  # the one being decoded now
        self._decodes = 0

    def stats(self) -> EngineStats:
        rows = sum(j.rows for j in self._active)
        return EngineStats(len(self._active), len(self._queue), rows, self._ticks, self._express_ticks)

    def load(self) -> Load:
        """The engine's load now, what its predictions read (`serving.policy.admission`)."""
        running = (self._running_rows, self._running_since)
        return Load(
            tuple(self._active), tuple(self._queue), *running, self.efficiency.value(), self._lane, self._decoding_s()
        )

    def _decoding_s(self) -> float:
        """Predicted seconds of decoding still due for finished requests: those waiting for the next decode call
        and what is left of the one running now."""
        if self.decode_cost is None:
            return 0.0
        waiting = self.decode_s(sum(len(x) for _, x in self._decoding))
        if not self._decode_batch:
            return waiting
        running = self.decode_s(sum(len(x) for _, x in self._decode_batch))
        return waiting + max(0.0, running - (time.perf_counter() - self._decode_started))

    def alone_s(self, rows: int, evaluations: int, samples: int | None = None) -> float:
        """Seconds a request of `rows` rows x `evaluations` evaluations takes on an idle engine (with a decode
        stage, decoding its `samples` too; None: as many as rows)."""
        request = RequestState(rows, evaluations, decode_s=self.decode_s(rows if samples is None else samples))
        return admission.alone_s(request, self.tick_model, self.limits)

    def full_tick_s(self, rows: int, evaluations: int, samples: int | None = None) -> float:
        """Seconds of the engine's time a request of `rows` rows x `evaluations` evaluations takes when it shares
        full ticks (max_rows_per_tick rows) with others: its rows' part of each, at the most the engine batches
        (its time alone, `alone_s`, also pays each tick's fixed cost), with its decode."""
        cap = self.limits.max_rows_per_tick
        share = evaluations * rows * self.tick_model.tick_s(cap) / cap
        return share + self.decode_s(rows if samples is None else samples)

    def decode_s(self, samples: int) -> float:
        """Predicted seconds of decoding `samples` images (0 without a decode stage)."""
        return 0.0 if self.decode_cost is None else self.decode_cost.seconds(samples)

    def predict(
        self, rows: int, evaluations: int, deadline: float | None = None, samples: int | None = None
    ) -> Prediction:
        """How long a new request of `rows` rows x `evaluations` evaluations (deadline on `clock`, or None)
        would take under the load now (`admission.predict`), its decode included (`samples`; None: rows)."""
        decode_s = self.decode_s(rows if samples is None else samples)
        request = RequestState(rows, evaluations, deadline, decode_s=decode_s)
        return admission.predict(request, self.load(), self.clock(), self.tick_model, self.limits)

    @property
    def decodes(self) -> int:
        """Decoder calls run so far (each decodes every request finished since the one before)."""
        return self._decodes

    async def submit(
        self,
        gen: SamplerGen,
        y: Tensor,
        guidance: float | None = None,
        evaluations: int | None = None,
        deadline: float | None = None,
        prediction: Prediction | None = None,
    ) -> EngineResult:
        """Run sampler `gen` (labels y (N,), guidance w or None) to completion amid the other requests;
        `evaluations`: the net evaluations it will ask for (its work; None counts one); `deadline`: when it
        should be done, on `clock` (None: the default class); `prediction`: this request's `predict`, made
        against the load now (no await between), so a caller that has one does not predict it twice (None:
        predicted here). The result carries it (`predicted_s`).

        Raises Overloaded at once when the count bounds are full or the predicted wait exceeds max_wait_s;
        RequestTimeout when it runs past request_timeout_s. If the awaiting coroutine is cancelled (client
        gone), the request leaves the engine before the next tick."""
        lim = self.limits
        rows = int(y.shape[0]) * (2 if guidance is not None else 1)
        evaluations = evaluations or 1
        load = self.load()
        decode_s = self.decode_s(int(y.shape[0]))
        if prediction is None:
            request = RequestState(rows, evaluations, deadline, decode_s=decode_s)
            prediction = admission.predict(request, load, self.clock(), self.tick_model, lim)
        refused = admission.refusal(prediction, load, lim)
        if refused is not None:
            gen.close()
            raise refused
        self._seq += 1
        future = asyncio.get_running_loop().create_future()
        job = RequestState(
            rows, evaluations, deadline, self._seq, decode_s=decode_s, gen=gen, y=y, guidance=guidance, future=future
        )
        job.submitted = time.perf_counter()
        job.predicted_s = prediction.latency_s
        self._queue.append(job)
        self._ensure_running()
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), lim.request_timeout_s)
        except TimeoutError:
            self._drop(job)
            raise RequestTimeout(f"the request ran past the limit of {lim.request_timeout_s:g} s") from None
        except asyncio.CancelledError:
            self._drop(job)
            raise

    async def close(self) -> None:
        waiting = self._decoding + self._decode_batch  # (cancelling the loop clears the batch it decodes)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in list(self._active) + list(self._queue):
            self._drop(job)
        for job, _ in waiting + self._decoding:  # finished, never decoded: nothing will answer them
            if not job.future.done():
                job.future.cancel()
        self._decoding, self._decode_batch = [], []
        self._executor.shutdown(wait=False)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stepserve-engine")

    def _drop(self, job: RequestState) -> None:
        """Remove a request wherever it is; its generator is closed."""
        if job.done:  # finished: answered, or waiting for the decode stage (which skips a cancelled one)
            if not job.future.done():
                job.future.cancel()
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
            self._queue = deque(tick_plan.order(self._queue, self.policy))
        while self._queue and len(self._active) < self.limits.max_in_flight:
            job = self._queue[0]
            if self.policy.fifo and self._active and rows + job.rows > self.limits.max_rows_per_tick:
                break
            self._queue.popleft()
            job.admitted = now
            try:
                job.start(next(job.gen), self.null_label)
            except StopIteration as stop:  # a sampler that needs no evaluation (not one we ship)
                self._finish(job, stop.value)
                continue
            except Exception as e:
                self._fail(job, e)
                continue
            self._active.append(job)
            rows += job.rows

    def _express(self, job: RequestState, now: float) -> bool:
        return self._lane and tick_plan.express(job, now, self.tick_model, self.policy)

    def _gather(self, plan: list[tuple[RequestState, int]]) -> tuple[Tensor, Tensor, Tensor]:
        """The tick's rows: each planned request's next `n` rows of its current evaluation."""
        pieces = [j.next_rows(n) for j, n in plan]
        if len(pieces) == 1:  # a lone request: its rows as they are, no copy
            return pieces[0]
        return tuple(torch.cat([p[i] for p in pieces]) for i in range(3))  # type: ignore[return-value]

    def _scatter(self, plan: list[tuple[RequestState, int]], out: Tensor) -> None:
        """Each planned request's share of the output; a request whose evaluation is complete advances."""
        offset = 0
        for j, n in plan:
            chunk = out[offset : offset + n]
            offset += n
            if j.done:  # cancelled while the net ran
                continue
            pred = j.receive(chunk)
            if pred is not None:
                self._advance(j, pred)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._decoding:
                await self._decode_finished(loop)
            self._admit()
            if not self._active:
                self._wake.clear()
                if not self._queue and not self._decoding:
                    await self._wake.wait()
                continue
            started = time.perf_counter()  # the whole tick is timed: planning and bookkeeping cost per tick too
            now = self.clock()
            plan = tick_plan.plan_beside_lane(
                self._active, now, self.tick_model, self.policy, self.efficiency.value(), self._lane
            )
            lane: set[int] = set()  # the jobs that ran in the express lane beside this tick
            try:
                x, t, y = self._gather(plan)
                total = int(x.shape[0])
                self._running_rows, self._running_since = total, self.clock()
                inline = self.tick_model.inline(total)
                handoff = None
                waited = 0.0  # time awaited beyond the thread's: the handoff, and any express ticks meanwhile
                try:
                    if inline:
                        out = forward_in_chunks(self.backend, x, t, y)
                    else:
                        sent = time.perf_counter()
                        future = loop.run_in_executor(self._executor, timed_forward, self.backend, x, t, y)
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
                    j.idle_ticks = 0
                elif id(j) not in lane:
                    j.idle_ticks += 1
            self._scatter(plan, out)
            self.tick_model.observe(total, time.perf_counter() - started - waited, handoff)
            self.efficiency.record(total, self.clock(), self.tick_model, self.policy)
            if inline:  # finished requests answer, new ones and the HTTP edge get the loop, before the next tick
                await asyncio.sleep(0)

    async def _express_beside(self, future: asyncio.Future, running: list[tuple[RequestState, int]]) -> set[int]:
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
                ready = [j for j in self._active if id(j) not in busy and self._express(j, now)]
                if ready:
                    ran |= self._express_tick(ready)
                    if self._decoding:  # finished in the lane: decoded now, not after the long tick
                        self._decode_inline()
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

    def _express_tick(self, jobs: list[RequestState]) -> set[int]:
        """One short tick of express requests on the event loop (`tick_plan.plan_express_tick`); the ids of the
        jobs it ran. Those left out wait a tick longer (`idle_ticks`). A failure fails its own requests only.
        Its time is not observed by the tick model: it ran beside the thread's tick, on cores that tick was
        using, and would make short ticks look slow (which would shrink the inline limit and with it the
        lane). Nor does the throughput guard count it (`Efficiency`: the long ticks' size)."""
        plan: list[tuple[RequestState, int]] = []
        try:
            plan = tick_plan.plan_express_tick(jobs, self.clock(), self.tick_model, self.policy)
            out = forward_in_chunks(self.backend, *self._gather(plan))
            ran = {id(j) for j, _ in plan}
            for j in jobs:
                j.idle_ticks = 0 if id(j) in ran else j.idle_ticks + 1
            self._ticks += 1
            self._express_ticks += 1
            if self.on_tick is not None:
                self.on_tick(sum(n for _, n in plan), len(plan))
            self._scatter(plan, out)
            return ran
        except Exception as e:  # fail its requests, keep serving (if planning failed, the first of `jobs`, so
            # that the lane does not try the same again and again while the thread's tick runs)
            for j, _ in plan or [(j, 0) for j in jobs[:1]]:
                self._fail(j, e)
            return set()

    def _advance(self, job: RequestState, pred: Tensor) -> None:
        job.evaluations += 1
        try:
            job.start(job.gen.send(pred), self.null_label)
        except StopIteration as stop:
            self._finish(job, stop.value)
        except Exception as e:
            self._fail(job, e)

    def _leave(self, job: RequestState) -> None:
        job.done = True
        if job in self._active:
            self._active.remove(job)

    async def _decode_finished(self, loop: asyncio.AbstractEventLoop) -> None:
        """Decode every request finished since the last call together, in the engine's thread, and answer
        them; a failed decode fails those requests only."""
        batch = self._take_decoding()
        if not batch:
            return
        self._decode_batch = batch
        started = self._decode_started = time.perf_counter()
        try:
            out = await loop.run_in_executor(self._executor, self._decode_rows, self._rows_of(batch))
        except Exception as e:
            for j, _ in batch:
                self._fail(j, e)
            return
        finally:
            self._decode_batch = []
        self._answer_decoded(batch, out, time.perf_counter() - started)

    def _decode_inline(self) -> None:
        """The same on the event loop, for requests the express lane finished while the engine's thread runs a
        long tick (they would otherwise wait for it); not observed by the decode model (it ran beside the tick,
        on the cores the tick uses)."""
        batch = self._take_decoding()
        try:
            out = self._decode_rows(self._rows_of(batch)) if batch else None
        except Exception as e:
            for j, _ in batch:
                self._fail(j, e)
            return
        if out is not None:
            self._answer_decoded(batch, out, None)

    def _take_decoding(self) -> list[tuple[RequestState, Tensor]]:
        """The requests waiting for a decode, less those cancelled meanwhile (nothing to answer); emptied."""
        batch, self._decoding = self._decoding, []
        return [(j, x) for j, x in batch if not j.future.done()]

    @staticmethod
    def _rows_of(batch: list[tuple[RequestState, Tensor]]) -> Tensor:
        return torch.cat([x for _, x in batch]) if len(batch) > 1 else batch[0][1]

    def _answer_decoded(self, batch: list[tuple[RequestState, Tensor]], out: Tensor, seconds: float | None) -> None:
        self._decodes += 1
        rows = sum(len(x) for _, x in batch)
        if seconds is not None and rows <= self.decode_chunk:
            self.decode_model.observe(rows, seconds)
        offset = 0
        for j, x in batch:
            self._answer(j, out[offset : offset + len(x)])
            offset += len(x)

    def _decode_rows(self, rows: Tensor) -> Tensor:
        assert self.decode is not None
        with torch.inference_mode():
            c = self.decode_chunk
            out = torch.cat([self.decode(rows[i : i + c]) for i in range(0, len(rows), c)])
        if len(out) != len(rows):
            raise RuntimeError(f"the decoder returned {len(out)} rows for {len(rows)}")
        return out

    def _finish(self, job: RequestState, samples: Tensor) -> None:
        self._leave(job)
        if self.decode is not None:
            self._decoding.append((job, samples))
            self._wake.set()  # (an engine with nothing else in flight decodes at once)
            return
        self._answer(job, samples)

    def _answer(self, job: RequestState, samples: Tensor) -> None:
        compute = time.perf_counter() - job.admitted
        if not job.future.done():
            job.future.set_result(
                EngineResult(
                    samples=samples,
                    evaluations=job.evaluations,
                    nfe=job.evaluations * (2 if job.guidance is not None else 1),
                    queue_s=job.admitted - job.submitted,
                    compute_s=compute,
                    predicted_s=job.predicted_s,
                )
            )

    def _fail(self, job: RequestState, error: BaseException) -> None:
        self._leave(job)
        job.gen.close()
        if not job.future.done():
            job.future.set_exception(error)
