"""Exported copies of the tiny checkpoints, shared by tests/export and tests/serving/test_backends_*.

The tiny checkpoints are trained 20 steps, and the DiT starts as adaLN-Zero (every block the identity,
the output layer zero), so its output is ~1e-9 and a parity check on it would prove nothing. The copies
here add N(0, 0.05^2) noise to every EMA weight (and re-record the file's hash), so every path through
the graph carries O(1) values. Export takes seconds per model, so it is done once per test session
(cached in this module, which pytest imports once).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from export.onnx_export import export_onnx
from sampling import samplers
from sampling.driver import run_sampler
from sampling.guidance import labels
from sampling.request import initial_noise
from training.checkpoint import WEIGHT_FILES, Checkpoint, add_file, load_checkpoint

_CACHE: dict[str, dict[str, Path]] = {}


def perturb_ema(ckpt_dir: Path, std: float = 0.05, seed: int = 0) -> None:
    """Add N(0, std^2) to every EMA weight and re-record the file's sha256."""
    net = load_checkpoint(ckpt_dir).net("ema")
    g = torch.Generator().manual_seed(seed)
    state = {k: (v + std * torch.randn(v.shape, generator=g)).contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(ckpt_dir / WEIGHT_FILES["ema"]))
    add_file(ckpt_dir, WEIGHT_FILES["ema"], "ema")


def exported_checkpoints(
    tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, perturbed: bool = True
) -> dict[str, Path]:
    """name -> a copy of each tiny checkpoint (EMA weights perturbed by default) with net-ema.onnx."""
    key = "perturbed" if perturbed else "plain"
    if key not in _CACHE:
        root = tmp_path_factory.mktemp(f"onnx-{key}")
        out = {}
        for name, src in tiny.items():
            dst = root / name
            shutil.copytree(src, dst)
            if perturbed:
                perturb_ema(dst)
            export_onnx(load_checkpoint(dst))
            out[name] = dst
        _CACHE[key] = out
    return _CACHE[key]


def copy_checkpoint(src: Path, dst_root: Path) -> Path:
    dst = dst_root / src.name
    shutil.copytree(src, dst)
    return dst


def sampler_run(
    ckpt: Checkpoint, forward, num_samples: int = 8, seed: int = 3, guidance: float | None = 2.0
) -> torch.Tensor:
    """Samples from one seeded, guided run (class 1 and null-label rows) of ddim-20 / fm-rk4-5 (20 NFE)."""
    name, steps = ("ddim", 20) if ckpt.objective.kind == "ddpm" else ("fm-rk4", 5)
    noise, gen = initial_noise(ckpt.data_shape, num_samples, seed)
    it = samplers.start(name, ckpt.objective, noise, steps, gen)
    return run_sampler(it, forward, labels(num_samples, 1, ckpt.null_label), guidance, ckpt.null_label)
