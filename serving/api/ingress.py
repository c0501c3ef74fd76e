"""The HTTP ingress: a Serve deployment whose replicas each build their own FastAPI app.

`Ingress` holds a `SampleService` (the models' handles and metadata) and, through Serve's late-bound ingress
(`__serve_build_asgi_app__`, called once per replica after `__init__`), an app from `build_http_app`: the
routes (`routes`), the error handlers (`errors`), the docs and playground pages, and the edge's middleware,
whose settings live in that app's own `state`. Nothing is shared between replicas or kept at module level.

`ModelIngress` is one model's replica with that same HTTP edge in front of it (a one-model `single_hop`
application): it answers HTTP for its model in one hop, and the handle calls of another application's Ingress
as a `ModelServer` does (`models: {<id>: {application: <its application>}}` in serving.app), so one replica
serves both the short path and the body-routed one.
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
from serving.local import LocalModel, local_models
from serving.replica import ModelReplica


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
        applications: dict[str, str] | None = None,
    ) -> None:
        # `local`: models whose replica runs in this process (single_hop, serving.local), called like handles.
        # `applications`: models served by another application's `ModelIngress` (model id -> application name);
        # their handles are made here, in the replica, and wait for that application's replicas if it is not up.
        remote = {
            name: serve.get_deployment_handle(name, app_name=app, _check_exists=False)
            for name, app in (applications or {}).items()
        }
        every = {**models, **remote, **local_models(local or {})}
        handles = {name: every[name] for name in infos}  # in the config's order
        self.service = SampleService(handles, infos, shed_at_door, families)
        self.settings = (max_body_bytes, body_timeout_s, security, max_loop_lag_ms, busy_min_active)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self.service, *self.settings)


@serve.deployment(max_ongoing_requests=512)
@serve.ingress()
class ModelIngress(ModelReplica):
    """One model's replica that is also its own HTTP edge: the routes of `build_app` over this replica alone
    (one hop: client -> this replica's engine), and `ModelReplica`'s methods for handle calls (`sample`,
    `sample_auto`, `sample_stream`, `load`, and the routing and autoscaling stats Serve polls)."""

    def __init__(
        self,
        replica: dict[str, Any],
        info: dict[str, Any],
        max_body_bytes: int,
        body_timeout_s: float = 10.0,
        security: dict[str, Any] | None = None,
        shed_at_door: bool = True,
        max_loop_lag_ms: float = 0.0,
        busy_min_active: int = BUSY_MIN_ACTIVE,
    ) -> None:
        super().__init__(**replica)
        self.service = SampleService({self.name: LocalModel(self)}, {self.name: info}, shed_at_door)
        self.settings = (max_body_bytes, body_timeout_s, security, max_loop_lag_ms, busy_min_active)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self.service, *self.settings)
