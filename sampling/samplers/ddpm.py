"""DDPM ancestral sampling (Ho et al. 2020) and DDIM (Song et al. 2021) on a K-step subsequence."""

from __future__ import annotations

import torch
from torch import Tensor

from sampling.samplers.base import Evaluation, SamplerGen
from sampling.samplers.spacing import timesteps
from training.paths import DDPMObjective, to_eps_x0


def _pairs(objective: DDPMObjective, steps: int, spacing: str) -> list[tuple[int, float, float]]:
    """(t, alpha_bar_t, alpha_bar_prev) for each step; the step after the last lands on data (alpha_bar 1)."""
    sched = objective.schedule
    ts = timesteps(spacing, steps, sched.num_timesteps)
    prev = list(ts[1:]) + [-1]
    ab = sched.alpha_bar_at(torch.as_tensor(ts))
    ab_prev = sched.alpha_bar_at(torch.as_tensor(prev))
    return [(int(t), float(a), float(b)) for t, a, b in zip(ts, ab, ab_prev, strict=True)]


def ddim(
    objective: DDPMObjective,
    noise: Tensor,
    steps: int,
    generator: torch.Generator,
    eta: float = 0.0,
    spacing: str = "trailing",
) -> SamplerGen:
    """DDIM (Song et al. 2021, eq. 12): x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s). eta = 0 is deterministic."""
    x = noise.float()
    b = x.shape[0]
    for t, ab_t, ab_s in _pairs(objective, steps, spacing):
        pred = yield Evaluation(x, torch.full((b,), float(t)))
        eps, x0 = to_eps_x0(x, pred, torch.tensor(ab_t), objective.target)
        sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)) ** 0.5
        x = ab_s**0.5 * x0 + max(1 - ab_s - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator)
    return x


def ddpm(
    objective: DDPMObjective,
    noise: Tensor,
    steps: int,
    generator: torch.Generator,
    spacing: str = "trailing",
) -> SamplerGen:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) with sigma^2 = beta: between timesteps t > s,
    x_s ~ N(posterior mean of q(x_s | x_t, x0_hat), beta_{t->s}), beta_{t->s} = 1 - ab_t / ab_s.
    With K = T this is exactly Algorithm 2; the last step returns the mean (no noise)."""
    x = noise.float()
    b = x.shape[0]
    for t, ab_t, ab_s in _pairs(objective, steps, spacing):
        pred = yield Evaluation(x, torch.full((b,), float(t)))
        _, x0 = to_eps_x0(x, pred, torch.tensor(ab_t), objective.target)
        alpha_ts = ab_t / ab_s
        beta_ts = 1 - alpha_ts
        # Posterior mean of q(x_s | x_t, x0) (Ho et al. eq. 7 with the step t -> s).
        mean = (ab_s**0.5 * beta_ts / (1 - ab_t)) * x0 + (alpha_ts**0.5 * (1 - ab_s) / (1 - ab_t)) * x
        x = mean
        if ab_s < 1.0:
            x = x + beta_ts**0.5 * torch.randn(x.shape, generator=generator)
    return x
