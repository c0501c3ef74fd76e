"""One sampling request, checked once and prepared once, for the HTTP service and offline sampling alike.

`validate(spec, objective, num_classes, limits)` is the only place a request is checked against a model:
sampler fits the objective, its options, steps, sample count, class label and guidance. The HTTP edge and
the offline CLI call it; everything behind them (the replica, the engine, `prepare`) trusts a validated
spec. `prepare` turns a spec into the sampler generator and labels the engine or the driver runs, and
`to_data_space` undoes the normalization of what comes out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sampling.guidance import labels
from sampling.refusal import Refusal
from sampling.samplers import SAMPLERS, SPACINGS, SamplerGen, samplers_for, start
from training.checkpoint import Checkpoint
from training.data import Normalization
from training.paths import Objective
from training.preview import apply_preview

MAX_SEED = 2**63 - 1


class InvalidRequest(Refusal, ValueError):
    """A request that does not fit its model; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Limits:
    """Per-model request limits (the serve config's `limits`, per model or for all)."""

    max_steps: int = 1000
    max_num_samples: int = 256
    guidance_min: float = 0.0
    guidance_max: float = 20.0
    # A request's work: rows (num_samples, x2 when guided) x net evaluations (steps x evaluations per step).
    # None: unbounded. It bounds what one request may cost, whatever its fields look like one by one.
    max_work: int | None = None

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.max_num_samples < 1 or not self.guidance_min <= self.guidance_max:
            raise ValueError(f"invalid limits {self}")
        if self.max_work is not None and self.max_work < 1:
            raise ValueError(f"invalid limits {self}: max_work must be >= 1")


# In-process sampling has no per-model sample cap and takes any finite guidance weight.
OFFLINE_LIMITS = Limits(max_steps=1000, max_num_samples=10**9, guidance_min=-1e9, guidance_max=1e9)


@dataclass(frozen=True)
class SampleSpec:
    """What to draw: `num_samples` samples with `sampler` in `steps` steps, guidance w for `class_label`."""

    sampler: str
    steps: int
    num_samples: int = 1
    guidance: float | None = None
    class_label: int | None = None
    seed: int = 0
    eta: float | None = None
    spacing: str | None = None
    rtol: float | None = None
    atol: float | None = None
    max_nfe: int | None = None

    @property
    def rows(self) -> int:
        """Net rows per evaluation: num_samples, twice that when guided (cond and null-label rows)."""
        return self.num_samples * (2 if self.guidance is not None else 1)

    @property
    def evaluations(self) -> int:
        """Net evaluations the sampler will ask for; for an adaptive solver, its cap (max_nfe or its default)."""
        nfe = SAMPLERS[self.sampler].nfe(self.steps)
        if nfe is not None:
            return nfe
        return self.max_nfe if self.max_nfe is not None else 1 + 6 * self.steps

    @property
    def work(self) -> int:
        """Rows x evaluations: what the request costs the net."""
        return self.rows * self.evaluations

    @property
    def options(self) -> dict[str, float | str | int]:
        """The sampler options that are set."""
        named = (
            ("eta", self.eta),
            ("spacing", self.spacing),
            ("rtol", self.rtol),
            ("atol", self.atol),
            ("max_nfe", self.max_nfe),
        )
        return {k: v for k, v in named if v is not None}


# Adaptive solvers' tolerances: below ~1e-6 float32 round-off swamps the error estimate.
TOL_MIN, TOL_MAX = 1e-6, 1.0
MIN_NFE = 7  # one Dormand-Prince step: the first evaluation and one attempt of 6


def max_steps(objective: Objective, limits: Limits, sampler: str | None = None) -> int:
    """The largest K a request may ask: the limit, and for DDPM at most its T training timesteps (fewer for a
    sampler whose grid needs extra timesteps)."""
    if objective.kind == "ddpm":
        extra = SAMPLERS[sampler].grid_extra if sampler in SAMPLERS else 0
        return min(limits.max_steps, objective.schedule.num_timesteps - extra)
    return limits.max_steps


def max_nfe_cap(objective: Objective, limits: Limits) -> int:
    """The largest max_nfe a request may ask: as many evaluations as max_steps Dormand-Prince steps."""
    return 1 + 6 * max_steps(objective, limits)


def validate(spec: SampleSpec, objective: Objective, num_classes: int, limits: Limits) -> None:
    """Refuse what the model and its limits do not allow; each failure names its field."""
    fits = samplers_for(objective)
    if spec.sampler not in SAMPLERS:
        raise InvalidRequest("sampler", f"unknown sampler {spec.sampler!r}; this model takes {fits}")
    if spec.sampler not in fits:
        raise InvalidRequest(
            "sampler", f"sampler {spec.sampler!r} does not fit a {objective.kind} model; use one of {fits}"
        )
    top = max_steps(objective, limits, spec.sampler)
    if not 1 <= spec.steps <= top:
        raise InvalidRequest("steps", f"steps must be in [1, {top}], got {spec.steps}")
    if not 1 <= spec.num_samples <= limits.max_num_samples:
        raise InvalidRequest(
            "num_samples", f"num_samples must be in [1, {limits.max_num_samples}], got {spec.num_samples}"
        )
    if not 0 <= spec.seed <= MAX_SEED:
        raise InvalidRequest("seed", f"seed must be in [0, 2^63 - 1], got {spec.seed}")
    if spec.class_label is not None and not 0 <= spec.class_label < num_classes:
        raise InvalidRequest(
            "class_label", f"class_label must be in [0, {num_classes - 1}] or null, got {spec.class_label}"
        )
    if spec.guidance is not None:
        if spec.class_label is None:
            raise InvalidRequest("guidance", "guidance needs a class_label (it contrasts that class with none)")
        if not math.isfinite(spec.guidance) or not limits.guidance_min <= spec.guidance <= limits.guidance_max:
            raise InvalidRequest(
                "guidance", f"guidance must be in [{limits.guidance_min}, {limits.guidance_max}], got {spec.guidance}"
            )
    takes = SAMPLERS[spec.sampler].options
    for option in spec.options:
        if option not in takes:
            raise InvalidRequest(option, f"{option} is not an option of {spec.sampler!r}; it takes {list(takes)}")
    if spec.eta is not None and not (math.isfinite(spec.eta) and 0.0 <= spec.eta <= 1.0):
        raise InvalidRequest("eta", f"eta must be in [0, 1], got {spec.eta}")
    if spec.spacing is not None and spec.spacing not in SPACINGS:
        raise InvalidRequest("spacing", f"spacing must be one of {list(SPACINGS)}, got {spec.spacing!r}")
    for name, tol in (("rtol", spec.rtol), ("atol", spec.atol)):
        if tol is not None and not (math.isfinite(tol) and TOL_MIN <= tol <= TOL_MAX):
            raise InvalidRequest(name, f"{name} must be in [{TOL_MIN}, {TOL_MAX}], got {tol}")
    cap = max_nfe_cap(objective, limits)
    if spec.max_nfe is not None and not MIN_NFE <= spec.max_nfe <= cap:
        raise InvalidRequest("max_nfe", f"max_nfe must be in [{MIN_NFE}, {cap}], got {spec.max_nfe}")
    if limits.max_work is not None and spec.work > limits.max_work:
        guided = " x 2 (guided)" if spec.guidance is not None else ""
        raise InvalidRequest(
            "steps",
            f"request too large: num_samples {spec.num_samples}{guided} x {spec.evaluations} net evaluations "
            f"({spec.sampler}, steps {spec.steps}) = {spec.work} row evaluations, over this model's max_work "
            f"{limits.max_work}; lower steps or num_samples (or drop guidance)",
        )


@dataclass(frozen=True)
class Prepared:
    """A validated request ready to run: its sampler generator and its labels y (N,)."""

    sampler: SamplerGen
    labels: Tensor


def initial_noise(shape: tuple[int, ...], num_samples: int, seed: int) -> tuple[Tensor, torch.Generator]:
    """The request's own generator (seeded from the request) and its starting noise (N, *shape)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((num_samples, *shape), generator=gen), gen


def prepare(ckpt: Checkpoint, spec: SampleSpec) -> Prepared:
    """Noise from the request's seed, the sampler over it and the labels; `spec` must be validated."""
    noise, gen = initial_noise(ckpt.data_shape, spec.num_samples, spec.seed)
    options = spec.options
    if ckpt.default_spacing is not None and "spacing" in SAMPLERS[spec.sampler].options:
        options.setdefault("spacing", ckpt.default_spacing)
    sampler = start(spec.sampler, ckpt.objective, noise, spec.steps, gen, **options)
    return Prepared(sampler, labels(spec.num_samples, spec.class_label, ckpt.null_label))


def to_data_space(ckpt: Checkpoint, x: Tensor) -> np.ndarray:
    """Samples (N, *shape) from the net's normalized space to data space (float32), clipped to the checkpoint's
    data range if it has one (digits, shapes and imported image models: [0, 1]). A latent model's samples are
    decoded to images (N, *output_shape) first, all in one call of the decoder."""
    decode = decoder_of(ckpt)
    out = ckpt.normalization.denormalize(x.float()) if decode is None else decode(x)
    return clip_to_data(ckpt, out)


DECODER_ONNX = "decoder.onnx"  # export.onnx_export.DECODER_ONNX (sampling does not import export)


def decoder_of(
    ckpt: Checkpoint, runtime: str = "torch", num_threads: int | None = None, device: str = "cpu"
) -> Callable[[Tensor], Tensor] | None:
    """A latent model's decode: its samples (N, *data_shape), as the net makes them, to images in data space
    (N, *output_shape) on the CPU, not yet clipped; None for a model of data space. runtime "onnxruntime" runs
    the exported decoder (decoder.onnx, `python -m export onnx`) when the checkpoint has one, else the torch
    one; an imported model's ONNX decoder runs on onnxruntime whatever `runtime` says (onnxruntime's CPU
    provider, the only one this project installs). `device`: where the torch decoder runs ("cuda" beside a
    torch backend on a GPU); a CUDA device without CUDA is refused (ValueError naming it)."""
    if not ckpt.latent:
        return None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"decoder: device {device!r} asked for but CUDA is not available")
    image = Normalization(**ckpt.latent["image_normalization"])
    files = ckpt.manifest["files"]
    current = files.get(DECODER_ONNX, {}).get("source_sha256") == files[ckpt.latent["decoder"]["file"]]["sha256"]
    if ckpt.decoder_is_onnx:  # imported (python -m export import diffusers): ONNX is all there is
        run = onnx_decoder(ckpt.file(ckpt.latent["decoder"]["file"]), num_threads)
    elif runtime == "onnxruntime" and current:  # (an export of other decoder weights is not used)
        run = onnx_decoder(ckpt.file(DECODER_ONNX), num_threads)
    else:
        dev = torch.device(device)
        decoder = ckpt.decoder().to(dev)

        def run(z: Tensor) -> Tensor:
            with torch.inference_mode():
                return decoder(z.to(dev)).float().cpu()

    def decode(x: Tensor) -> Tensor:
        return image.denormalize(run(ckpt.normalization.denormalize(x.float())))

    return decode


def preview_of(ckpt: Checkpoint, decode: Callable[[Tensor], Tensor] | None = None) -> Callable[[Tensor], np.ndarray]:
    """What turns a streamed preview (a data estimate (N, *data_shape) in the net's normalized space) into data
    space, clipped: for a latent model its preview map (training.preview; on shapes-vae 6-157x cheaper than the
    decoder at 1-256 rows, 26.7 dB from it) when the checkpoint has one, else the full decoder (`decode`, one from
    `decoder_of`, or a new one); else `to_data_space`. Build once per model: it loads the map or the decoder."""
    state = ckpt.preview_map() if ckpt.latent else None
    if state is None:
        decode = decode or decoder_of(ckpt)
        if decode is None:
            return lambda x: to_data_space(ckpt, x)
        return lambda x: clip_to_data(ckpt, decode(x))
    image = Normalization(**ckpt.latent["image_normalization"])

    def preview(x: Tensor) -> np.ndarray:
        with torch.inference_mode():
            z = ckpt.normalization.denormalize(x.float())
            return clip_to_data(ckpt, image.denormalize(apply_preview(state, z)))

    return preview


def onnx_decoder(path: str | os.PathLike, num_threads: int | None = None) -> Callable[[Tensor], Tensor]:
    """An exported decoder (decoder.onnx: input z, raw latents) on onnxruntime's CPU provider, as a function."""
    from sampling.ort_session import cpu_session

    session = cpu_session(path, num_threads)

    def run(z: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {"z": z.numpy().astype(np.float32)})[0])

    return run


def clip_to_data(ckpt: Checkpoint, x: Tensor) -> np.ndarray:
    """Data-space samples clipped to the checkpoint's data range (if it has one), as float32 numpy."""
    out = x.float()
    if ckpt.data_clip is not None:
        out = out.clamp(*ckpt.data_clip)
    return out.numpy()
