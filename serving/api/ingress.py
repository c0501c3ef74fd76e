"""The HTTP ingress: FastAPI routes on a Serve deployment that calls the model deployments by handle.

The path of a request: Serve's proxy -> `Ingress.samples` (pydantic types, model lookup,
`SampleRequest.check` for the checks between fields, `sampling.request.validate` for what must fit the model,
and for steps "auto" the candidates from the model's quality profile) -> the model's `ModelReplica.sample`
through its handle (a validated `SampleSpec`) -> engine -> backend, and back as a `SampleOutput`.
Every refusal is an `ApiError` answered as `{"error": {status, field, message}}`.
"""

# No `from __future__ import annotations` here: Ray Serve rebuilds the routes' signatures for the
# class-based view, and FastAPI then needs the annotations as real classes, not strings.
import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from sampling.quality import QualityProfile
from sampling.render import render_base64
from sampling.request import InvalidRequest, SampleSpec, validate
from serving.api.auth import ApiKeyAuth, configure_security
from serving.api.docs import serve_docs_locally
from serving.api.headers import HeaderLimits
from serving.api.middleware import BodySizeLimit, RequestMetrics
from serving.api.models import (
    ERROR_RESPONSES,
    STREAM_RESPONSE,
    ApiError,
    ModelInfo,
    SampleRequest,
    SampleResponse,
    error_from_pydantic,
)
from serving.api.playground import serve_playground
from serving.local import local_models
from serving.policy.step_budget import Candidate
from serving.refusals import DeadlineImpossible, Overloaded, RequestTimeout
from serving.replica import SampleOutput

# The model replica died or went away with the request: safe to run again elsewhere, since a request's
# samples depend only on its seed.
REPLICA_LOST = (RayActorError, ReplicaUnavailableError)
# Serve-level failures of a model deployment: saturated at Serve's queue or no live replica right now.
UNAVAILABLE = (BackPressureError, DeploymentUnavailableError, *REPLICA_LOST)
# What a model deployment refuses with, answered by `refusal`.
REFUSALS = (Overloaded, RequestTimeout, DeadlineImpossible, *UNAVAILABLE)
# The path outside the replica's engine (hops, serialization, noise and data-space conversion) is measured
# per model as a moving average and kept out of a deadline request's time at the replica.
PATH_EWMA = 0.2
PATH_INITIAL_S = 0.01

api = FastAPI(
    title="stepserve",
    version="0.1.0",
    description="Samples from diffusion (DDPM) and flow-matching models with a step budget K and guidance w.",
)
serve_docs_locally(api)  # /docs without a CDN
serve_playground(api)  # the playground page at /
api.add_middleware(BodySizeLimit)
api.add_middleware(ApiKeyAuth)  # outside BodySizeLimit: a request without a valid key is refused unread
api.add_middleware(HeaderLimits)  # outside ApiKeyAuth: an oversized Authorization header is refused first
api.add_middleware(RequestMetrics)  # outermost: counts the body-size refusals too


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.to_json(), status_code=err.status, headers=err.headers())


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    # Starlette's own refusals (unknown path 404, wrong method 405 with its Allow header) in the API's shape.
    err = ApiError("path", f"{request.method} {request.url.path[:128]}: {exc.detail}", exc.status_code)
    return JSONResponse(err.to_json(), status_code=err.status, headers=getattr(exc, "headers", None))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(error_from_pydantic(list(exc.errors())))


def internal_error(exc: BaseException) -> dict[str, Any]:
    return {"error": {"status": 500, "field": None, "message": f"internal error: {type(exc).__name__}"}}


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Last resort: every expected failure is an ApiError before reaching here.
    return JSONResponse(internal_error(exc), status_code=500)


def refusal(model: str, exc: BaseException, quiet_s: float = 0.0) -> ApiError:
    """A model deployment's refusal as the API words it: 503 + Retry-After when at capacity (or no step budget
    meets the deadline under the current load) or without a live replica, 504 when the request ran past the
    time limit, 422 when no step budget could meet the deadline even on an idle replica."""
    if isinstance(exc, Overloaded):  # also DeadlineOverloaded
        # e.message, not str(e): across the handle the exception carries the replica's traceback
        return ApiError("model", f"{model} is at capacity ({exc.message}); retry later", 503, exc.retry_after)
    if isinstance(exc, RequestTimeout):
        return ApiError("body", f"{model}: {exc.message}; ask for fewer steps or samples", 504)
    if isinstance(exc, DeadlineImpossible):
        if exc.fastest_s <= quiet_s:  # impossible only in the time a congested path left: load, not the request
            return ApiError("model", f"{model} is at capacity ({exc.message} after the wait); retry later", 503, 1)
        return ApiError("deadline_ms", exc.message)
    return ApiError("model", f"{model} is unavailable right now ({type(exc).__name__})", 503, 1)


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event; the JSON is compact, so it holds no newline."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def progress_json(event: dict[str, Any]) -> dict[str, Any]:
    """A replica's progress dict as JSON data (the preview array as nested lists)."""
    return {**event, "preview": event["preview"].tolist()} if "preview" in event else event


T = TypeVar("T")


@serve.deployment(max_ongoing_requests=1024)
@serve.ingress(api)
class Ingress:
    """HTTP: validates requests, calls the model deployments through handles, renders responses."""

    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        infos: dict[str, dict[str, Any]],
        max_body_bytes: int,
        body_timeout_s: float = 10.0,
        security: dict[str, Any] | None = None,
        local: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        # `local`: models whose replica runs in this process (single_hop, serving.local), called like handles.
        self.handles = {**models, **local_models(local or {})}
        self.infos = {name: ModelInfo.from_dict(info) for name, info in infos.items()}
        self.objectives = {name: info.objective_obj() for name, info in self.infos.items()}
        self.profiles = {
            name: QualityProfile.from_json(info.quality_profile)
            for name, info in self.infos.items()
            if info.quality_profile is not None
        }
        self.path_s = dict.fromkeys(self.infos, PATH_INITIAL_S)
        api.state.max_body_bytes = max_body_bytes
        api.state.body_timeout_s = body_timeout_s
        api.state.model_ids = frozenset(self.infos)
        configure_security(api.state, security or {})  # API keys and header caps (serving.api.auth)

    def _info(self, model: str, field: str = "model") -> ModelInfo:
        info = self.infos.get(model)
        if info is None:
            raise ApiError(field, f"unknown model {model[:64]!r}; served: {sorted(self.infos)}", 404)
        return info

    @api.post(
        "/v1/samples",
        response_model=SampleResponse,
        response_model_exclude_none=False,
        responses={**ERROR_RESPONSES, **STREAM_RESPONSE},
    )
    async def samples(self, req: SampleRequest) -> Any:
        """Draw `num_samples` samples of `model` with `sampler` in `steps` steps (guidance w optional); with
        `deadline_ms`, scheduled for it, and with `steps: "auto"` at the step budget that meets it; with
        `stream: true`, progress events as the sampler runs and the response body as the last event."""
        t0 = time.perf_counter()
        info = self._info(req.model)
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        fields = req.check()
        deadline_s = fields.deadline_s
        handle = self.handles[req.model]
        path_s = self.path_s[req.model]  # the path around the engine, kept out of the engine's time
        if req.steps == "auto":
            candidates = self._candidates(req, info, seed)
            before_s = time.perf_counter() - t0  # time at the ingress before the call to the replica
            left_s = deadline_s - before_s - path_s
            # What the engine would have on a quiet service: a choice that fits that is refused for load (503).
            quiet_s = deadline_s - PATH_INITIAL_S
            out = await self._call(req.model, lambda: handle.sample_auto.remote(candidates, left_s), quiet_s)

            return JSONResponse(await self._respond(req, seed, out, t0, deadline_s, before_s + path_s))
        spec = req.to_spec(seed)
        try:
            validate(spec, self.objectives[req.model], info.num_classes, info.limits)
        except InvalidRequest as e:
            raise ApiError(e.field, e.message) from None
        if req.stream:
            return await self._stream(req, spec, fields.preview_every, t0)
        before_s = time.perf_counter() - t0
        left = None if deadline_s is None else deadline_s - before_s - path_s
        out = await self._call(req.model, lambda: handle.sample.remote(spec, left))
        return JSONResponse(await self._respond(req, seed, out, t0, deadline_s, before_s + path_s))

    async def _respond(
        self,
        req: SampleRequest,
        seed: int,
        out: SampleOutput,
        t0: float,
        deadline_s: float | None = None,
        outside_s: float = 0.0,
    ) -> dict[str, Any]:
        """The response body of a finished request, streamed or not. outside_s: the time before the call
        and the predicted path around the engine (for predicted_ms)."""
        image = await asyncio.to_thread(render_base64, out.samples) if req.format == "png" else None
        total_s = time.perf_counter() - t0
        self._observe_path(req.model, total_s - out.queue_s - out.compute_s)
        predicted_ms = None
        if out.predicted_s is not None and deadline_s is not None:
            predicted_ms = 1e3 * (outside_s + out.predicted_s)
        # Built as the response model's JSON directly: validating the samples again through SampleResponse
        # cost more than the rest of the route for large requests (the route still declares the model).
        return {
            "model": req.model,
            "sampler": out.sampler,
            "steps": out.steps,
            "num_samples": req.num_samples,
            "guidance": req.guidance,
            "class_label": req.class_label,
            "seed": seed,
            "nfe": out.nfe,
            "shape": list(out.samples.shape),
            "samples": None if image is not None else out.samples.tolist(),
            "image": image,
            "timing": {"queue_ms": 1e3 * out.queue_s, "compute_ms": 1e3 * out.compute_s, "total_ms": 1e3 * total_s},
            "deadline_ms": req.deadline_ms,
            "deadline_met": None if deadline_s is None else total_s <= deadline_s,
            "predicted_ms": predicted_ms,
            "predicted_quality": out.quality,
        }

    def _observe_path(self, model: str, seconds: float) -> None:
        """Moving average of the time a request spends outside the replica's engine."""
        self.path_s[model] += PATH_EWMA * (max(0.0, seconds) - self.path_s[model])

    def _candidates(self, req: SampleRequest, info: ModelInfo, seed: int) -> list[Candidate]:
        """Every profiled (sampler, K) this request may run: validated, within min_quality."""
        profile = self.profiles.get(req.model)
        if profile is None:
            raise ApiError(
                "steps",
                f'steps "auto" needs a quality profile and {req.model} has none '
                "(python -m serving profile --checkpoint DIR makes one); give steps explicitly",
            )
        names = profile.samplers() if req.sampler == "auto" else [req.sampler]
        if req.sampler != "auto" and req.sampler not in profile.samplers():
            raise ApiError(
                "sampler",
                f"sampler {req.sampler[:64]!r} has no quality profile for {req.model}; "
                f'profiled: {profile.samplers()} (or "auto")',
            )
        floor = req.min_quality if req.min_quality is not None else 0.0
        out: list[Candidate] = []
        best: tuple[float, str, int] | None = None
        for name in names:
            for point in profile.for_sampler(name):
                spec: SampleSpec = req.to_spec(seed, name, point.steps)
                try:
                    validate(spec, self.objectives[req.model], info.num_classes, info.limits)
                except InvalidRequest as e:
                    if e.field == "steps":  # over max_steps or the work cap: not a choice for this request
                        continue
                    raise ApiError(e.field, e.message) from None
                if best is None or point.quality > best[0]:
                    best = (point.quality, name, point.steps)
                if point.quality >= floor:
                    out.append(Candidate(spec, point.quality))
        if best is None:
            raise ApiError("steps", "no profiled step budget fits this model's limits for this request")
        if not out:
            raise ApiError(
                "min_quality",
                f"no profiled choice reaches min_quality {floor:g}; the best allowed is {best[0]:.3f} "
                f"({best[1]}, steps {best[2]})",
            )
        return out

    async def _call(self, model: str, call: Callable[[], Awaitable[T]], quiet_s: float = 0.0) -> T:
        """`call()` awaited, once more if its replica died; refusals as ApiErrors (`refusal`; quiet_s: the
        engine time a deadline request would have on a quiet service)."""
        try:
            try:
                return await call()
            except REPLICA_LOST:
                return await call()
        except REFUSALS as e:
            raise refusal(model, e, quiet_s) from None

    async def _stream(self, req: SampleRequest, spec: Any, preview_every: int, t0: float) -> StreamingResponse:
        """A streamed request: the replica's first event is awaited here, so a refusal before any work (503,
        a dead replica run once more) is an ordinary JSON error; after it, the events as SSE."""
        handle = self.handles[req.model].options(stream=True)

        async def start() -> tuple[Any, Any]:
            events = handle.sample_stream.remote(spec, preview_every)
            try:
                return events, await events.__anext__()
            except BaseException:
                events.cancel()
                raise

        events, first = await self._call(req.model, start)
        return StreamingResponse(
            self._events(req, spec, t0, events, first),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _events(self, req: SampleRequest, spec: Any, t0: float, events: Any, item: Any) -> AsyncIterator[str]:
        """`progress` events, then `result` (the response body) or `error` (the API's error body). Leaving
        early (the client went away) cancels the replica's call, which drops the request from the engine."""
        finished = False
        try:
            while not isinstance(item, SampleOutput):
                # One SSE event per progress dict; the replica sends them in batches (lists).
                yield "".join(sse("progress", progress_json(p)) for p in item)
                item = await events.__anext__()
            finished = True
            body = await self._respond(req, spec.seed, item, t0)
            yield sse("result", body)
        except REFUSALS as e:
            finished = True
            yield sse("error", refusal(req.model, e).to_json())
        except Exception as e:  # the stream has begun: the error goes in it, in the API's shape
            finished = True
            yield sse("error", internal_error(e))
        finally:
            if not finished:
                events.cancel()

    @api.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        """Every served model's metadata."""
        return {"models": [info.to_json() for info in self.infos.values()]}

    @api.get("/v1/models/{model_id}", responses={404: ERROR_RESPONSES[404]})
    async def get_model(self, model_id: str) -> Any:
        """One model's metadata (kind, net, data shape, classes, samplers, limits) and one replica's load."""
        info = self._info(model_id, "model_id")
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
