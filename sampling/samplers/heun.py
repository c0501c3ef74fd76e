"""Heun's 2nd-order method as EDM uses it (Karras et al. 2022, Algorithm 1, no churn): per step an Euler
predictor and a trapezoidal corrector, 2 evaluations per step except the last, which is plain Euler
(EDM's last step ends at sigma = 0; here, for FM, at the data end where the field may be singular).
K steps cost 2K - 1 evaluations; global error O(h^2).

DDPM: the probability-flow ODE in EDM's variables, x_hat = x / sqrt(alpha_bar), sigma = sqrt((1 - ab) / ab),
is d x_hat / d sigma = eps(x, t): the eps the net predicts (any target, converted). Steps run over the
project's timestep spacing and then to sigma = 0. FM: dx/dt = v(x, t) on a uniform grid over [0, t_end].
"""

from __future__ import annotations

import torch
from torch import Tensor

from sampling.samplers.base import Evaluation, SamplerGen, full_t
from sampling.samplers.spacing import timesteps
from training.paths import DDPMObjective, FMObjective, to_eps_x0


def heun(
    objective: DDPMObjective,
    noise: Tensor,
    steps: int,
    generator: torch.Generator,
    spacing: str = "trailing",
) -> SamplerGen:
    """EDM Heun on DDPM's probability-flow ODE over `spacing`'s K timesteps, then to the data."""
    sched = objective.schedule
    ts = timesteps(spacing, steps, sched.num_timesteps)
    ab = sched.alpha_bar_at(torch.as_tensor(ts)).tolist()
    scale = [a**0.5 for a in ab]  # x = scale * x_hat
    sig = [((1 - a) / a) ** 0.5 for a in ab] + [0.0]
    b = noise.shape[0]

    def eps_at(x_hat: Tensor, i: int) -> SamplerGen:
        x = scale[i] * x_hat
        pred = yield Evaluation(x, full_t(ts[i], b))
        return to_eps_x0(x, pred, torch.tensor(ab[i]), objective.target)[0]

    x_hat = noise.float() / scale[0]
    for i in range(len(ts) - 1):
        d = yield from eps_at(x_hat, i)
        x_euler = x_hat + (sig[i + 1] - sig[i]) * d
        d_next = yield from eps_at(x_euler, i + 1)
        x_hat = x_hat + (sig[i + 1] - sig[i]) * 0.5 * (d + d_next)
    d = yield from eps_at(x_hat, len(ts) - 1)
    return x_hat - sig[-2] * d  # Euler to sigma = 0, where x_hat is x itself


def fm_heun(objective: FMObjective, noise: Tensor, steps: int, generator: torch.Generator) -> SamplerGen:
    """EDM Heun on the flow-matching velocity field, uniform steps over [0, t_end]."""
    x = noise.float()
    b, h = x.shape[0], objective.t_end / steps
    for i in range(steps - 1):
        v = yield Evaluation(x, full_t(i * h, b))
        v_next = yield Evaluation(x + h * v, full_t((i + 1) * h, b))
        x = x + 0.5 * h * (v + v_next)
    v = yield Evaluation(x, full_t((steps - 1) * h, b))
    return x + h * v
