"""Sampling in one process, without a server: the CLI's `sample` command and the benchmarks use this."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from serving import samplers
from serving.api import Limits, SampleRequest, check_request, error_from_pydantic, model_info
from serving.backends import load_backend
from serving.driver import run_sampler
from serving.guidance import Forward, labels
from training.checkpoint import Checkpoint, load_checkpoint

# In-process sampling has no per-model sample cap and takes any finite guidance weight; everything else is
# checked exactly as the HTTP API checks it.
OFFLINE_LIMITS = Limits(max_steps=1000, max_num_samples=10**9, guidance_min=-1e9, guidance_max=1e9)


@dataclass(frozen=True)
class SampleSpec:
    """One sampling request, as the HTTP API and the CLI take it."""

    sampler: str
    steps: int
    num_samples: int
    guidance: float | None = None
    class_label: int | None = None
    seed: int = 0
    eta: float | None = None
    spacing: str | None = None


def validate(spec: SampleSpec, ckpt: Checkpoint) -> None:
    """Refuse a request that does not fit the model, naming the field (the HTTP API's own checks)."""
    try:
        req = SampleRequest(model=ckpt.name, **asdict(spec))
    except ValidationError as e:
        raise error_from_pydantic(e.errors()) from None
    check_request(req, model_info(ckpt.name, ckpt.path, "offline", OFFLINE_LIMITS))


def sample(ckpt: Checkpoint, forward: Forward, spec: SampleSpec) -> Tensor:
    """Samples (N, *shape) in the net's normalized space."""
    validate(spec, ckpt)
    noise, gen = samplers.initial_noise(ckpt.data_shape, spec.num_samples, spec.seed)
    options = {"eta": spec.eta, "spacing": spec.spacing}
    sampler = samplers.start(spec.sampler, ckpt.objective, noise, spec.steps, gen, **options)
    y = labels(spec.num_samples, spec.class_label, ckpt.null_label)
    return run_sampler(sampler, forward, y, spec.guidance, ckpt.null_label)


def to_data_space(ckpt: Checkpoint, x: Tensor) -> np.ndarray:
    """Undo the normalization; images are clipped to [0, 1]."""
    out = ckpt.normalization.denormalize(x.float())
    if ckpt.data_kind == "digits":
        out = out.clamp(0.0, 1.0)
    return out.numpy()


def sample_to_file(
    ckpt_dir: Path,
    *,
    out: Path,
    plot: bool = False,
    backend: str = "torch",
    weights: str = "ema",
    **request,
) -> list[Path]:
    ckpt = load_checkpoint(ckpt_dir)
    spec = SampleSpec(**request)
    validate(spec, ckpt)
    options = {"weights": weights} if backend == "torch" else {}
    net = load_backend(backend, ckpt, **options)
    t0 = time.perf_counter()
    with torch.inference_mode():
        x = to_data_space(ckpt, sample(ckpt, net, spec))
    elapsed = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, x)
    written = [out]
    if plot:
        from serving.render import render_png

        png = out.with_suffix(".png")
        title = f"{ckpt.name} {spec.sampler} K={spec.steps}" + (
            f" w={spec.guidance:g}" if spec.guidance is not None else ""
        )
        png.write_bytes(render_png(x, title))
        written.append(png)
    print(f"{spec.num_samples} samples in {elapsed:.2f} s ({backend})")
    return written
