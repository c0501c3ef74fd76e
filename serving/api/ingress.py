"""The HTTP ingress: a Serve deployment whose replicas each build their own FastAPI app.

`Ingress` holds a `SampleService` (the models' handles and metadata) and, through Serve's late-bound ingress
(`__serve_build_asgi_app__`, called once per replica after `__init__`), an app from `build_http_app`: the
routes (`routes`), the error handlers (`errors`), the docs and playground pages, and the edge's middleware,
whose settings live in that app's own `state`. Nothing is shared between replicas or kept at module level.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.api.auth import ApiKeyAuth, configure_security
from serving.api.docs import serve_docs_locally
from serving.api.errors import add_error_handlers
from serving.api.headers import HeaderLimits
from serving.api.middleware import BUSY_MIN_ACTIVE, BodySizeLimit, RequestMetrics, ShedWhenBusy
from serving.api.playground import serve_playground
from serving.api.routes import routes
from serving.api.service import SampleService
from serving.local import local_models


def build_http_app(
    service: SampleService,
    max_body_bytes: int = 64 * 1024,
    body_timeout_s: float = 10.0,
    security: dict[str, Any] | None = None,
    max_loop_lag_ms: float = 0.0,
    busy_min_active: int = BUSY_MIN_ACTIVE,
) -> FastAPI:
    """The API's FastAPI app over `service`, with its edge settings (body bound and timeout, API keys and
    header caps: `serving.api.auth.configure_security`; shedding while its event loop runs over
    `max_loop_lag_ms` late with at least `busy_min_active` requests in progress, 0: off)."""
    app = FastAPI(
        title="stepserve",
        version="0.1.0",
        description="Samples from diffusion (DDPM) and flow-matching models with a step budget K and guidance w.",
    )
    app.state.max_body_bytes = max_body_bytes
    app.state.body_timeout_s = body_timeout_s
    app.state.max_loop_lag_s = max_loop_lag_ms / 1e3
    app.state.busy_min_active = busy_min_active
    app.state.model_ids = frozenset(service.infos) | frozenset(service.families)
    configure_security(app.state, security or {})
    serve_docs_locally(app)  # /docs without a CDN
    serve_playground(app)  # the playground page at /
    app.include_router(routes(service))
    add_error_handlers(app)
    app.add_middleware(ShedWhenBusy)  # inside BodySizeLimit: the body is read (the connection stays usable), unparsed
    app.add_middleware(BodySizeLimit)
    app.add_middleware(ApiKeyAuth)  # outside BodySizeLimit: a request without a valid key is refused unread
    app.add_middleware(HeaderLimits)  # outside ApiKeyAuth: an oversized Authorization header is refused first
    app.add_middleware(RequestMetrics)  # outermost: counts the body-size refusals too
    return app


@serve.deployment(max_ongoing_requests=1024)
@serve.ingress()
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
        shed_at_door: bool = True,
        max_loop_lag_ms: float = 0.0,
        busy_min_active: int = BUSY_MIN_ACTIVE,
        families: dict[str, list[str]] | None = None,
    ) -> None:
        # `local`: models whose replica runs in this process (single_hop, serving.local), called like handles.
        self.service = SampleService({**models, **local_models(local or {})}, infos, shed_at_door, families)
        self.settings = (max_body_bytes, body_timeout_s, security, max_loop_lag_ms, busy_min_active)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self.service, *self.settings)
