"""A model's replica: the checkpoint, a backend and the step-level engine over it.

It takes requests the HTTP edge has already validated (`sampling.request.validate`) and trusts them.
Results and refusals cross the Ray handle typed: a `SampleOutput`, or `Overloaded` (the engine is full;
the edge answers 503 with the engine's Retry-After), `RequestTimeout`, and for deadline requests with
`steps: "auto"` `DeadlineImpossible` / `DeadlineOverloaded` (`serving.policy.step_budget`).

A deadline crosses the handle as one absolute unix time, set once at the HTTP edge (the nodes' clocks agree
through NTP to far less than a deadline); the replica puts it on its engine's clock once
(`_on_engine_clock`). A deadline request's latency is predicted once, at the engine's admission, or for
steps "auto" once per candidate in the choice, the chosen one's prediction handed to the admission.
"""

from __future__ import annotations

import asyncio
import math
import pickle
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray import serve

from sampling.progress import Progress, with_progress
from sampling.request import Prepared, SampleSpec, clip_to_data, decoder_of, prepare, preview_of, to_data_space
from serving.autoscale import BACKLOG, MISS_RATE, REFUSAL_RATE, Outcomes
from serving.backends import load_backend
from serving.engine import DECODE_CHUNK, Engine, EngineLimits, Prediction, profile_decode
from serving.metrics import ModelMetrics
from serving.policy import admission
from serving.policy.admission import Snapshot
from serving.policy.step_budget import ArrivalRate, Calibration, Candidate, choose
from serving.policy.tick_model import TickModel, profile_tick_times, tick_profile_sizes
from serving.policy.tick_plan import efficient_rows
from serving.refusals import DeadlineImpossible, DeadlineOverloaded, Overloaded, RequestTimeout
from training.checkpoint import load_checkpoint

SNAPSHOT_EVERY_S = 0.02  # answers within this of the last load snapshot carry that one again
STREAM_INTERVAL_S = 0.025  # a streamed request's events reach the ingress in batches at most this often
TICK_MODEL_EXPORT_S = 0.5  # how often the tick model's gauges are refreshed (Ray exports metrics every ~1 s)


@dataclass(frozen=True)
class SampleOutput:
    """samples (N, *shape) float32 in data space; nfe as the API reports it; engine times in seconds;
    sampler and steps: what ran (chosen by the replica for steps "auto"); predicted_s: the replica's
    prediction of its time (deadline requests); quality: the profile's predicted quality (steps "auto")."""

    samples: np.ndarray
    nfe: int
    queue_s: float
    compute_s: float
    sampler: str
    steps: int
    predicted_s: float | None = None
    quality: float | None = None
    snapshot: Snapshot | None = None  # the engine's load as it answered (serving.api.door)


def replica_id() -> str:
    """This replica's Ray actor id ("local" outside Ray): whose load a snapshot is."""
    try:
        return ray.get_runtime_context().get_actor_id() or "local"
    except Exception:  # outside Ray (in-process benchmarks)
        return "local"


def replica_cpus() -> int:
    """Whole CPUs this replica was given (ray_actor_options.num_cpus, at least 1): torch's thread count.
    Ray sets OMP_NUM_THREADS, but torch's intra-op pool must be sized explicitly to match."""
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:  # outside Ray (in-process benchmarks)
        cpus = 1.0
    return max(1, math.floor(cpus))


class ModelReplica:
    """One model's replica: a backend and the step-level engine over it."""

    def __init__(
        self,
        name: str,
        path: str,
        backend: str = "torch",
        backend_options: dict[str, Any] | None = None,
        engine: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.ckpt = load_checkpoint(path)
        options = dict(backend_options or {})
        if backend in ("torch", "onnxruntime"):  # both would otherwise size their pools to every core
            options.setdefault("num_threads", replica_cpus())
        self.backend = load_backend(backend, self.ckpt, **options)
        self.metrics = ModelMetrics(name)
        self._tick_model_exported = 0.0
        limits = EngineLimits.from_options(**(engine or {}))
        sizes = tick_profile_sizes(limits.max_rows_per_tick, self.backend)
        profile = []
        if len(sizes) > 1:
            profile = profile_tick_times(self.backend, self.ckpt.data_shape, self.ckpt.null_label, sizes)
        # a latent model's decoder is the engine's decode stage: finished requests decoded together
        runtime = "torch" if backend == "torch" else "onnxruntime"
        # beside a torch backend on a GPU the torch decoder runs there too (ONNX decoders: onnxruntime's CPU)
        device = str(options.get("device", "cpu")) if backend == "torch" else "cpu"
        decode = decoder_of(self.ckpt, runtime, options.get("num_threads"), device)
        decode_model, decode_chunk = None, DECODE_CHUNK
        if decode is not None:  # past its chunk the decoder's rows/s fall (CPU caches)
            decode_chunk, decode_model = profile_decode(decode, self.ckpt.data_shape, self.ckpt.null_label)
        # streamed previews of a latent model: its preview map, else this decode
        self._previewer = preview_of(self.ckpt, decode)
        self.engine = Engine(
            self.backend,
            self.ckpt.null_label,
            limits,
            self._on_tick,
            TickModel(profile),
            decode=decode,
            decode_model=decode_model,
            decode_chunk=decode_chunk,
        )
        # steps "auto" scales the engine's predictions by how far they fell short lately (serving.policy.step_budget)
        self.calibration = Calibration()
        self.arrivals = ArrivalRate()  # every sampling request, for steps "auto"'s fair share (auto_utilization)
        self.metrics.set_in_flight(0)
        self.metrics.set_tick_model(self.engine.tick_model)
        self.replica_id = replica_id()
        self._snapshot: Snapshot | None = None
        # what the autoscaling policy reads (serving.autoscale): deadlines missed, requests refused for load
        self.deadlines = Outcomes()
        self.refusals = Outcomes()

    def _on_tick(self, rows: int, requests: int) -> None:
        self.metrics.on_tick(rows)
        now = time.monotonic()
        if now - self._tick_model_exported >= TICK_MODEL_EXPORT_S:  # a gauge: its last value per export is what counts
            self._tick_model_exported = now
            self.metrics.set_tick_model(self.engine.tick_model)

    async def sample(self, spec: SampleSpec, deadline_at: float | None = None) -> SampleOutput:
        """Run a validated request, due by `deadline_at` (unix time) or None; raises Overloaded when the engine
        refuses it (full, or its predicted wait over the bound) and RequestTimeout when it runs past the
        engine's request_timeout_s."""
        self.arrivals.arrived()
        job = prepare(self.ckpt, spec)
        if deadline_at is None:
            return await self._run(spec, job)
        return await self._run(spec, job, self._on_engine_clock(deadline_at), factor=self.calibration.factor())

    async def sample_auto(self, candidates: list[Candidate], deadline_at: float) -> SampleOutput:
        """Run the candidate `serving.policy.step_budget.choose` picks for `deadline_at` (unix time) under this
        replica's load; raises DeadlineImpossible / DeadlineOverloaded when none can meet it."""
        self.arrivals.arrived()
        deadline = self._on_engine_clock(deadline_at)
        factor = self.calibration.factor()
        predictions: dict[int, Prediction] = {}

        def predict(s: SampleSpec) -> float:
            predictions[id(s)] = p = self.engine.predict(s.rows, s.evaluations, deadline, s.num_samples)
            return factor * p.latency_s

        try:
            choice = choose(
                candidates,
                deadline - self.engine.clock(),
                predict,
                lambda s: self.engine.alone_s(s.rows, s.evaluations, s.num_samples),
                self.arrivals.share_s(self.engine.limits.auto_utilization),
                lambda s: self.engine.full_tick_s(s.rows, s.evaluations, s.num_samples),
            )
        except (DeadlineImpossible, DeadlineOverloaded) as e:
            self.metrics.rejected("deadline_impossible" if isinstance(e, DeadlineImpossible) else "deadline_load")
            if isinstance(e, DeadlineOverloaded):  # a miss more replicas would have prevented
                self.deadlines.record(bad=True)
                self.refusals.record(bad=True)
            e.snapshot = self.snapshot()  # the edge ranks a family's members from it (serving.api.door.outlook)
            raise
        spec = choice.candidate.spec
        self.metrics.chose(spec.sampler, spec.steps)
        job = prepare(self.ckpt, spec)  # no await from the prediction to the engine's admission: the same load
        return await self._run(spec, job, deadline, predictions[id(spec)], factor, choice.candidate.quality)

    def _on_engine_clock(self, deadline_at: float) -> float:
        """A unix time as a time on the engine's clock (the one conversion a deadline makes)."""
        return self.engine.clock() + (deadline_at - time.time())

    async def _run(
        self,
        spec: SampleSpec,
        job: Prepared,
        deadline: float | None = None,
        prediction: Prediction | None = None,
        factor: float = 1.0,
        quality: float | None = None,
    ) -> SampleOutput:
        """Submit a prepared request to the engine, with its metrics; the samples in data space. A deadline
        request's prediction (made here when `prediction` is None) is reported times the calibration `factor`
        it was chosen with, and its outcome calibrates later ones."""
        self.metrics.set_in_flight(self._load() + 1)
        try:
            res = await self.engine.submit(
                job.sampler, job.labels, spec.guidance, spec.evaluations, deadline, prediction
            )
        except Overloaded as e:
            self.metrics.rejected("overloaded")
            self.refusals.record(bad=True)
            if deadline is not None:
                self.deadlines.record(bad=True)
            e.snapshot = self.snapshot()  # the edge sheds from it (serving.api.door)
            raise
        except RequestTimeout:
            self.metrics.rejected("timeout")
            self.refusals.record(bad=False)  # admitted: it ran too long, which more replicas need not cure
            if deadline is not None:
                self.deadlines.record(bad=True)
            raise
        finally:
            self.metrics.set_in_flight(self._load())
        self.refusals.record(bad=False)
        predicted_s = None
        if deadline is not None:
            met = self.engine.clock() <= deadline
            self.metrics.deadline(met=met)
            self.deadlines.record(bad=not met)
            self.calibration.record(res.predicted_s, res.queue_s + res.compute_s)
            self.metrics.set_calibration(self.calibration.factor())
            predicted_s = factor * res.predicted_s
        self.metrics.finished(spec.sampler, spec.steps, res.nfe, spec.num_samples, res.queue_s)
        # (a decode stage has already decoded them)
        samples = clip_to_data(self.ckpt, res.samples) if self.engine.decode else to_data_space(self.ckpt, res.samples)
        return SampleOutput(
            samples,
            res.nfe,
            res.queue_s,
            res.compute_s,
            spec.sampler,
            spec.steps,
            predicted_s,
            quality,
            self.snapshot(),
        )

    def snapshot(self) -> Snapshot:
        """The engine's load now, as the HTTP edge reads it (`serving.api.door`); built at most every
        SNAPSHOT_EVERY_S (an answer within that carries the last one, whose taken_at says when it was)."""
        now = time.time()
        if self._snapshot is None or now - self._snapshot.taken_at >= SNAPSHOT_EVERY_S:
            e = self.engine
            factor = self.calibration.factor()
            self._snapshot = admission.snapshot(
                e.load(), e.clock(), e.tick_model, e.limits, self.replica_id, now, factor, e.decode_cost
            )
        return self._snapshot

    def record_routing_stats(self) -> dict[str, Any]:
        """Serve's controller polls this every request_routing_stats_period_s and hands it to the routers
        (serving.router): this replica's load snapshot, pickled (the controller need not import it)."""
        s = self.snapshot()
        return {"replica": s.replica, "taken_at": s.taken_at, "snapshot": pickle.dumps(s)}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics, read by `serving.autoscale.WorkPolicy`: seconds of work in flight
        and queued, the share of recent deadline requests missed and of recent requests refused for load."""
        e = self.engine
        return {
            BACKLOG: admission.drain_s(e.load(), e.tick_model, e.limits),
            MISS_RATE: self.deadlines.rate(),
            REFUSAL_RATE: self.refusals.rate(),
        }

    async def sample_stream(
        self, spec: SampleSpec, preview_every: int
    ) -> AsyncIterator[list[dict[str, Any]] | SampleOutput]:
        """Run a validated request as `sample` does, yielding lists of progress dicts, one dict per net
        evaluation (`progress_event`; a data-space preview every `preview_every` steps; a list holds every
        event since the last), and finally the `SampleOutput`.
        Refusals raise before anything is yielded. Closing or cancelling the stream drops the request from
        the engine."""
        self.arrivals.arrived()
        events: asyncio.Queue[Progress | None] = asyncio.Queue()
        job = prepare(self.ckpt, spec)
        # The engine advances the sampler on this event loop, so the wrapper may put to the queue directly.
        tracked = with_progress(
            job.sampler, self.ckpt.objective, spec.sampler, spec.steps, events.put_nowait, preview_every
        )
        run = asyncio.ensure_future(self._run(spec, Prepared(tracked, job.labels)))
        run.add_done_callback(lambda _: events.put_nowait(None))
        guided = spec.guidance is not None
        loop = asyncio.get_running_loop()
        last = loop.time()
        try:
            while True:
                # Every event queued since the last yield goes in one item, at most one item per
                # STREAM_INTERVAL_S (or at the end): each Ray stream item costs the replica time that a
                # per-evaluation item would add to every tick.
                batch = [await events.get()]
                if batch[0] is not None and (left := last + STREAM_INTERVAL_S - loop.time()) > 0:
                    await asyncio.wait([run], timeout=left)
                last = loop.time()
                while not events.empty():
                    batch.append(events.get_nowait())
                done = batch[-1] is None
                progress = [p for p in batch if p is not None]
                if progress:
                    yield [progress_event(p, guided, await self._preview(p)) for p in progress]
                if done:
                    break
            yield await run
        finally:
            run.cancel()

    async def _preview(self, p: Progress) -> np.ndarray | None:
        """A progress report's preview in data space, off the event loop (a decoder's preview, for a latent
        model without a preview map, takes as long as a decode; the engine's ticks wait on this loop)."""
        if p.preview is None:
            return None
        return await asyncio.to_thread(self._previewer, p.preview)

    def _load(self) -> int:
        s = self.engine.stats()
        return s.in_flight + s.queued

    async def load(self) -> dict[str, int | float]:
        """This replica's engine: requests in flight and queued, rows in flight, ticks run, its latency model
        (tick seconds = tick_fixed_s + tick_per_row_s x rows, plus tick_handoff_s for a tick too long to run
        on the event loop), the tick size its throughput guard may grow ticks to (efficient_rows), and the
        factor steps "auto" scales its predictions by (serving.policy.step_budget.Calibration)."""
        s = self.engine.stats()
        return {
            "in_flight": s.in_flight,
            "queued": s.queued,
            "rows_in_flight": s.rows_in_flight,
            "ticks": s.ticks,
            "express_ticks": s.express_ticks,
            "tick_fixed_s": self.engine.tick_model.fixed_s,
            "tick_per_row_s": self.engine.tick_model.per_row_s,
            "tick_handoff_s": self.engine.tick_model.handoff_s,
            "efficient_rows": efficient_rows(self.engine.tick_model, self.engine.policy),
            "prediction_factor": self.calibration.factor(),
        }


def progress_event(p: Progress, guided: bool, preview: np.ndarray | None) -> dict[str, Any]:
    """A progress event of a streamed request: step of steps, net evaluations so far (nfe: x2 when guided, as
    the response counts them) and, every preview_every steps, the data estimate in data space."""
    event: dict[str, Any] = {
        "step": p.step,
        "steps": p.steps,
        "evaluations": p.evaluation,
        "nfe": p.evaluation * (2 if guided else 1),
    }
    if preview is not None:
        event["preview"] = preview
    return event


# The config's `deployments` section overrides these defaults (replicas, autoscaling, resources).
ModelServer = serve.deployment(max_ongoing_requests=512)(ModelReplica)
