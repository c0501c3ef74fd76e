"""The HTTP contract: request and response models, per-model metadata and limits, validation.

Validation has two layers. Pydantic checks what needs no model (types, unknown fields, seed range,
finite guidance); `check_request` checks what depends on the model (sampler fits its objective,
class label in range, sample count within its maximum, step and guidance limits, eta only for ddim).
Either failure becomes `RequestError(field, message, status)` -> a 4xx JSON body naming the field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sampling.samplers import SAMPLERS, SPACINGS
from training.checkpoint import read_manifest

MAX_SEED = 2**63 - 1

StrictInt = Annotated[int, Field(strict=True)]
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class RequestError(ValueError):
    """A request refused with HTTP `status`; `field` names the offending field ("body" for the whole)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}


@dataclass(frozen=True)
class Limits:
    """Per-model request limits (set in the serve config's `limits`, per model or for all)."""

    max_steps: int = 1000
    max_num_samples: int = 256
    guidance_min: float = 0.0
    guidance_max: float = 20.0

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.max_num_samples < 1 or not self.guidance_min <= self.guidance_max:
            raise ValueError(f"invalid limits {self}")


class SampleRequest(BaseModel):
    """POST /v1/samples. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="model id, as listed by GET /v1/models")
    sampler: str = Field(description="one of the model's samplers: ddpm / ddim (DDPM models), fm-euler / fm-rk4")
    steps: StrictInt = Field(ge=1, description="step budget K (rk4 runs 4 net evaluations a step)")
    num_samples: StrictInt = Field(1, ge=1, description="samples to draw, up to the model's max_num_samples")
    guidance: FiniteFloat | None = Field(
        None, description="classifier-free guidance weight w: uncond + w (cond - uncond); needs class_label"
    )
    class_label: StrictInt | None = Field(None, description="class to draw, or null for unconditional")
    seed: StrictInt | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="non-negative 63-bit seed; drawn by the server and returned if absent",
    )
    eta: FiniteFloat | None = Field(None, description="ddim only: 0 deterministic .. 1 DDPM-like noise")
    spacing: Literal["trailing", "leading", "linspace"] | None = Field(
        None, description="ddpm / ddim only: timestep spacing (default trailing)"
    )
    format: Literal["json", "png"] = Field(
        "json", description="json: samples as nested lists; png: a base64 image (image grid or scatter plot)"
    )


class Timing(BaseModel):
    queue_ms: float = Field(description="waiting in the engine before the first net call")
    compute_ms: float = Field(description="from joining the engine to the last step")
    total_ms: float = Field(description="from the ingress receiving the request to the response")


class SampleResponse(BaseModel):
    model: str
    sampler: str
    steps: int
    num_samples: int
    guidance: float | None
    class_label: int | None
    seed: int
    nfe: int = Field(description="net evaluations run per sample: steps x evals per step, x2 when guided")
    shape: list[int] = Field(description="[num_samples, *data shape]")
    samples: list | None = Field(description="data-space samples (images in [0, 1]); null for format png")
    image: str | None = Field(None, description="base64 PNG for format png")
    timing: Timing


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        """Inverse of dataclasses.asdict."""
        return cls(**{**d, "limits": Limits(**d["limits"])})

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["sampler_options"] = {s: list(SAMPLERS[s].options) for s in self.samplers}
        out["spacings"] = list(SPACINGS) if self.kind == "ddpm" else []
        return out


def model_info(name: str, checkpoint_dir: str | Path, backend: str, limits: Limits) -> ModelInfo:
    m = read_manifest(checkpoint_dir)
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
        samplers=[s for s, spec in SAMPLERS.items() if spec.objective_kind == kind],
        backend=backend,
        limits=limits,
        training_steps=m.get("training", {}).get("steps"),
    )


def check_request(req: SampleRequest, info: ModelInfo) -> None:
    """Refuse what `info` and its limits do not allow; each failure names its field."""
    lim = info.limits
    if req.sampler not in SAMPLERS:
        raise RequestError("sampler", f"unknown sampler {req.sampler!r}; this model takes {info.samplers}")
    if req.sampler not in info.samplers:
        raise RequestError(
            "sampler", f"sampler {req.sampler!r} does not fit a {info.kind} model; use one of {info.samplers}"
        )
    if req.steps > lim.max_steps:
        raise RequestError("steps", f"steps must be in [1, {lim.max_steps}], got {req.steps}")
    if req.num_samples > lim.max_num_samples:
        raise RequestError(
            "num_samples",
            f"num_samples must be in [1, {lim.max_num_samples}] for {info.id}, got {req.num_samples}",
        )
    if req.class_label is not None and not 0 <= req.class_label < info.num_classes:
        raise RequestError(
            "class_label",
            f"class_label must be in [0, {info.num_classes - 1}] or null, got {req.class_label}",
        )
    if req.guidance is not None:
        if req.class_label is None:
            raise RequestError("guidance", "guidance needs a class_label (it contrasts that class with none)")
        if not lim.guidance_min <= req.guidance <= lim.guidance_max:
            raise RequestError(
                "guidance",
                f"guidance must be in [{lim.guidance_min}, {lim.guidance_max}], got {req.guidance}",
            )
    if req.eta is not None:
        if req.sampler != "ddim":
            raise RequestError("eta", f"eta is a ddim option; sampler {req.sampler!r} takes none")
        if not 0.0 <= req.eta <= 1.0:
            raise RequestError("eta", f"eta must be in [0, 1], got {req.eta}")
    if req.spacing is not None and "spacing" not in SAMPLERS[req.sampler].options:
        raise RequestError("spacing", f"spacing is a ddpm / ddim option; sampler {req.sampler!r} takes none")


def error_from_pydantic(errors: list[dict[str, Any]]) -> RequestError:
    """The first pydantic / FastAPI validation error as a RequestError naming its field."""
    err = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "value_error"}
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    field = ".".join(loc) if loc and err.get("type") != "json_invalid" else "body"
    if err.get("type") == "json_invalid":
        return RequestError("body", f"body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}", 400)
    if err.get("type") == "extra_forbidden":
        return RequestError(field, f"unknown field {field!r}")
    if err.get("type") == "model_attributes_type" or field == "body":
        return RequestError("body", "body must be a JSON object with the request's fields")
    return RequestError(field, f"{field}: {err.get('msg', 'invalid value')}")
