"""The Ray Serve application: a FastAPI ingress plus one deployment per model, called through handles.

Built from a Serve config file (`deploy/serve.yaml`): `import_path: serving.app:build_app` and
`args` (validated by `AppArgs`) name the models, their backends, request limits and engine bounds;
the config's `deployments` section sets replicas, resources, autoscaling and max_ongoing_requests.
Deployment names: `Ingress` and one per model id (`moons-fm`, ...).
"""

import asyncio
import dataclasses
import json
import math
import secrets
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from sampling import guidance as cfg
from sampling import samplers
from serving.api import (
    SAMPLERS,
    Limits,
    ModelInfo,
    RequestError,
    SampleRequest,
    SampleResponse,
    check_request,
    error_from_pydantic,
    model_info,
)
from serving.backends import load_backend
from serving.engine import Engine, EngineLimits, Overloaded
from serving.metrics import IngressMetrics, ModelMetrics
from sampling.render import render_base64
from training.checkpoint import load_checkpoint

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ModelArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = None  # checkpoint dir; default <models_dir>/<model id>
    backend: str = "torch"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)  # overrides of the app-wide limits


class AppArgs(BaseModel):
    """The `args` of the application in a Serve config file."""

    model_config = ConfigDict(extra="forbid")
    models_dir: str = "models"  # relative paths resolve against the project root
    models: dict[str, ModelArgs]
    limits: dict[str, Any] = Field(default_factory=dict)
    engine: dict[str, Any] = Field(default_factory=dict)
    max_body_bytes: int = 64 * 1024
    # "step": the step-level engine; "request": Ray Serve's request-level @serve.batch (benchmark baseline)
    batching: Literal["step", "request"] = "step"
    # Deployment options by deployment name, for applications built in code (tests, benchmarks); in a
    # Serve config file use its `deployments` section instead, which takes precedence over these.
    deployment_options: dict[str, dict[str, Any]] = Field(default_factory=dict)


def _resolve(path: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else PROJECT_ROOT / p)


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
        self.engine = Engine(self.backend, self.ckpt.null_label, EngineLimits(**(engine or {})), self.metrics.on_tick)

    async def sample(self, req: dict[str, Any]) -> dict[str, Any]:
        """req: a validated SampleRequest as a dict (seed set) -> {samples (N, *shape) float32 numpy in data
        space, nfe, queue_s, compute_s} or {error: {status, field, message, retry_after?}}."""
        n = req["num_samples"]
        try:
            noise, gen = samplers.initial_noise(self.ckpt.data_shape, n, req["seed"])
            sampler = samplers.start(
                req["sampler"],
                self.ckpt.objective,
                noise,
                req["steps"],
                gen,
                eta=req.get("eta"),
                spacing=req.get("spacing"),
            )
        except ValueError as e:
            return RequestError("sampler", str(e)).to_json()
        y = cfg.labels(n, req.get("class_label"), self.ckpt.null_label)
        self.metrics.set_in_flight(self._load() + 1)
        try:
            res = await self.engine.submit(sampler, y, req.get("guidance"))
        except Overloaded as e:
            self.metrics.rejected("engine_full")
            err = RequestError("body", f"{self.name} is at capacity ({e}); retry later", 503).to_json()
            err["error"]["retry_after"] = e.retry_after
            return err
        finally:
            self.metrics.set_in_flight(self._load())
        self.metrics.finished(req["sampler"], req["steps"], res.nfe, n, res.queue_s)
        x = self.ckpt.normalization.denormalize(res.samples)
        if self.ckpt.data_kind == "digits":
            x = x.clamp(0.0, 1.0)
        return {"samples": x.numpy(), "nfe": res.nfe, "queue_s": res.queue_s, "compute_s": res.compute_s}

    def _load(self) -> int:
        s = self.engine.stats()
        return s.in_flight + s.queued

    async def load(self) -> dict[str, int]:
        """This replica's engine: requests in flight and queued, rows in flight, ticks run."""
        s = self.engine.stats()
        return {
            "in_flight": s.in_flight,
            "queued": s.queued,
            "rows_in_flight": s.rows_in_flight,
            "ticks": s.ticks,
        }


# The config's `deployments` section overrides these defaults (replicas, autoscaling, resources).
ModelServer = serve.deployment(max_ongoing_requests=512)(ModelReplica)


api = FastAPI(
    title="stepserve",
    version="0.1.0",
    description="Samples from diffusion (DDPM) and flow-matching models with a step budget K and guidance w.",
)


class BodySizeLimit:
    """ASGI middleware: bodies over `app.state.max_body_bytes` get 413 before any parsing. Counts the bytes
    received, so a body without Content-Length (chunked) is bounded too."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = getattr(scope["app"].state, "max_body_bytes", 64 * 1024)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await self._refuse(send, limit)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Any, limit: int) -> None:
        body = json.dumps(RequestError("body", f"request body over {limit} bytes", 413).to_json()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


api.add_middleware(BodySizeLimit)


def _error(err: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.to_json(), status_code=err.status, headers=headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = error_from_pydantic(list(exc.errors()))
    ingress = request.app.state.ingress
    body = exc.body if isinstance(exc.body, dict) else {}
    ingress.record(body.get("model"), body.get("sampler"), err.status, 0.0)
    return _error(err)


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Last resort: every expected failure is a RequestError with a 4xx / 503 before reaching here.
    return JSONResponse(
        {"error": {"status": 500, "field": None, "message": f"internal error: {type(exc).__name__}"}},
        status_code=500,
    )


@serve.deployment(max_ongoing_requests=1024)
@serve.ingress(api)
class Ingress:
    """HTTP: validates requests, calls the model deployments through handles, renders responses."""

    def __init__(
        self, models: dict[str, DeploymentHandle], infos: dict[str, dict[str, Any]], max_body_bytes: int
    ) -> None:
        self.handles = models
        self.infos = {name: ModelInfo.from_dict(info) for name, info in infos.items()}
        self.metrics = IngressMetrics()
        api.state.ingress = self
        api.state.max_body_bytes = max_body_bytes

    def record(self, model: Any, sampler: Any, status: int, seconds: float) -> None:
        """Metrics tags only take known values (bounded label sets): anything else is "unknown"."""
        model = model if model in self.infos else "unknown"
        sampler = sampler if sampler in SAMPLERS else "unknown"
        self.metrics.record(model, sampler, status, seconds)

    @api.post("/v1/samples", response_model=SampleResponse, response_model_exclude_none=False)
    async def samples(self, req: SampleRequest) -> Any:
        """Draw `num_samples` samples of `model` with `sampler` in `steps` steps (guidance w optional)."""
        t0 = time.perf_counter()
        status = 200
        try:
            info = self.infos.get(req.model)
            if info is None:
                raise RequestError("model", f"unknown model {req.model!r}; served: {sorted(self.infos)}", 404)
            check_request(req, info)
            payload = req.model_dump()
            payload["seed"] = req.seed if req.seed is not None else secrets.randbits(63)
            try:
                out = await self.handles[req.model].sample.remote(payload)
            except (BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError, RayActorError) as e:
                # The model deployment is saturated at Serve's level or has no live replica right now.
                raise RequestError("model", f"{req.model} is unavailable right now ({type(e).__name__})", 503) from e
            if "error" in out:
                e = out["error"]
                status = e["status"]
                headers = {"Retry-After": str(e["retry_after"])} if "retry_after" in e else None
                return JSONResponse(out, status_code=status, headers=headers)
            x: np.ndarray = out["samples"]
            image = await asyncio.to_thread(render_base64, x) if req.format == "png" else None
            total = time.perf_counter() - t0
            return SampleResponse(
                model=req.model,
                sampler=req.sampler,
                steps=req.steps,
                num_samples=req.num_samples,
                guidance=req.guidance,
                class_label=req.class_label,
                seed=payload["seed"],
                nfe=out["nfe"],
                shape=list(x.shape),
                samples=None if image is not None else x.tolist(),
                image=image,
                timing={
                    "queue_ms": 1e3 * out["queue_s"],
                    "compute_ms": 1e3 * out["compute_s"],
                    "total_ms": 1e3 * total,
                },
            )
        except RequestError as err:
            status = err.status
            return _error(err, {"Retry-After": "1"} if err.status == 503 else None)
        except Exception:
            status = 500  # answered by the last-resort handler; counted as what it is
            raise
        finally:
            self.record(req.model, req.sampler, status, time.perf_counter() - t0)

    @api.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        """Every served model's metadata."""
        return {"models": [info.to_json() for info in self.infos.values()]}

    @api.get("/v1/models/{model_id}")
    async def get_model(self, model_id: str) -> Any:
        """One model's metadata (kind, net, data shape, classes, samplers, limits) and one replica's load."""
        info = self.infos.get(model_id)
        if info is None:
            return _error(RequestError("model_id", f"unknown model {model_id!r}; served: {sorted(self.infos)}", 404))
        return {**info.to_json(), "replica_load": await self.handles[model_id].load.remote()}

    @api.get("/healthz")
    async def healthz(self) -> Any:
        """200 when every model deployment answers within 5 s, else 503 naming those that did not."""
        names = list(self.handles)
        calls = [asyncio.wait_for(self.handles[n].load.remote(), 5.0) for n in names]
        results = await asyncio.gather(*calls, return_exceptions=True)
        down = [n for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]
        body = {"status": "ok" if not down else "unavailable", "models": names, "unavailable": down}
        return JSONResponse(body, status_code=200 if not down else 503)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application from a Serve config's `args` (see AppArgs)."""
    a = AppArgs.model_validate(args)
    engine = EngineLimits(**a.engine)
    from serving.baseline import RequestBatchedModelServer  # only the benchmark's baseline uses it

    server = ModelServer if a.batching == "step" else RequestBatchedModelServer
    handles, infos = {}, {}
    for name, m in a.models.items():
        path = _resolve(m.path or str(Path(a.models_dir) / name))
        limits = Limits(**{**a.limits, **m.limits})
        if 2 * limits.max_num_samples > engine.max_rows_per_tick:
            raise ValueError(
                f"model {name}: 2 x max_num_samples ({2 * limits.max_num_samples}) must fit "
                f"engine.max_rows_per_tick ({engine.max_rows_per_tick}) so a guided request fits one tick"
            )
        infos[name] = dataclasses.asdict(model_info(name, path, m.backend, limits))
        opts = a.deployment_options.get(name, {})
        handles[name] = server.options(name=name, **opts).bind(name, path, m.backend, m.backend_options, a.engine)
    ingress = Ingress.options(name="Ingress", **a.deployment_options.get("Ingress", {}))
    return ingress.bind(handles, infos, a.max_body_bytes)


__all__ = ["AppArgs", "Ingress", "ModelServer", "build_app", "replica_cpus"]
