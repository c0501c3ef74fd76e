"""Measuring a quality profile: every fixed-step sampler of a model over a grid of K, in this process.

Each point draws samples with the request path (`sampling.driver.sample`, fixed seeds) and scores them with
`training.metrics`. Both metrics are distances to the data divided by the same distance between two draws of
the data, so their ideal is 1.0 (and finite samples scatter around it); quality = min(1, 1 / value):

    moons   value = sw_ratio: SW(samples, data) / SW(data, data'), unconditional samples (null label)
    digits  value = frechet_ratio: FD(samples, real) / FD(real', real) in the digits classifier's feature
            space, class-conditional samples (equal counts per class, unguided)
    shapes  the same with the shapes classifier (training/shapes.py); a latent model's samples decoded

The noise of a profile is measured, not assumed: one point is redrawn with other seeds and the standard
deviation of its quality is written into the definition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sampling.driver import run_sampler, sample
from sampling.quality_profile import QualityPoint, QualityProfile
from sampling.request import Limits, SampleSpec, initial_noise, max_steps, to_data_space
from sampling.samplers import SAMPLERS, Forward, samplers_for, start
from training import metrics, shapes
from training.checkpoint import Checkpoint

DEFAULT_STEPS = (1, 2, 3, 5, 8, 10, 15, 20, 30, 50, 100)
# Samples per point: enough that the measured noise (sd of quality over seeds) is about 0.1 on moons and 0.03
# on digits at a mid-range point; the SW ratio needs many points because its denominator is itself a noise floor.
DEFAULT_SAMPLES = {"moons": 3000, "digits": 500, "shapes": 500}
# Points past this many net evaluations per sample are skipped by default: by then every sampler of the default
# models has levelled off (docs/knobs.md), and the profile's cost grows with NFE x samples.
DEFAULT_MAX_NFE = 100
NOISE_NFE = 20  # the noise is measured at the first sampler's point nearest this NFE
NOISE_REPEATS = 4  # draws (the profile's own seed and 3 more) of the point whose noise is measured
METRICS = {"moons": "sw_ratio", "digits": "frechet_ratio", "shapes": "frechet_ratio"}
CLASS_QUALITY = {"digits": metrics.digits_quality, "shapes": shapes.shapes_quality}
CLASSIFIERS = {"digits": "training.metrics' digits classifier", "shapes": "training.shapes' ShapesClassifier"}


def profile_grid(
    ckpt: Checkpoint,
    steps: tuple[int, ...] = DEFAULT_STEPS,
    limits: Limits | None = None,
    max_nfe: int | None = DEFAULT_MAX_NFE,
) -> dict[str, list[int]]:
    """sampler -> the Ks of `steps` it accepts (capped at its max_steps, and at `max_nfe` evaluations per sample
    unless None), for every fixed-step sampler of the model; adaptive solvers (fm-dopri5) have no fixed K and
    are left out."""
    grid = {}
    for name in samplers_for(ckpt.objective):
        if SAMPLERS[name].adaptive:
            continue
        top = max_steps(ckpt.objective, limits or Limits(), name)
        nfe = SAMPLERS[name].nfe
        ks = sorted({k for k in steps if 1 <= k <= top and (max_nfe is None or nfe(k) <= max_nfe)})
        if ks:
            grid[name] = ks
    return grid


def metric_name(ckpt: Checkpoint) -> str:
    if ckpt.data_kind not in METRICS:
        raise ValueError(f"no quality metric for data kind {ckpt.data_kind!r} (known: {sorted(METRICS)})")
    return METRICS[ckpt.data_kind]


def measure(ckpt: Checkpoint, forward: Forward, sampler: str, steps: int, n: int, seed: int) -> QualityPoint:
    """One point: n samples of `sampler` at K = `steps` from `seed`, scored (moons: one request; digits, shapes:
    n // num_classes samples of each class, conditional, unguided, in one batch whose noise comes from `seed`)."""
    nfe = SAMPLERS[sampler].nfe(steps)
    if nfe is None:
        raise ValueError(f"{sampler} is adaptive: it has no fixed K to profile")
    with torch.inference_mode():
        if ckpt.data_kind in CLASS_QUALITY:
            # One batch for all classes (as the engine would batch per-class requests): rows [c] * per_class.
            labels = np.repeat(np.arange(ckpt.num_classes), max(2, n // ckpt.num_classes))
            noise, gen = initial_noise(ckpt.data_shape, len(labels), seed)
            x = run_sampler(start(sampler, ckpt.objective, noise, steps, gen), forward, torch.from_numpy(labels))
            q = CLASS_QUALITY[ckpt.data_kind](to_data_space(ckpt, x), labels, seed=seed)
            value = q["frechet"] / q["frechet_data"]
        else:
            metric_name(ckpt)  # moons; any other data kind is refused here
            x = to_data_space(ckpt, sample(ckpt, forward, SampleSpec(sampler, steps, n, seed=seed)))
            value = metrics.sw_ratio(x, seed=seed, n=n)
    return QualityPoint(sampler, steps, nfe, round(value, 4), round(min(1.0, 1.0 / value), 4))


def definition(ckpt: Checkpoint, n: int, seed: int, noise: dict[str, Any]) -> str:
    """The written definition stored with the profile: metric, samples, seeds and the measured noise."""
    if ckpt.data_kind in CLASS_QUALITY:
        kind = ckpt.data_kind
        what = (
            f"value = frechet_ratio = FD(samples, real {kind}) / FD(real {kind}, real {kind}'), Frechet distances "
            f"in the feature space of {CLASSIFIERS[kind]}, class-matched real draws; "
            + ("samples decoded by the model's decoder; " if ckpt.latent else "")
            + f"{max(2, n // ckpt.num_classes)} class-conditional samples per class (unguided, one batch, seed {seed})"
        )
    else:
        what = (
            "value = sw_ratio = SW(samples, data) / SW(data, data') (training.metrics.sw_ratio, 256 projections, "
            f"4 data draws); {n} unconditional samples (null label), seed {seed}"
        )
    return (
        f"quality = min(1, 1 / value): 1.0 = as close to the data as another draw of the data. {what}; EMA "
        f"weights, torch backend, NFE per sample unguided. Noise: sd of quality {noise['sd']:.3f} (range "
        f"{noise['min']:.3f}..{noise['max']:.3f}) over {noise['repeats']} seeds at {noise['sampler']} "
        f"K={noise['steps']}: the spread of a point's level from seed to seed. All points share seed 0 (noise and data "
        "draws), so differences along K within the profile are smoother than that."
    )


def compute_profile(
    ckpt: Checkpoint,
    forward: Forward,
    weights_sha256: str,
    grid: dict[str, list[int]],
    n: int,
    seed: int = 0,
    on_point: Callable[[QualityPoint], None] | None = None,
) -> QualityProfile:
    """Measure every (sampler, K) of `grid`, then the noise at the first sampler's K nearest NOISE_NFE
    (NOISE_REPEATS seeds); `on_point` is called after each measurement (progress)."""
    points = []
    for sampler, ks in grid.items():
        for k in ks:
            points.append(measure(ckpt, forward, sampler, k, n, seed))
            if on_point:
                on_point(points[-1])
    sampler = next(iter(grid))
    k = min(grid[sampler], key=lambda k: abs(SAMPLERS[sampler].nfe(k) - NOISE_NFE))
    base = next(p for p in points if (p.sampler, p.steps) == (sampler, k))
    qs = [base.quality]
    for r in range(1, NOISE_REPEATS):
        qs.append(measure(ckpt, forward, sampler, k, n, seed + 1000 * r).quality)
        if on_point:
            on_point(base)
    noise = {
        "sd": float(np.std(qs, ddof=1)),
        "min": min(qs),
        "max": max(qs),
        "repeats": len(qs),
        "sampler": sampler,
        "steps": k,
    }
    return QualityProfile(metric_name(ckpt), definition(ckpt, n, seed, noise), weights_sha256, tuple(points))
