"""DDPM noise schedules (discrete time t in [0, T), T = 1000).

x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,  alpha_bar_t = prod_{s<=t} (1 - beta_s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000
SCHEDULES = ("linear", "cosine")


def linear_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS, start: float = 1e-4, end: float = 0.02) -> Tensor:
    """Ho et al. (2020): beta_t linear from 1e-4 to 0.02. Returns (T,) float64."""
    return torch.linspace(start, end, num_timesteps, dtype=torch.float64)


def cosine_alpha_bar(t: Tensor, num_timesteps: int = NUM_TRAIN_TIMESTEPS, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal (2021) f(t) / f(0) with f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2)."""

    def f(u: Tensor) -> Tensor:
        return torch.cos((u / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    return f(t.to(torch.float64)) / f(torch.zeros((), dtype=torch.float64))


def cosine_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine betas, beta_t = 1 - abar(t+1)/abar(t), clipped at 0.999 as in the paper. Returns (T,) float64."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64)
    abar = cosine_alpha_bar(steps, num_timesteps, s)
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


@dataclass(frozen=True)
class DDPMSchedule:
    """Tables of a discrete VP schedule, each (T,) float64.

    Index t of `alpha_bar` is the marginal of x_t; x_{-1} is the data (alpha_bar = 1).
    """

    name: str
    betas: Tensor

    @classmethod
    def create(cls, name: str, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> DDPMSchedule:
        if name == "linear":
            return cls(name, linear_betas(num_timesteps))
        if name == "cosine":
            return cls(name, cosine_betas(num_timesteps))
        raise ValueError(f"unknown beta schedule {name!r}; expected one of {SCHEDULES}")

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> Tensor:
        return 1.0 - self.betas

    @property
    def alpha_bar(self) -> Tensor:
        return torch.cumprod(self.alphas, dim=0)

    def alpha_bar_at(self, t: Tensor) -> Tensor:
        """alpha_bar at integer timesteps t (any shape, long); t = -1 gives 1 (clean data)."""
        table = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar])
        return table[t.long() + 1]
