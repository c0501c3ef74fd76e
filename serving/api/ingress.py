"""The HTTP ingress: FastAPI routes on a Serve deployment that calls the model deployments by handle.

The path of a request: Serve's proxy -> `Ingress.samples` (pydantic types, model lookup,
`sampling.request.validate`: the one place a request is checked) -> the model's `ModelReplica.sample`
through its handle (a validated `SampleSpec`) -> engine -> backend, and back as a `SampleOutput`.
Every refusal is an `ApiError` answered as `{"error": {status, field, message}}`.
"""

# No `from __future__ import annotations` here: Ray Serve rebuilds the routes' signatures for the
# class-based view, and FastAPI then needs the annotations as real classes, not strings.
import asyncio
import secrets
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from sampling.render import render_base64
from sampling.request import InvalidRequest, validate
from serving.api.auth import ApiKeyAuth, configure_security
from serving.api.docs import serve_docs_locally
from serving.api.headers import HeaderLimits
from serving.api.middleware import BodySizeLimit, RequestMetrics
from serving.api.models import (
    ERROR_RESPONSES,
    ApiError,
    ModelInfo,
    SampleRequest,
    SampleResponse,
    error_from_pydantic,
)
from serving.engine import Overloaded, RequestTimeout
from serving.local import local_models
from serving.replica import SampleOutput

# The model replica died or went away with the request: safe to run again elsewhere, since a request's
# samples depend only on its seed.
REPLICA_LOST = (RayActorError, ReplicaUnavailableError)
# Serve-level failures of a model deployment: saturated at Serve's queue or no live replica right now.
UNAVAILABLE = (BackPressureError, DeploymentUnavailableError, *REPLICA_LOST)

api = FastAPI(
    title="stepserve",
    version="0.1.0",
    description="Samples from diffusion (DDPM) and flow-matching models with a step budget K and guidance w.",
)
serve_docs_locally(api)  # /docs without a CDN
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


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Last resort: every expected failure is an ApiError before reaching here.
    return JSONResponse(
        {"error": {"status": 500, "field": None, "message": f"internal error: {type(exc).__name__}"}},
        status_code=500,
    )


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
        "/v1/samples", response_model=SampleResponse, response_model_exclude_none=False, responses=ERROR_RESPONSES
    )
    async def samples(self, req: SampleRequest) -> Any:
        """Draw `num_samples` samples of `model` with `sampler` in `steps` steps (guidance w optional)."""
        t0 = time.perf_counter()
        info = self._info(req.model)
        spec = req.to_spec(req.seed if req.seed is not None else secrets.randbits(63))
        try:
            validate(spec, self.objectives[req.model], info.num_classes, info.limits)
        except InvalidRequest as e:
            raise ApiError(e.field, e.message) from None
        out = await self._sample(req.model, spec)
        image = await asyncio.to_thread(render_base64, out.samples) if req.format == "png" else None
        # Built as the response model's JSON directly: validating the samples again through SampleResponse
        # cost more than the rest of the route for large requests (the route still declares the model).
        body = {
            "model": req.model,
            "sampler": req.sampler,
            "steps": req.steps,
            "num_samples": req.num_samples,
            "guidance": req.guidance,
            "class_label": req.class_label,
            "seed": spec.seed,
            "nfe": out.nfe,
            "shape": list(out.samples.shape),
            "samples": None if image is not None else out.samples.tolist(),
            "image": image,
            "timing": {
                "queue_ms": 1e3 * out.queue_s,
                "compute_ms": 1e3 * out.compute_s,
                "total_ms": 1e3 * (time.perf_counter() - t0),
            },
        }
        return JSONResponse(body)

    async def _sample(self, model: str, spec: Any) -> SampleOutput:
        """The model replica's answer; a request whose replica died is run once more (Serve routes it to a
        live replica); refusals become 503s with a Retry-After, a timeout a 504."""
        try:
            try:
                return await self.handles[model].sample.remote(spec)
            except REPLICA_LOST:
                return await self.handles[model].sample.remote(spec)
        except Overloaded as e:
            # e.message, not str(e): across the handle the exception carries the replica's traceback
            raise ApiError("model", f"{model} is at capacity ({e.message}); retry later", 503, e.retry_after) from None
        except RequestTimeout as e:
            raise ApiError("body", f"{model}: {e.message}; ask for fewer steps or samples", 504) from None
        except UNAVAILABLE as e:
            raise ApiError("model", f"{model} is unavailable right now ({type(e).__name__})", 503, 1) from None

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
