"""In one process, without a server: the CLI's `sample` command (any serving backend) and its `profile`
command (a checkpoint's quality profile, torch backend)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sampling.driver import sample
from sampling.measure_quality import (
    DEFAULT_MAX_NFE,
    DEFAULT_SAMPLES,
    DEFAULT_STEPS,
    NOISE_REPEATS,
    compute_profile,
    metric_name,
    profile_grid,
)
from sampling.quality_profile import QualityPoint, QualityProfile, weights_sha256, write_quality_profile
from sampling.render import render_png
from sampling.request import OFFLINE_LIMITS, SampleSpec, to_data_space, validate
from serving.backends import load_backend
from training.checkpoint import load_checkpoint


def sample_to_file(
    ckpt_dir: Path,
    *,
    out: Path,
    plot: bool = False,
    backend: str = "torch",
    weights: str = "ema",
    **request,
) -> list[Path]:
    """Validate the request against the checkpoint, sample, write .npy (and a PNG with `plot`)."""
    ckpt = load_checkpoint(ckpt_dir)
    spec = SampleSpec(**request)
    validate(spec, ckpt.objective, ckpt.num_classes, OFFLINE_LIMITS)
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
        png = out.with_suffix(".png")
        title = f"{ckpt.name} {spec.sampler} K={spec.steps}" + (
            f" w={spec.guidance:g}" if spec.guidance is not None else ""
        )
        png.write_bytes(render_png(x, title))
        written.append(png)
    print(f"{spec.num_samples} samples in {elapsed:.2f} s ({backend})")
    return written


def profile_checkpoint(
    ckpt_dir: Path,
    *,
    samples: int | None = None,
    steps: tuple[int, ...] = DEFAULT_STEPS,
    max_nfe: int | None = DEFAULT_MAX_NFE,
    seed: int = 0,
    progress: bool = True,
) -> QualityProfile:
    """Measure the checkpoint's quality profile with the torch backend (EMA weights) and store it in the
    checkpoint (`quality_profile.json`, recorded in the manifest with its sha256)."""
    ckpt = load_checkpoint(ckpt_dir)
    n = samples if samples is not None else DEFAULT_SAMPLES.get(ckpt.data_kind, 0)
    metric_name(ckpt)  # an unknown data kind fails before any work
    if n < 2:
        raise ValueError(f"--samples must be >= 2, got {n}")
    grid = profile_grid(ckpt, steps, max_nfe=max_nfe)
    if not grid:
        raise ValueError(f"no K of {list(steps)} is accepted by any fixed-step sampler of {ckpt.name}")
    net = load_backend("torch", ckpt, weights="ema")
    total = sum(len(ks) for ks in grid.values()) + NOISE_REPEATS - 1
    bar = tqdm(total=total, desc=f"profile {ckpt.name}", unit="pt", disable=not progress, dynamic_ncols=True)

    def on_point(p: QualityPoint) -> None:
        bar.set_postfix_str(f"{p.sampler} K={p.steps} quality={p.quality:.3f}", refresh=False)
        bar.update(1)

    try:
        profile = compute_profile(ckpt, net, weights_sha256(ckpt_dir), grid, n, seed, on_point)
    finally:
        bar.close()
    write_quality_profile(ckpt_dir, profile)
    return profile
