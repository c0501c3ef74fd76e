"""Refusals as HTTP: the one table from what a model deployment raises to the API's error, and the app's
exception handlers, so every answer but a 200 is the JSON error body `{"error": {status, field, message}}`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.exceptions import HTTPException

from serving.api.schemas import ApiError, error_from_pydantic
from serving.refusals import DeadlineImpossible, Overloaded, RequestTimeout

# The model replica died or went away with the request: safe to run again elsewhere, since a request's
# samples depend only on its seed.
REPLICA_LOST = (RayActorError, ReplicaUnavailableError)
# Serve-level failures of a model deployment: saturated at Serve's queue or no live replica right now.
UNAVAILABLE = (BackPressureError, DeploymentUnavailableError, *REPLICA_LOST)
# What a model deployment refuses with, answered by `refusal`.
REFUSALS = (Overloaded, RequestTimeout, DeadlineImpossible, *UNAVAILABLE)


def refusal(model: str, exc: BaseException, quiet_s: float = 0.0) -> ApiError:
    """A model deployment's refusal as the API words it: 503 + Retry-After when at capacity (or no step budget
    meets the deadline under the current load) or without a live replica, 504 when the request ran past the
    time limit, 422 when no step budget could meet the deadline even on an idle replica (quiet_s: the engine
    time a deadline request would have had on a quiet service; impossible only within less is load, 503)."""
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


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.to_json(), status_code=err.status, headers=err.headers())


def internal_error(exc: BaseException) -> dict[str, Any]:
    return {"error": {"status": 500, "field": None, "message": f"internal error: {type(exc).__name__}"}}


def add_error_handlers(app: FastAPI) -> None:
    """ApiError as itself; Starlette's own refusals (unknown path 404, wrong method 405 with its Allow header)
    and pydantic's (422, the field named) in the API's shape; anything else as a 500 naming only its type."""

    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        err = ApiError("path", f"{request.method} {request.url.path[:128]}: {exc.detail}", exc.status_code)
        return JSONResponse(err.to_json(), status_code=err.status, headers=getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        tag_request(request, exc.body)  # the body as FastAPI parsed it: the metrics' tags
        return error_response(error_from_pydantic(list(exc.errors())))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Last resort: every expected failure is an ApiError before reaching here.
        return JSONResponse(internal_error(exc), status_code=500)

    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected)


def tag_request(request: Request, body: Any) -> None:
    """Put a parsed body's `model` and `sampler` (any JSON type, or absent) into the request's state, for
    `RequestMetrics`' tags (which keep only known values)."""
    if isinstance(body, dict):
        request.state.model, request.state.sampler = body.get("model"), body.get("sampler")
