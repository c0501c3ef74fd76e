"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): multistep, data prediction, for DDPM nets.

With alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), lambda_t = log(alpha_t / sigma_t) and
h_i = lambda_{t_{i+1}} - lambda_{t_i}, one step from t_i to t_{i+1} is the exponential integrator
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (exp(-h_i) - 1) D_i,
D_0 = x0_hat_0 (first order), then D_i = (1 + 1 / (2 r_i)) x0_hat_i - 1 / (2 r_i) x0_hat_{i-1}, r_i = h_{i-1} / h_i.
The last step goes to sigma = 0 and so returns x0_hat (diffusers' final_sigmas_type "zero", which makes its
final step first order). Settings match diffusers' DPMSolverMultistepScheduler(solver_order=2,
algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True), including its timesteps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sampling.samplers.base import Evaluation, SamplerGen, full_t
from sampling.samplers.spacing import solver_grid
from training.paths import DDPMObjective, to_eps_x0


def dpm_solver_pp(
    objective: DDPMObjective,
    noise: Tensor,
    steps: int,
    generator: torch.Generator,
    spacing: str = "trailing",
) -> SamplerGen:
    """DPM-Solver++(2M): K evaluations; global error O(h^2) in lambda. Deterministic (no fresh noise)."""
    ts, ab, alpha, sigma = solver_grid(objective.schedule, spacing, steps)
    lam = [math.log(a / s) for a, s in zip(alpha, sigma, strict=True)]
    x = noise.float()
    b = x.shape[0]
    x0_prev: Tensor | None = None
    h_prev = 0.0
    for i in range(len(ts) - 1):
        pred = yield Evaluation(x, full_t(ts[i], b))
        _, x0 = to_eps_x0(x, pred, torch.tensor(ab[i]), objective.target)
        h = lam[i + 1] - lam[i]
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        x = (sigma[i + 1] / sigma[i]) * x - (alpha[i + 1] * math.expm1(-h)) * d
        x0_prev, h_prev = x0, h
    pred = yield Evaluation(x, full_t(ts[-1], b))
    # The last step ends at sigma = 0, where the exponential integrator lands on the data prediction itself.
    return to_eps_x0(x, pred, torch.tensor(ab[-1]), objective.target)[1]
