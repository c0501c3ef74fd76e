"""The playground: a page at `/` to try the API from a browser (plain HTML, CSS and JS in `static/`, shipped in
the package; no build step, no CDN, no external fonts).

The page calls the same public endpoints as any client (GET /v1/models, POST /v1/samples, streamed or not)
with an optional API key from a field, so it needs no route of its own beyond its files. Its files need no
key (`serving.api.auth.OPEN_PATHS`): they hold no data, only the page.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

STATIC_DIR = Path(__file__).resolve().parent / "static"
PLAYGROUND_PREFIX = "/playground/"
# The only files served; anything else under the prefix is 404 (no directory listing, no paths).
PLAYGROUND_FILES = {"playground.js": "text/javascript", "playground.css": "text/css"}
# No inline script, no other origin: the page runs only its own files.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"


def serve_playground(api: FastAPI) -> None:
    """Add `/` (the page) and `/playground/{name}` (its script and stylesheet) to `api`."""

    async def page(req: Request) -> HTMLResponse:
        # The application may sit under a route prefix: the page's own URLs and the API's start there.
        root = req.scope.get("root_path", "").rstrip("/")
        html = (STATIC_DIR / "index.html").read_text().replace("{{ROOT}}", root)
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})

    async def asset(req: Request) -> Response:
        name = req.path_params["name"]
        media = PLAYGROUND_FILES.get(name)
        if media is None:
            return JSONResponse({"error": {"status": 404, "field": None, "message": "not found"}}, status_code=404)
        return Response((STATIC_DIR / name).read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"})

    api.add_route("/", page, methods=["GET"], include_in_schema=False)
    api.add_route(PLAYGROUND_PREFIX + "{name}", asset, methods=["GET"], include_in_schema=False)
