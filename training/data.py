"""Data sets, normalization and reference samples.

moons:  scikit-learn make_moons(noise=0.05), 2 classes (which moon), standardized per axis.
digits: scikit-learn load_digits, 8x8 images, 10 classes; data space is pixel intensity in [0, 1]
        (raw / 16), normalized to [-1, 1].
shapes: training/shapes.py, 32x32 RGB images of 5 kinds drawn from a seed; data space [0, 1], normalized to
        [-1, 1]. With an autoencoder (training/latents.py) a model trains on its latents instead.
Samples are mapped back to data space with `Normalization.denormalize`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

DATA_KINDS = ("moons", "digits", "shapes")
SHAPES_REFERENCE_SEED = 30_000  # reference draws of shapes start here: apart from training (0..) and the classifier's
MOONS_NOISE = 0.05


@dataclass(frozen=True)
class Normalization:
    """normalized = (data - mean) / std, per feature axis (lists broadcast against a sample's shape)."""

    mean: list[float]
    std: list[float]

    def _stats(self, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        view = (-1,) + (1,) * (len(shape) - 1) if len(shape) > 1 else (-1,)
        mean = torch.tensor(self.mean, dtype=torch.float32).reshape(view)
        std = torch.tensor(self.std, dtype=torch.float32).reshape(view)
        return mean, std

    def normalize(self, x: Tensor) -> Tensor:
        mean, std = self._stats(tuple(x.shape[1:]))
        return (x - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        mean, std = self._stats(tuple(x.shape[1:]))
        return x * std + mean

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Dataset:
    """x: (N, *shape) normalized float32; y: (N,) long class labels. `noise`: (N, *shape) when each row's noise is
    fixed (a reflow coupling: x is the teacher's ODE solution from it; null labels already among y), else None
    (training draws fresh noise and drops labels itself)."""

    kind: str
    x: Tensor
    y: Tensor
    shape: tuple[int, ...]
    num_classes: int
    normalization: Normalization
    noise: Tensor | None = None
    latent: object | None = None  # a training.latents.LatentSpace when x holds an autoencoder's latents


def moons_raw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points of two moons in data space, (n, 2) float32, labels (n,)."""
    from sklearn.datasets import make_moons  # here, not at the top: serving imports this module, never this

    x, y = make_moons(n_samples=n, noise=MOONS_NOISE, random_state=seed)
    return x.astype(np.float32), y.astype(np.int64)


def digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits in data space, (N, 1, 8, 8) float32 in [0, 1], labels (N,)."""
    from sklearn.datasets import load_digits  # (scikit-learn costs a replica ~1 s to import: only on use)

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)


def load_dataset(kind: str, n: int = 20000, seed: int = 0) -> Dataset:
    """The training set of `kind`; `n` and `seed` matter for moons and shapes (digits is a fixed set)."""
    if kind == "moons":
        raw, y = moons_raw(n, seed)
        norm = Normalization(mean=raw.mean(0).tolist(), std=raw.std(0).tolist())
        shape: tuple[int, ...] = (2,)
        num_classes = 2
    elif kind == "digits":
        raw, y = digits_raw()
        norm = Normalization(mean=[0.5], std=[0.5])
        shape = (1, 8, 8)
        num_classes = 10
    elif kind == "shapes":
        from training.shapes import CLASSES, SIZE, shapes_raw

        raw, y = shapes_raw(n, seed)
        norm = Normalization(mean=[0.5], std=[0.5])
        shape = (3, SIZE, SIZE)
        num_classes = len(CLASSES)
    else:
        raise ValueError(f"data.kind: unknown {kind!r}; expected one of {DATA_KINDS}")
    x = norm.normalize(torch.from_numpy(raw))
    return Dataset(kind, x, torch.from_numpy(y), shape, num_classes, norm)


def reference_samples(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh data-space samples for quality metrics: new moons or shapes draws, or digits drawn with replacement."""
    if kind == "moons":
        return moons_raw(n, seed)
    if kind == "shapes":
        from training.shapes import shapes_raw

        return shapes_raw(n, SHAPES_REFERENCE_SEED + seed)
    if kind == "digits":
        raw, y = digits_raw()
        idx = np.random.default_rng(seed).integers(0, len(raw), n)
        return raw[idx], y[idx]
    raise ValueError(f"unknown data kind {kind!r}; expected one of {DATA_KINDS}")
