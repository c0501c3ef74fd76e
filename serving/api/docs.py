"""Swagger UI served from the package `swagger-ui-py` instead of a public CDN.

FastAPI's default /docs page loads swagger-ui from cdn.jsdelivr.net and its favicon from fastapi.tiangolo.com,
and /redoc loads redoc from the CDN too: a browser opening them leaks the visit to third parties and runs
whatever those hosts serve at the time. `serve_docs_locally(api)` replaces /docs with the same page whose
script, stylesheet and favicon come from /docs/static/ (files of the pinned wheel), and removes /redoc.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from serving.api.auth import OPEN_PATHS

STATIC_PREFIX = "/docs/static/"
# The only files the page needs; anything else under /docs/static/ is 404 (no directory listing, no paths).
STATIC_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def swagger_static_dir() -> Path:
    # find_spec, not import: the package's __init__ pulls in its web-framework handlers, which are not needed.
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package swagger-ui-py is not installed (pyproject.toml pins it)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


# Answers of the edge's middleware, which FastAPI's routes cannot declare themselves.
EDGE_RESPONSES = {
    "401": "API keys are configured and the request has no valid `Authorization: Bearer <key>`",
    "429": "the API key is over its rate or in-flight quota (Retry-After says when to retry)",
    "431": "more header lines or header bytes than the service accepts",
}


def declare_bearer_auth(api: FastAPI) -> None:
    """Describe the optional API key in the OpenAPI document, so Swagger UI shows "Authorize" and sends the
    key, and add the middleware's 401 / 429 / 431 to every operation (open paths: 431 only, no security).
    Optional (`{}` first): a deployment without `auth` needs no key."""
    build = api.openapi

    def openapi() -> dict:
        if api.openapi_schema is None:
            schema = build()  # sets api.openapi_schema; amended in place once
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "API key (when configured)",
            }
            schema["security"] = [{}, {"bearer": []}]
            body = {"$ref": "#/components/schemas/ErrorBody"} if "ErrorBody" in components.get("schemas", {}) else {}
            for path, operations in schema.get("paths", {}).items():
                for op in operations.values():
                    open_path = path in OPEN_PATHS
                    if open_path:
                        op["security"] = []
                    for status, text in EDGE_RESPONSES.items():
                        if status == "431" or not open_path:
                            answer = {"description": text, "content": {"application/json": {"schema": body}}}
                            op.setdefault("responses", {}).setdefault(status, answer)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def serve_docs_locally(api: FastAPI) -> None:
    """Swap FastAPI's CDN-backed /docs (and /redoc) for a page whose assets this app serves itself, and
    declare the bearer key in the OpenAPI document."""
    declare_bearer_auth(api)
    static = swagger_static_dir()
    dropped = {api.docs_url, api.redoc_url, api.swagger_ui_oauth2_redirect_url}
    api.router.routes[:] = [r for r in api.router.routes if getattr(r, "path", None) not in dropped]
    api.docs_url, api.redoc_url = "/docs", None
    api.swagger_ui_oauth2_redirect_url = "/docs/oauth2-redirect"

    async def docs(req: Request) -> HTMLResponse:
        root = req.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + (api.openapi_url or "/openapi.json"),
            title=f"{api.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_PREFIX}swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_PREFIX}swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_PREFIX}favicon-32x32.png",
            oauth2_redirect_url=root + api.swagger_ui_oauth2_redirect_url,
            # Swagger UI otherwise posts the spec's URL to validator.swagger.io for a badge.
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def oauth2_redirect(req: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def asset(req: Request) -> Response:
        name = req.path_params["name"]
        media = STATIC_FILES.get(name)
        if media is None:
            return JSONResponse({"error": {"status": 404, "field": None, "message": "not found"}}, status_code=404)
        return FileResponse(static / name, media_type=media, headers={"Cache-Control": "public, max-age=86400"})

    # Plain Starlette routes (as FastAPI adds its own /docs): no schema, no response model.
    api.add_route("/docs", docs, methods=["GET"], include_in_schema=False)
    api.add_route("/docs/oauth2-redirect", oauth2_redirect, methods=["GET"], include_in_schema=False)
    api.add_route(STATIC_PREFIX + "{name}", asset, methods=["GET"], include_in_schema=False)
