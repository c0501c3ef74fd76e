"""Classifier-free guidance (Ho & Salimans 2022): pred = uncond + w * (cond - uncond).

A guided request's evaluation runs its conditional and null-label rows in the same batch:
`expand` doubles the rows, `combine` folds the net's output back. An unguided request passes its
rows through unchanged (class label, or the null label when it has none).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sampling.samplers.base import Forward


def labels(num_rows: int, class_label: int | None, null_label: int) -> Tensor:
    """(N,) long: the class label on every row, or the null label for an unconditional request."""
    return torch.full((num_rows,), null_label if class_label is None else class_label, dtype=torch.long)


def expand(x: Tensor, t: Tensor, y: Tensor, guided: bool, null_label: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rows for the net: (x, t, y) as is, or [cond; uncond] stacked along the batch (2N rows)."""
    if not guided:
        return x, t, y
    return torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)])


def combine(out: Tensor, guidance: float | None) -> Tensor:
    """Fold the net's output for `expand`ed rows back into one prediction per row."""
    if guidance is None:
        return out
    cond, uncond = out.chunk(2)
    return uncond + guidance * (cond - uncond)


def guided_forward(
    forward: Forward, x: Tensor, t: Tensor, y: Tensor, guidance: float | None, null_label: int
) -> Tensor:
    xs, ts, ys = expand(x, t, y, guidance is not None, null_label)
    return combine(forward(xs, ts, ys), guidance)
