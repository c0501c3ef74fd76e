"""Sampling in one process, without a server: the CLI's `sample` command (any serving backend)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from sampling.driver import sample
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
