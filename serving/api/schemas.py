"""The HTTP contract: request and response bodies, per-model metadata, the error body.

Pydantic checks types (unknown fields, strict integers, finite floats); `SampleRequest.check` the checks
between fields and the ranges of the HTTP-only fields; every check of the sampling request itself and every
check that depends on the model is `sampling.request.validate`'s, called once by the ingress. Any refusal is an
`ApiError(field, message, status)` -> a JSON body `{"error": {status, field, message}}`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sampling.quality_profile import load_quality_profile
from sampling.refusal import Refusal
from sampling.request import Limits, SampleSpec, max_steps
from sampling.samplers import SAMPLERS, SPACINGS, samplers_for
from training.checkpoint import read_manifest
from training.paths import Objective, objective_from_dict

StrictInt = Annotated[int, Field(strict=True)]
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class ApiError(Refusal):
    """A request refused with HTTP `status`; `field` names the offending field ("body" for the whole).
    `retry_after` (seconds) goes into a Retry-After header."""

    def __init__(self, field: str, message: str, status: int = 422, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.status = status
        self.retry_after = retry_after

    def to_json(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None


class ErrorDetail(BaseModel):
    status: int = Field(description="the HTTP status, repeated")
    field: str | None = Field(description="the offending field ('body' for the whole body), null for a 500")
    message: str


class ErrorBody(BaseModel):
    """Every refusal's body."""

    error: ErrorDetail


_WHEN = {
    400: "body is not valid JSON or nests deeper than 32 levels, or X-Client-Sent-At is off the server's clock",
    404: "unknown model",
    408: "the body did not arrive in time",
    413: "body too large",
    422: "a field is invalid or does not fit the model (the field is named)",
    429: "over the key's rate or in-flight quota (Retry-After)",
    503: "the model is at capacity or has no live replica (Retry-After)",
    504: "the request ran past the server's time limit",
}
# OpenAPI `responses` of the routes: every status the service answers besides 200, with its body.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _WHEN.items()
}


DEFAULT_PREVIEW_EVERY = 5
MAX_PREVIEW_EVERY = 1000
MAX_DEADLINE_MS = 600_000.0  # ten minutes
# A client may say when it sent a request (unix seconds), so that its deadline counts from then: the time in
# front of the server (the proxy's queue, the hops) is the client's too. Bounded against clock skew: a time
# ahead of the server's clock by up to MAX_CLIENT_AHEAD_S is taken as now; further ahead, or older than
# MAX_CLIENT_AGE_S, is refused (400) as a clock that is off.
SENT_AT_HEADER = "X-Client-Sent-At"
MAX_CLIENT_AHEAD_S = 1.0
MAX_CLIENT_AGE_S = 60.0

# The 200 of a streamed request (`stream: true`), besides the JSON body of an unstreamed one.
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the response body; with stream: true, text/event-stream: `progress` events, then `result` "
        "(this body) or `error` (the error body)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


class SampleRequest(BaseModel):
    """POST /v1/samples. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="model id, as listed by GET /v1/models")
    sampler: str = Field(
        description='one of the model\'s samplers (GET /v1/models/{id}: samplers), or "auto" with steps "auto"'
    )
    steps: StrictInt | Literal["auto"] = Field(
        description="step budget K in [1, max_steps] (fm-rk4 runs 4 net evaluations a step, heun 2 but the last); "
        '"auto": the largest K (best predicted quality) predicted to meet deadline_ms under the current load'
    )
    deadline_ms: FiniteFloat | None = Field(
        None,
        description='latency budget in ms from arrival, in (0, 600000]; required with steps "auto"; with '
        "fixed steps the request is scheduled for it and the response says whether it was met",
    )
    min_quality: FiniteFloat | None = Field(
        None, description='steps "auto" only: the lowest predicted quality (in [0, 1], the model\'s quality profile)'
    )
    num_samples: StrictInt = Field(1, description="samples to draw, in [1, the model's max_num_samples]")
    guidance: FiniteFloat | None = Field(
        None, description="classifier-free guidance weight w: uncond + w (cond - uncond); needs class_label"
    )
    class_label: StrictInt | None = Field(None, description="class to draw, or null for unconditional")
    seed: StrictInt | None = Field(
        None, description="seed in [0, 2^63 - 1]; drawn by the server and returned if absent"
    )
    eta: FiniteFloat | None = Field(None, description="ddim only: 0 deterministic .. 1 DDPM-like noise")
    rtol: FiniteFloat | None = Field(None, description="fm-dopri5 only: relative tolerance in [1e-6, 1] (1e-3)")
    atol: FiniteFloat | None = Field(None, description="fm-dopri5 only: absolute tolerance in [1e-6, 1] (1e-4)")
    max_nfe: StrictInt | None = Field(
        None, description="fm-dopri5 only: cap on net evaluations per sample (default 1 + 6 x steps)"
    )
    spacing: str | None = Field(
        None,
        description=f"DDPM samplers only: timestep spacing, one of {list(SPACINGS)}; default: the model's "
        "`default_spacing` (GET /v1/models)",
    )
    format: Literal["json", "png"] = Field(
        "json", description="json: samples as nested lists; png: a base64 image (image grid or scatter plot)"
    )

    # Streaming (text/event-stream): progress events, then the response body as the last event.
    stream: bool = Field(
        False, description="true: answer text/event-stream, one progress event per net evaluation, then the result"
    )
    preview_every: StrictInt | None = Field(
        None,
        description=f"stream only: a preview of the data estimate every this many steps, in [1, {MAX_PREVIEW_EVERY}] "
        f"(default {DEFAULT_PREVIEW_EVERY})",
    )

    def to_spec(self, seed: int, sampler: str | None = None, steps: int | None = None) -> SampleSpec:
        """The spec of this request (sampler and steps overridden for steps "auto" candidates)."""
        return SampleSpec(
            sampler=sampler or self.sampler,
            steps=steps if steps is not None else self.steps,
            num_samples=self.num_samples,
            guidance=self.guidance,
            class_label=self.class_label,
            seed=seed,
            eta=self.eta,
            spacing=self.spacing,
            rtol=self.rtol,
            atol=self.atol,
            max_nfe=self.max_nfe,
        )

    def check(self) -> RequestFields:
        """The checks between fields that pydantic's types do not make, in one place (the route calls it
        first; what depends on the model is `sampling.request.validate`'s and the steps-"auto" candidates'):
        deadline_ms required by steps "auto" and in (0, MAX_DEADLINE_MS]; preview_every only with stream and
        in [1, MAX_PREVIEW_EVERY]; stream not with deadline_ms; sampler "auto" and min_quality only with steps
        "auto", min_quality in [0, 1]. An ApiError naming the field, else the checked values."""
        deadline_s = None
        if self.deadline_ms is None:
            if self.steps == "auto":
                raise ApiError("deadline_ms", 'steps "auto" needs deadline_ms (the latency budget it is chosen for)')
        elif not 0 < self.deadline_ms <= MAX_DEADLINE_MS:
            raise ApiError("deadline_ms", f"deadline_ms must be in (0, {MAX_DEADLINE_MS:.0f}], got {self.deadline_ms}")
        else:
            deadline_s = self.deadline_ms / 1e3
        preview_every = DEFAULT_PREVIEW_EVERY
        if self.preview_every is not None:
            if not self.stream:
                raise ApiError("preview_every", "preview_every needs stream: true")
            if not 1 <= self.preview_every <= MAX_PREVIEW_EVERY:
                raise ApiError(
                    "preview_every", f"preview_every must be in [1, {MAX_PREVIEW_EVERY}], got {self.preview_every}"
                )
            preview_every = self.preview_every
        if self.stream and deadline_s is not None:
            raise ApiError("stream", 'stream: true does not take deadline_ms (nor steps "auto"); drop one of them')
        if self.steps != "auto":
            if self.sampler == "auto":
                raise ApiError("sampler", 'sampler "auto" needs steps "auto" (and deadline_ms)')
            if self.min_quality is not None:
                raise ApiError("min_quality", 'min_quality applies only with steps "auto"')
        elif self.min_quality is not None and not 0.0 <= self.min_quality <= 1.0:
            raise ApiError("min_quality", f"min_quality must be in [0, 1], got {self.min_quality}")
        return RequestFields(deadline_s, preview_every)


def arrival(sent_at: str | None, now: float) -> float:
    """When a request counts as arrived, in unix seconds: the client's `X-Client-Sent-At` when it sent one
    (within the skew bounds above; never later than `now`), else `now`. An ApiError naming the header when
    it is not a number or out of bounds."""
    if sent_at is None:
        return now
    try:
        sent = float(sent_at)
    except ValueError:
        sent = math.nan
    if not math.isfinite(sent):
        raise ApiError(SENT_AT_HEADER, f"{SENT_AT_HEADER} must be unix seconds, e.g. 1764633600.25", 400)
    if sent > now + MAX_CLIENT_AHEAD_S:
        raise ApiError(
            SENT_AT_HEADER,
            f"{SENT_AT_HEADER} is {sent - now:.1f} s ahead of the server's clock (at most {MAX_CLIENT_AHEAD_S:g} s "
            "is taken as skew); check the client's clock",
            400,
        )
    if sent < now - MAX_CLIENT_AGE_S:
        raise ApiError(
            SENT_AT_HEADER,
            f"{SENT_AT_HEADER} is {now - sent:.0f} s before the server's clock (at most {MAX_CLIENT_AGE_S:g} s); "
            "check the client's clock",
            400,
        )
    return min(sent, now)


@dataclass(frozen=True)
class RequestFields:
    """What `SampleRequest.check` derives: the deadline in seconds (None without one) and the stream's
    preview interval."""

    deadline_s: float | None
    preview_every: int


class Timing(BaseModel):
    queue_ms: float = Field(description="waiting in the engine before the first net call")
    compute_ms: float = Field(description="from joining the engine to the last step")
    total_ms: float = Field(description="from the ingress receiving the request to the response")


class SampleResponse(BaseModel):
    model: str
    sampler: str = Field(description='the sampler that ran (chosen by the server for sampler "auto")')
    steps: int = Field(description='the step budget K that ran (chosen by the server for steps "auto")')
    num_samples: int
    guidance: float | None
    class_label: int | None
    seed: int
    nfe: int = Field(description="net evaluations run per sample, as counted (fm-dopri5: adaptive), x2 when guided")
    shape: list[int] = Field(description="[num_samples, *data shape]")
    samples: list | None = Field(description="data-space samples (images in [0, 1]); null for format png")
    image: str | None = Field(None, description="base64 PNG for format png")
    timing: Timing
    deadline_ms: float | None = Field(None, description="the request's deadline_ms, echoed")
    deadline_met: bool | None = Field(None, description="whether timing.total_ms <= deadline_ms; null without one")
    predicted_ms: float | None = Field(
        None, description="the server's predicted total_ms when it scheduled the request (deadline requests)"
    )
    predicted_quality: float | None = Field(
        None, description='steps "auto": the quality profile\'s value at the chosen sampler and K, in [0, 1]'
    )
    family: str | None = Field(
        None, description="a request to a family (GET /v1/models: families): its name; `model` is the member that ran"
    )


@dataclass(frozen=True)
class ModelInfo:
    """What GET /v1/models/{id} tells about a served model (read from its manifest, no weights)."""

    id: str
    kind: str  # objective kind: "ddpm" or "fm"
    objective: dict[str, Any]
    net: dict[str, Any]
    data_kind: str
    data_shape: list[int]
    num_classes: int
    null_label: int
    classes: list[int]
    samplers: list[str]
    backend: str
    limits: Limits
    training_steps: int | None
    # The checkpoint's quality profile (sampling/quality_profile.py) as JSON, None when it has none.
    quality_profile: dict[str, Any] | None = None
    # DDPM: the spacing a request that names none gets (the checkpoint's `sampling.spacing`, else trailing).
    default_spacing: str | None = None
    # One sample as it comes back: a latent model's decoded image (its net samples data_shape latents).
    output_shape: list[int] | None = None
    # A latent model's autoencoder: {"autoencoder": name, "scale_factor": ...}; None for a model of data space.
    latent: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        """Inverse of dataclasses.asdict."""
        return cls(**{**d, "limits": Limits(**d["limits"])})

    def objective_obj(self) -> Objective:
        return objective_from_dict(self.objective)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["sampler_options"] = {s: list(SAMPLERS[s].options) for s in self.samplers}
        out["spacings"] = list(SPACINGS) if self.kind == "ddpm" else []
        # The largest K each sampler takes here: limits.max_steps, for DDPM also T minus the sampler's grid needs.
        out["sampler_max_steps"] = {s: max_steps(self.objective_obj(), self.limits, s) for s in self.samplers}
        return out


def model_info(name: str, checkpoint_dir: str | Path, backend: str, limits: Limits) -> ModelInfo:
    m = read_manifest(checkpoint_dir)
    profile = load_quality_profile(checkpoint_dir)  # a stale or tampered profile fails the build, loudly
    kind = m["objective"]["kind"]
    num_classes = int(m["data"]["num_classes"])
    return ModelInfo(
        id=name,
        kind=kind,
        objective=m["objective"],
        net={"kind": m["net"]["kind"], **m["net"].get("hparams", {})},
        data_kind=m["data"]["kind"],
        data_shape=list(m["data"]["shape"]),
        num_classes=num_classes,
        null_label=int(m["data"]["null_label"]),
        classes=list(range(num_classes)),
        samplers=samplers_for(objective_from_dict(m["objective"])),
        backend=backend,
        limits=limits,
        training_steps=m.get("training", {}).get("steps"),
        quality_profile=profile.to_json() if profile else None,
        default_spacing=m.get("sampling", {}).get("spacing", "trailing") if kind == "ddpm" else None,
        output_shape=list(m["latent"]["image_shape"] if m.get("latent") else m["data"]["shape"]),
        latent={"autoencoder": m["latent"]["autoencoder"]["name"], "scale_factor": m["latent"]["scale_factor"]}
        if m.get("latent")
        else None,
    )


def error_from_pydantic(errors: list[dict[str, Any]]) -> ApiError:
    """The first pydantic / FastAPI validation error as an ApiError naming its field."""
    err = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "value_error"}
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    field = ".".join(loc) if loc and err.get("type") != "json_invalid" else "body"
    if err.get("type") == "json_invalid":
        return ApiError("body", f"body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}", 400)
    if err.get("type") == "extra_forbidden":
        return ApiError(field, f"unknown field {field!r}")
    if err.get("type") == "model_attributes_type" or field == "body":
        return ApiError("body", "body must be a JSON object with the request's fields")
    # A union field (steps: int or "auto") fails once per member, each loc tagged with the member: name the
    # field alone and say every way it could have been valid.
    field = field.split(".")[0]
    msgs = [
        e.get("msg", "invalid value")
        for e in errors
        if [str(p) for p in e.get("loc", ()) if p != "body"][:1] == [field]
    ]
    return ApiError(field, f"{field}: {' or '.join(dict.fromkeys(msgs or [err.get('msg', 'invalid value')]))}")
