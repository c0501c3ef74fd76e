"""Sampling in one process, without a server: the CLI's `sample` command and the benchmarks use this."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from serving import samplers
from serving.backends import load_backend
from serving.driver import run_sampler
from serving.guidance import Forward, labels
from training.checkpoint import Checkpoint, load_checkpoint

MAX_STEPS = 1000
SEED_MAX = 2**63 - 1


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
    """Refuse a request that does not fit the model, naming the field."""
    samplers.get_spec(spec.sampler, ckpt.objective)
    if not 1 <= spec.steps <= MAX_STEPS:
        raise ValueError(f"steps must be in [1, {MAX_STEPS}], got {spec.steps}")
    if spec.num_samples < 1:
        raise ValueError(f"num-samples must be >= 1, got {spec.num_samples}")
    if spec.class_label is not None and not 0 <= spec.class_label < ckpt.num_classes:
        raise ValueError(f"class-label must be in [0, {ckpt.num_classes - 1}] or omitted, got {spec.class_label}")
    if spec.guidance is not None:
        if not math.isfinite(spec.guidance):
            raise ValueError(f"guidance must be finite, got {spec.guidance}")
        if spec.class_label is None:
            raise ValueError("guidance needs a class-label (guidance without a class has nothing to amplify)")
    if not 0 <= spec.seed <= SEED_MAX:
        raise ValueError(f"seed must be in [0, 2^63 - 1], got {spec.seed}")
    if spec.eta is not None and (spec.sampler != "ddim" or not 0.0 <= spec.eta <= 1.0):
        raise ValueError(f"eta applies to ddim only and must be in [0, 1], got {spec.eta} for {spec.sampler}")
    if spec.spacing is not None and spec.spacing not in samplers.SPACINGS:
        raise ValueError(f"spacing must be one of {samplers.SPACINGS}, got {spec.spacing!r}")


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
