"""Time and label embeddings shared by the MLP and the DiT."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalTimeEmbedding(nn.Module):
    """sin/cos of (t * t_scale) * freq, freq log-spaced from 1 down to 1/10000 (no 2*pi factor).

    t_scale = 1 for DDPM's integer t in [0, 1000); 1000 for FM's t in [0, 1], so that both see the
    full frequency ladder (otherwise the embedding of t in [0, 1] is nearly linear, rank ~2).
    """

    def __init__(self, dim: int, t_scale: float = 1.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.t_scale = float(t_scale)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) float -> (B, dim)."""
        args = (t.float() * self.t_scale)[:, None] * self.freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding followed by a two-layer MLP (DiT's TimestepEmbedder)."""

    def __init__(self, hidden: int, freq_dim: int = 64, t_scale: float = 1.0) -> None:
        super().__init__()
        self.sinusoid = SinusoidalTimeEmbedding(freq_dim, t_scale)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.sinusoid(t))  # (B, hidden)


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row: index `num_classes` is the null label used for CFG.

    Label dropout (replacing labels by the null label) happens in the trainer, not here, so that
    exported graphs carry no randomness.
    """

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: Tensor) -> Tensor:
        return self.table(y.long())  # (B, hidden)
