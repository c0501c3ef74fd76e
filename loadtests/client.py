"""The service as the load generator sees it: HTTP calls, one request's record, and the pre-flight check.

Everything goes over HTTP through `stepserve_client`; nothing here imports the serving package.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from stepserve_client import NO_RETRY, AsyncClient, Client, StepserveError, TransportFailure


class LoadTestError(Exception):
    """A problem the user can fix (bad argument, unreachable service): printed as one `error: ...` line."""


@dataclass
class Record:
    """One request as measured by the client. Times are seconds since the run's start on one monotonic
    clock: `scheduled` is when it was meant to start (open loop: the Poisson arrival; closed loop: the
    moment a worker was free), `start` when it was sent, `end` when the response (or error) arrived.
    status: the HTTP status as text, or "timeout" / "connect" / "transport" when no response came.
    server_*: the service's own timing fields (None when absent). served_sampler / served_steps: what the
    service ran (it picks them for `steps: "auto"`); deadline_* / predicted_*: the response's step-budget
    fields (None when absent or null)."""

    index: int
    sampler: str
    steps: int | str
    load: float
    scheduled: float
    start: float
    end: float
    status: str
    warmup: bool
    num_samples: int = 0
    nfe: int | None = None
    server_queue_s: float | None = None
    server_compute_s: float | None = None
    server_total_s: float | None = None
    retry_after: str | None = None
    detail: str | None = None  # the error body (truncated) of a non-200 answer, or the transport error
    served_sampler: str | None = None
    served_steps: int | None = None
    served_model: str | None = None  # the model that ran (a family's member for a request to a family)
    deadline_ms: float | None = None
    deadline_met: bool | None = None
    predicted_ms: float | None = None
    predicted_quality: float | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ok(self) -> bool:
        return self.status == "200"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(timing: dict[str, Any], key: str) -> float | None:
    """Seconds from one of the response's timing fields (queue_ms, compute_ms, total_ms)."""
    value = timing.get(key)
    return float(value) * 1e-3 if isinstance(value, int | float) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class RequestSpec:
    """What every request of one sweep cell asks for; `payload(i)` varies seed and class label. steps is
    an int or "auto" (then deadline_ms is required by the service)."""

    model: str
    sampler: str
    steps: int | str
    num_samples: int
    guidance: float | None = None
    class_labels: tuple[int, ...] | None = None  # cycled over requests; None = unconditional
    seed: int = 0
    eta: float | None = None
    deadline_ms: float | None = None
    min_quality: float | None = None

    def payload(self, index: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "sampler": self.sampler,
            "steps": self.steps,
            "num_samples": self.num_samples,
            "seed": self.seed + index,
        }
        if self.guidance is not None:
            body["guidance"] = self.guidance
        if self.class_labels:
            body["class_label"] = self.class_labels[index % len(self.class_labels)]
        if self.eta is not None:
            body["eta"] = self.eta
        if self.deadline_ms is not None:
            body["deadline_ms"] = self.deadline_ms
        if self.min_quality is not None:
            body["min_quality"] = self.min_quality
        return body


async def send(
    client: AsyncClient,
    spec: RequestSpec,
    index: int,
    load: float,
    scheduled: float,
    t0: float,
    warmup: bool,
) -> Record:
    """POST one request and measure it, never retrying (a retry would hide the refusal the load test is
    measuring); never raises for HTTP or transport failures (they are data)."""
    rec = Record(
        index=index,
        sampler=spec.sampler,
        steps=spec.steps,
        load=load,
        scheduled=scheduled,
        start=time.perf_counter() - t0,
        end=0.0,
        status="",
        warmup=warmup,
    )
    try:
        result = await client.submit(spec.payload(index), NO_RETRY)
    except TransportFailure as e:
        rec.status, rec.detail = e.kind, e.message
    except StepserveError as e:
        rec.status = str(e.status)
        rec.retry_after = None if e.retry_after is None else f"{e.retry_after:g}"
        rec.detail = e.message[:200]
    else:
        rec.status = "200"
        rec.num_samples = result.shape[0]
        rec.nfe = result.nfe
        rec.server_queue_s = _ms(result.timing, "queue_ms")
        rec.server_compute_s = _ms(result.timing, "compute_ms")
        rec.server_total_s = _ms(result.timing, "total_ms")
        rec.served_sampler, rec.served_steps = result.sampler, result.steps
        body = result.body
        rec.served_model = body.get("model") if isinstance(body.get("model"), str) else None
        rec.deadline_ms = _number(body.get("deadline_ms"))
        rec.deadline_met = body["deadline_met"] if isinstance(body.get("deadline_met"), bool) else None
        rec.predicted_ms = _number(body.get("predicted_ms"))
        rec.predicted_quality = _number(body.get("predicted_quality"))
    rec.end = time.perf_counter() - t0
    return rec


def list_models(url: str, timeout: float = 10.0) -> list[str]:
    """Model and family ids from GET /v1/models; LoadTestError when the service cannot be reached or answers
    badly."""
    try:
        with Client(url, timeout=timeout) as c:
            return [str(entry["id"]) for entry in (*c.models(), *c.families())]
    except TransportFailure as e:
        raise LoadTestError(f"cannot reach {url}/v1/models: {e.message}") from None
    except StepserveError as e:
        raise LoadTestError(f"GET {url}/v1/models answered {e.status}: {e.message[:200]}") from None
    except (KeyError, TypeError):
        raise LoadTestError(f"GET {url}/v1/models did not answer {{'models': [{{'id': ...}}]}}") from None


def model_info(url: str, model: str, timeout: float = 10.0) -> dict[str, Any]:
    """GET /v1/models/{model} after checking that the model is listed; LoadTestError otherwise."""
    known = list_models(url, timeout)
    if model not in known:
        raise LoadTestError(f"unknown model {model!r} at {url}; the service has: {', '.join(known) or 'none'}")
    try:
        with Client(url, timeout=timeout) as c:
            info = c.model(model)
            if "members" in info:  # a family: its first member's metadata, the samplers every member takes
                members = [c.model(m) for m in info["members"]]
                samplers = [s for s in members[0]["samplers"] if all(s in m["samplers"] for m in members)]
                return {**members[0], "id": model, "members": info["members"], "samplers": samplers}
            return info
    except TransportFailure as e:
        raise LoadTestError(f"cannot reach {url}/v1/models/{model}: {e.message}") from None
    except StepserveError as e:
        raise LoadTestError(f"GET {url}/v1/models/{model} answered {e.status}: {e.message[:200]}") from None


def accepted_samplers(info: dict[str, Any]) -> list[str]:
    """Sampler names the model takes (GET /v1/models/{id}: samplers)."""
    return [str(s) for s in info["samplers"]]


def sampler_max_steps(info: dict[str, Any]) -> dict[str, int]:
    """The largest K the service takes per sampler (GET /v1/models/{id}: sampler_max_steps; from
    limits.max_steps for a service that does not list it)."""
    listed = info.get("sampler_max_steps")
    if isinstance(listed, dict):
        return {str(k): int(v) for k, v in listed.items()}
    top = (info.get("limits") or {}).get("max_steps")
    return {s: int(top) for s in accepted_samplers(info)} if isinstance(top, int) else {}


def num_classes(info: dict[str, Any]) -> int:
    """Number of classes from model metadata (0 for unconditional models)."""
    return int(info["num_classes"])
