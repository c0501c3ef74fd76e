"""A model's replica: the checkpoint, a backend and the step-level engine over it.

It takes requests the HTTP edge has already validated (`sampling.request.validate`) and trusts them.
Results and refusals cross the Ray handle typed: a `SampleOutput`, or `Overloaded` (the engine is full;
the edge answers 503 with the engine's Retry-After).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray import serve

from sampling.request import SampleSpec, prepare, to_data_space
from serving.backends import load_backend
from serving.engine import Engine, EngineLimits, Overloaded, RequestTimeout
from serving.latency import TickModel, profile_backend
from serving.metrics import ModelMetrics
from training.checkpoint import load_checkpoint

TICK_MODEL_EXPORT_S = 0.5  # how often the tick model's gauges are refreshed (Ray exports metrics every ~1 s)


@dataclass(frozen=True)
class SampleOutput:
    """samples (N, *shape) float32 in data space; nfe as the API reports it; engine times in seconds."""

    samples: np.ndarray
    nfe: int
    queue_s: float
    compute_s: float


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
        limits = EngineLimits(**(engine or {}))
        top = limits.max_rows_per_tick
        profile = profile_backend(self.backend, self.ckpt.data_shape, self.ckpt.null_label, (1, 64, min(1024, top)))
        self.engine = Engine(self.backend, self.ckpt.null_label, limits, self._on_tick, TickModel(profile))
        self.metrics.set_in_flight(0)
        self.metrics.set_tick_model(self.engine.tick_model.fixed_s, self.engine.tick_model.per_row_s)

    def _on_tick(self, rows: int, requests: int) -> None:
        self.metrics.on_tick(rows, requests)
        now = time.monotonic()
        if now - self._tick_model_exported >= TICK_MODEL_EXPORT_S:  # a gauge: its last value per export is what counts
            self._tick_model_exported = now
            self.metrics.set_tick_model(self.engine.tick_model.fixed_s, self.engine.tick_model.per_row_s)

    async def sample(self, spec: SampleSpec) -> SampleOutput:
        """Run a validated request; raises Overloaded when the engine refuses it (full, or its predicted wait
        over the bound) and RequestTimeout when it runs past the engine's request_timeout_s."""
        job = prepare(self.ckpt, spec)
        self.metrics.set_in_flight(self._load() + 1)
        try:
            res = await self.engine.submit(job.sampler, job.labels, spec.guidance, spec.evaluations)
        except Overloaded:
            self.metrics.rejected("overloaded")
            raise
        except RequestTimeout:
            self.metrics.rejected("timeout")
            raise
        finally:
            self.metrics.set_in_flight(self._load())
        self.metrics.finished(spec.sampler, spec.steps, res.nfe, spec.num_samples, res.queue_s)
        return SampleOutput(to_data_space(self.ckpt, res.samples), res.nfe, res.queue_s, res.compute_s)

    def _load(self) -> int:
        s = self.engine.stats()
        return s.in_flight + s.queued

    async def load(self) -> dict[str, int]:
        """This replica's engine: requests in flight and queued, rows in flight, ticks run."""
        s = self.engine.stats()
        return {"in_flight": s.in_flight, "queued": s.queued, "rows_in_flight": s.rows_in_flight, "ticks": s.ticks}


# The config's `deployments` section overrides these defaults (replicas, autoscaling, resources).
ModelServer = serve.deployment(max_ongoing_requests=512)(ModelReplica)
