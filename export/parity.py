"""Parity of an exported net against the torch net it came from.

Two checks, both against the eager torch net with the same weights as the independent reference:

* per evaluation: max |onnx(x, t, y) - torch(x, t, y)| on random inputs at several batch sizes, with
  x ~ N(0, I), t drawn over the objective's whole time range and y over [0, null_label] (the null label
  included, since guided requests send it);
* per sample: a whole sampler run from one seed, driven once by each, compared at the end (errors
  accumulate over the steps, so its tolerance, SAMPLE_TOLERANCE, is looser). Samplers live in
  `serving`, which `export` does not import; that check runs in tests/export/test_parity.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from export.onnx_export import ExportError
from training.checkpoint import Checkpoint

Forward = Callable[[Tensor, Tensor, Tensor], Tensor]
EVAL_TOLERANCE = 1e-4
SAMPLE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ParityResult:
    batch: int
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def random_inputs(ckpt: Checkpoint, batch: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, *shape) ~ N(0, I); t over the objective's range (DDPM: integers in [0, T); FM: U[0, 1]);
    y uniform over the classes and the null label."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *ckpt.data_shape), generator=g)
    objective = ckpt.objective
    if objective.kind == "ddpm":
        t = torch.randint(0, objective.schedule.num_timesteps, (batch,), generator=g).float()
    else:
        t = torch.rand((batch,), generator=g)
    y = torch.randint(0, ckpt.null_label + 1, (batch,), generator=g)
    return x, t, y


def ort_forward(path: Path, num_threads: int | None = None) -> Forward:
    """A plain onnxruntime CPU session on `path` as a forward function (no serving machinery)."""
    import numpy as np

    from sampling.ort_session import cpu_session

    session = cpu_session(path, num_threads)

    def forward(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        feeds = {"x": x.numpy().astype(np.float32), "t": t.numpy().astype(np.float32), "y": y.numpy()}
        return torch.from_numpy(session.run(None, feeds)[0])

    return forward


def decoder_parity(ckpt: Checkpoint, decode: Callable[[Tensor], Tensor], batches: tuple[int, ...] = (1, 7)) -> float:
    """Max |decode(z) - torch decoder(z)| over random raw latents of each batch size (seeded)."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.inference_mode():
        for b in batches:
            z = torch.randn((b, *ckpt.data_shape), generator=g) / float(ckpt.latent["scale_factor"])
            worst = max(worst, float((decode(z) - ckpt.decoder()(z)).abs().max()))
    return worst


def eval_parity(
    ckpt: Checkpoint,
    forward: Forward,
    batches: Sequence[int] = (1, 7, 64),
    weights: str = "ema",
    tolerance: float = EVAL_TOLERANCE,
    seed: int = 0,
) -> list[ParityResult]:
    """max |forward - torch net| per batch size."""
    net = ckpt.net(weights)
    results = []
    for i, b in enumerate(batches):
        x, t, y = random_inputs(ckpt, b, seed + i)
        with torch.inference_mode():
            ref = net(x, t, y)
        out = forward(x, t, y)
        if out.shape != ref.shape:
            raise ExportError(f"batch {b}: output shape {tuple(out.shape)} != torch's {tuple(ref.shape)}")
        results.append(ParityResult(b, float((out.float() - ref).abs().max()), tolerance))
    return results
