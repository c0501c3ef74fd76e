"""A deliberately slow stand-in for stepserve, served over real HTTP (uvicorn on 127.0.0.1) in a thread.

It speaks the documented contract (GET /v1/models, /v1/models/{id}, POST /v1/samples, GET /metrics) and
answers each sample request after `base_s + per_step_s * steps` seconds of asyncio sleep, so that any
number of requests wait at once: the load generator's timing is tested against a server whose latency
is known, with no model or Ray behind it. Samples are real data: two-moons draws (stub-moons) and
scikit-learn digits of the requested class (stub-digits, 10 classes).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, generate_latest

from bench.ports import free_port
from training.data import digits_raw, moons_raw

MODEL = "stub-moons"
DIGITS = "stub-digits"
SAMPLERS = {"fm-euler": 1, "fm-rk4": 4}
# The request fields of POST /v1/samples without the step-budget fields (deadline_ms, steps "auto", min_quality).
FIELDS = {"model", "sampler", "steps", "num_samples", "guidance", "class_label", "seed", "eta", "spacing", "format"}


def _refusal(body: dict) -> dict | None:
    """The real service's first complaint (pydantic order: field types, then unknown fields), or None."""
    if not isinstance(body.get("steps"), int):
        return {"field": "steps", "message": "steps: Input should be a valid integer"}
    unknown = sorted(set(body) - FIELDS)
    return {"field": unknown[0], "message": f"unknown field {unknown[0]!r}"} if unknown else None


@dataclass
class StubService:
    base_s: float = 0.05
    per_step_s: float = 0.002
    max_num_samples: int = 256
    strict: bool = False  # refuse what the service without deadline requests refuses, with its 422 bodies
    url: str = ""
    received: int = 0
    start_times: list[float] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def app(self) -> FastAPI:
        registry = CollectorRegistry()
        requests = Counter("ray_stepserve_requests", "requests", ["model", "sampler", "status"], registry=registry)
        nfe = Counter("ray_stepserve_nfe", "nfe", ["model", "sampler"], registry=registry)
        app = FastAPI()
        limits = {"max_steps": 1000, "max_num_samples": self.max_num_samples}
        infos = {
            MODEL: {"id": MODEL, "kind": "fm", "data_kind": "moons", "data_shape": [2], "num_classes": 0},
            DIGITS: {"id": DIGITS, "kind": "fm", "data_kind": "digits", "data_shape": [1, 8, 8], "num_classes": 10},
        }
        for info in infos.values():
            info.update(classes=list(range(info["num_classes"])), samplers=list(SAMPLERS), limits=limits)
        digits, digit_labels = digits_raw()

        @app.get("/v1/models")
        async def models() -> dict:
            return {"models": list(infos.values())}

        @app.get("/v1/models/{model}")
        async def model(model: str) -> Response:
            if model not in infos:
                return JSONResponse({"error": {"field": "model", "message": "unknown"}}, status_code=404)
            return JSONResponse(infos[model])

        @app.post("/v1/samples")
        async def samples(request: Request) -> Response:
            self.received += 1
            self.start_times.append(time.perf_counter())
            body = await request.json()
            self.bodies.append(body)
            if self.strict and (refusal := _refusal(body)) is not None:
                return JSONResponse({"error": {"status": 422, **refusal}}, status_code=422)
            sampler, steps, n = body["sampler"], body["steps"], body.get("num_samples", 1)
            if sampler not in SAMPLERS or body.get("model") not in infos:
                requests.labels(body.get("model", ""), sampler, "422").inc()
                return JSONResponse({"error": {"field": "sampler", "message": "unknown sampler"}}, status_code=422)
            t0 = time.perf_counter()
            await asyncio.sleep(self.base_s + self.per_step_s * steps)
            if body["model"] == MODEL:
                x, _ = moons_raw(n, body.get("seed", 0))
            else:  # real digits of the requested class (any class without one)
                label = body.get("class_label")
                pool = np.flatnonzero(digit_labels == label) if label is not None else np.arange(len(digits))
                x = digits[np.random.default_rng(body.get("seed", 0)).choice(pool, n)]
            requests.labels(body["model"], sampler, "200").inc()
            nfe.labels(body["model"], sampler).inc(steps * SAMPLERS[sampler])
            elapsed_ms = 1e3 * (time.perf_counter() - t0)
            return JSONResponse(
                {
                    "model": body["model"],
                    "sampler": sampler,
                    "steps": steps,
                    "num_samples": n,
                    "seed": body.get("seed", 0),
                    "nfe": steps * SAMPLERS[sampler],
                    "shape": list(x.shape),
                    "samples": x.tolist(),
                    "timing": {"queue_ms": 0.0, "compute_ms": elapsed_ms, "total_ms": elapsed_ms},
                }
            )

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(registry), media_type="text/plain")

        return app

    def start(self) -> StubService:
        port = free_port()
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=port, log_level="warning", backlog=2048)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("stub service did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
        if self._thread:
            self._thread.join(timeout=10)
