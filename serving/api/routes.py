"""The HTTP routes, over a `SampleService`: POST /v1/samples, GET /v1/models, /v1/models/{id}, /healthz.

Each route is the HTTP around one service call: its pydantic types (the request body, the OpenAPI schema)
in, a JSON body or an SSE stream out. Every refusal is an `ApiError`, answered by `errors`.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations as real classes.
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from serving.api.errors import tag_request
from serving.api.schemas import (
    ERROR_RESPONSES,
    SENT_AT_HEADER,
    STREAM_RESPONSE,
    SampleRequest,
    SampleResponse,
    arrival,
)
from serving.api.service import SampleService


def routes(service: SampleService) -> APIRouter:
    """The API's routes, answered by `service`."""
    router = APIRouter()

    @router.post(
        "/v1/samples",
        response_model=SampleResponse,
        response_model_exclude_none=False,
        responses={**ERROR_RESPONSES, **STREAM_RESPONSE},
    )
    async def samples(req: SampleRequest, request: Request) -> Any:
        """Draw `num_samples` samples of `model` with `sampler` in `steps` steps (guidance w optional); with
        `deadline_ms`, scheduled for it, and with `steps: "auto"` at the step budget that meets it; with
        `stream: true`, progress events as the sampler runs and the response body as the last event."""
        t0, now = time.perf_counter(), time.time()
        tag_request(request, {"model": req.model, "sampler": req.sampler})
        arrived = arrival(request.headers.get(SENT_AT_HEADER), now)  # the deadline's start: the client's clock
        if req.stream:
            events = await service.stream(req, t0)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            )
        return JSONResponse(await service.sample(req, t0, arrived))

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """Every served model's metadata."""
        return service.models()

    @router.get("/v1/models/{model_id}", responses={404: ERROR_RESPONSES[404]})
    async def get_model(model_id: str) -> Any:
        """One model's metadata (kind, net, data shape, classes, samplers, limits) and one replica's load."""
        return await service.model(model_id)

    @router.get("/healthz")
    async def healthz() -> Any:
        """200 when every model deployment answers within 5 s, else 503 naming those that did not."""
        body, ok = await service.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    return router
