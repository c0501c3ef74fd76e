"""Residual MLP for low-dimensional data (moons; small images, flattened): forward(x, t, y) -> same shape as x."""

from __future__ import annotations

from torch import Tensor, nn

from training.nets.embeddings import LabelEmbedder, TimestepEmbedder


class ResBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.cond = nn.Linear(hidden, hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        return h + self.ff(nn.functional.silu(self.norm(h) + self.cond(c)))


class MLP(nn.Module):
    """x (B, D) or (B, *shape) with prod(shape) = D -> same shape; time and class enter every block through an
    additive conditioning vector. Images are flattened: the MLP knows no spatial structure (the DiT does)."""

    def __init__(
        self, data_dim: int, num_classes: int, hidden: int = 256, depth: int = 4, t_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.inp = nn.Linear(data_dim, hidden)
        self.time = TimestepEmbedder(hidden, t_scale=t_scale)
        self.label = LabelEmbedder(num_classes, hidden)
        self.blocks = nn.ModuleList(ResBlock(hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, data_dim))

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """x: (B, *shape), t: (B,) float, y: (B,) long in [0, num_classes] -> (B, *shape)."""
        c = nn.functional.silu(self.time(t) + self.label(y))  # (B, H)
        h = self.inp(x.flatten(1))  # (B, D)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h).reshape(x.shape)
