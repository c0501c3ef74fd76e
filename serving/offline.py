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
    definition,
    measure,
    metric_name,
    profile_grid,
)
from sampling.quality_profile import (
    QualityPoint,
    QualityProfile,
    load_quality_profile,
    weights_sha256,
    write_quality_profile,
)
from sampling.render import render_png
from sampling.request import OFFLINE_LIMITS, SampleSpec, to_data_space, validate
from serving.backends import load_backend
from training.checkpoint import Checkpoint, load_checkpoint


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
    add: tuple[str, ...] = (),
) -> QualityProfile:
    """Measure the checkpoint's quality profile with the torch backend (EMA weights) and store it in the
    checkpoint (`quality_profile.json`, recorded in the manifest with its sha256). With `add`: measure only
    those samplers and add their points to the checkpoint's current profile, which must have been measured
    with the same samples and seed (its noise and other points are kept as they are)."""
    ckpt = load_checkpoint(ckpt_dir)
    n = samples if samples is not None else DEFAULT_SAMPLES.get(ckpt.data_kind, 0)
    metric_name(ckpt)  # an unknown data kind fails before any work
    if n < 2:
        raise ValueError(f"--samples must be >= 2, got {n}")
    grid = profile_grid(ckpt, steps, max_nfe=max_nfe)
    if not grid:
        raise ValueError(f"no K of {list(steps)} is accepted by any fixed-step sampler of {ckpt.name}")
    base = None
    if add:
        base = _profile_to_extend(ckpt_dir, ckpt, add, grid, n, seed)
        grid = {name: ks for name, ks in grid.items() if name in add}
    net = load_backend("torch", ckpt, weights="ema")
    total = sum(len(ks) for ks in grid.values()) + NOISE_REPEATS - 1
    bar = tqdm(total=total, desc=f"profile {ckpt.name}", unit="pt", disable=not progress, dynamic_ncols=True)

    def on_point(p: QualityPoint) -> None:
        bar.set_postfix_str(f"{p.sampler} K={p.steps} quality={p.quality:.3f}", refresh=False)
        bar.update(1)

    try:
        if base is None:
            profile = compute_profile(ckpt, net, weights_sha256(ckpt_dir), grid, n, seed, on_point)
        else:
            bar.total = sum(len(ks) for ks in grid.values())
            new = []
            for name, ks in grid.items():
                for k in ks:
                    new.append(measure(ckpt, net, name, k, n, seed))
                    on_point(new[-1])
            order = list(profile_grid(ckpt, steps, max_nfe=max_nfe))
            points = sorted([*base.points, *new], key=lambda p: (order.index(p.sampler), p.steps))
            profile = QualityProfile(base.metric, base.definition, base.weights_sha256, tuple(points))
    finally:
        bar.close()
    write_quality_profile(ckpt_dir, profile)
    return profile


def _profile_to_extend(
    ckpt_dir: Path, ckpt: Checkpoint, add: tuple[str, ...], grid: dict[str, list[int]], n: int, seed: int
) -> QualityProfile:
    """The checkpoint's current profile, less any points of `add`, checked to take them: every name a
    fixed-step sampler of the model, and the profile measured with these samples and seed."""
    unknown = [s for s in add if s not in grid]
    if unknown:
        raise ValueError(f"--add {','.join(unknown)}: not a fixed-step sampler of {ckpt.name}; its: {sorted(grid)}")
    current = load_quality_profile(ckpt_dir)
    if current is None:
        raise ValueError(f"--add needs a profile to add to, and {ckpt_dir} has none; profile it whole first")
    wanted = definition(ckpt, n, seed, {"sd": 0.0, "min": 0.0, "max": 0.0, "repeats": 0, "sampler": "", "steps": 0})
    if current.definition.split("; EMA")[0] != wanted.split("; EMA")[0]:
        raise ValueError("--add: the profile was measured with other --samples or --seed; profile it whole instead")
    kept = tuple(p for p in current.points if p.sampler not in add)
    return QualityProfile(current.metric, current.definition, current.weights_sha256, kept)
