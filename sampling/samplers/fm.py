"""Flow-matching ODE solvers: noise at t = 0, data at t = 1, dx/dt = v(x, t), uniform steps over [0, t_end]
(t_end = 1 except on paths whose velocity is singular at the data, see `training.paths.fm_paths`)."""

from __future__ import annotations

import torch
from torch import Tensor

from sampling.samplers.base import Evaluation, SamplerGen, full_t
from training.paths import FMObjective


def fm_euler(objective: FMObjective, noise: Tensor, steps: int, generator: torch.Generator) -> SamplerGen:
    """Explicit Euler, x <- x + h v(x, t): K evaluations, global error O(h)."""
    x = noise.float()
    b, h = x.shape[0], objective.t_end / steps
    for i in range(steps):
        v = yield Evaluation(x, full_t(i * h, b))
        x = x + h * v
    return x


def fm_rk4(objective: FMObjective, noise: Tensor, steps: int, generator: torch.Generator) -> SamplerGen:
    """Classical Runge-Kutta 4: 4K evaluations, global error O(h^4)."""
    x = noise.float()
    b, h = x.shape[0], objective.t_end / steps
    for i in range(steps):
        t = i * h
        k1 = yield Evaluation(x, full_t(t, b))
        k2 = yield Evaluation(x + 0.5 * h * k1, full_t(t + 0.5 * h, b))
        k3 = yield Evaluation(x + 0.5 * h * k2, full_t(t + 0.5 * h, b))
        k4 = yield Evaluation(x + h * k3, full_t(t + h, b))
        x = x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
    return x
