"""UniPC-bh2 (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"): order 2, data prediction, for DDPM nets.

With alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), lambda = log(alpha / sigma), h_i the step in
lambda from t_i to t_{i+1} and x0_i the data prediction at (x_i, t_i), each step is

- **UniC**, the corrector (every step but the first): x_i, reached by the previous predictor, is refined
  with x0_i, the evaluation just made there, at no extra evaluation:
      x_i <- (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h} - 1) x0_{i-1}
             - alpha_i B(h) (rho_1 D_1 + rho_t (x0_i - x0_{i-1})),   B(h) = e^{-h} - 1 (bh2),
  D_1 = (x0_{i-2} - x0_{i-1}) / r_1, r_1 = (lambda_{i-2} - lambda_{i-1}) / h, h = lambda_i - lambda_{i-1},
  (rho_1, rho_t) solving [[1, 1], [r_1, 1]] rho = (b_1, b_2) (rho_t = 1/2 alone when the previous predictor
  was first order), b_1 = (phi / hh - 1) / B(h), b_2 = 2 ((phi / hh - 1) / hh - 1/2) / B(h), hh = -h,
  phi = e^{hh} - 1;
- **UniP**, the predictor: x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h_i} - 1) x0_i
  - alpha_{i+1} B(h_i) D_1 / 2, with D_1 from x0_{i-1} (first order, no D_1, on the first step and the last).

The last step goes to sigma = 0, so the result is the data prediction of the last evaluation (diffusers'
final_sigmas_type "zero"). The data prediction a step stores is the one made at the point before its
correction, as diffusers does. Settings match diffusers' UniPCMultistepScheduler(solver_order=2,
solver_type="bh2", predict_x0=True, lower_order_final=True, disable_corrector=[]), including its
timesteps (those of DPM-Solver, `solver_timesteps`). K evaluations.

`fm_unipc` is the same solver for flow-matching nets: the FM path is a Gaussian path too (alpha_t on the
data, sigma_t on the noise), so the steps above hold with its coefficients and the data prediction from the
velocity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sampling.samplers.base import Evaluation, SamplerGen, full_t
from sampling.samplers.spacing import solver_grid
from training.paths import DDPMObjective, FMObjective, to_eps_x0
from training.paths.fm_paths import path_coefficients, velocity_to_data

FLOW_START = 1e-6  # t of the first point in lambda (diffusers' flow sigmas start at 1 - 1e-6)


def _b(h: float) -> tuple[float, float, float]:
    """B(h) of bh2 and the b_1, b_2 of UniPC's order conditions, for a step of h in lambda (data prediction)."""
    hh = -h
    phi = math.expm1(hh)
    big_b = phi
    k1 = phi / hh - 1.0
    k2 = k1 / hh - 0.5
    return big_b, k1 / big_b, 2.0 * k2 / big_b


def _unipc(
    x: Tensor,
    times: list[float],
    alpha: list[float],
    sigma: list[float],
    to_x0: Callable[[Tensor, Tensor, int], Tensor],
) -> SamplerGen:
    """UniPC-bh2 over a Gaussian path: evaluations at net times `times` (n), the path's alpha and sigma at
    those points and at the end point (n + 1 each), `to_x0(x, prediction, i)` the data prediction."""
    n = len(times)
    lam = [math.log(a / s) if s > 0 else math.inf for a, s in zip(alpha, sigma, strict=True)]
    b = x.shape[0]
    x0s: list[Tensor] = []  # data predictions of the last two steps, newest last
    x_prev = x
    order_prev = 0
    for i in range(n):
        pred = yield Evaluation(x, full_t(times[i], b))
        x0 = to_x0(x, pred, i)
        if i > 0:  # UniC: refine x_i, reached from x_{i-1} by the predictor of order order_prev
            h = lam[i] - lam[i - 1]
            big_b, b1, b2 = _b(h)
            m0 = x0s[-1]
            base = (sigma[i] / sigma[i - 1]) * x_prev - (alpha[i] * math.expm1(-h)) * m0
            if order_prev == 1:
                x = base - (alpha[i] * big_b * 0.5) * (x0 - m0)
            else:
                r1 = (lam[i - 2] - lam[i - 1]) / h
                rho1 = (b1 - b2) / (1.0 - r1)
                rho_t = b1 - rho1
                d1 = (x0s[-2] - m0) / r1
                x = base - (alpha[i] * big_b) * (rho1 * d1 + rho_t * (x0 - m0))
        x0s = [*x0s[-1:], x0]
        order = min(2, n - i, i + 1)  # first order to start (one prediction) and on the last step
        x_prev, order_prev = x, order
        # UniP: from point i to point i + 1
        h = lam[i + 1] - lam[i]
        x_next = (sigma[i + 1] / sigma[i]) * x - (alpha[i + 1] * math.expm1(-h)) * x0
        if order == 2:
            r1 = (lam[i - 1] - lam[i]) / h
            x_next = x_next - (alpha[i + 1] * math.expm1(-h) * 0.5) * ((x0s[-2] - x0) / r1)
        x = x_next
    return x


def unipc(
    objective: DDPMObjective,
    noise: Tensor,
    steps: int,
    generator: torch.Generator,
    spacing: str = "trailing",
) -> SamplerGen:
    """UniPC-bh2, order 2, data prediction: K evaluations. Deterministic (no fresh noise)."""
    ts, ab, alpha, sigma = solver_grid(objective.schedule, spacing, steps)
    alpha, sigma = [*alpha, 1.0], [*sigma, 0.0]  # the end of the last step: sigma = 0 (clean data)

    def to_x0(x: Tensor, pred: Tensor, i: int) -> Tensor:
        return to_eps_x0(x, pred, torch.tensor(ab[i]), objective.target)[1]

    return (yield from _unipc(noise.float(), [float(t) for t in ts], alpha, sigma, to_x0))


def fm_unipc(objective: FMObjective, noise: Tensor, steps: int, generator: torch.Generator) -> SamplerGen:
    """UniPC-bh2 for a flow-matching net: uniform steps over [0, t_end] as the other FM solvers take, the
    path's alpha_t (data) and sigma_t (noise) as above, the data prediction from the velocity
    (`velocity_to_data`). On the linear path this is diffusers' UniPCMultistepScheduler with
    use_flow_sigmas and prediction_type "flow_prediction" (s = 1 - t, its flow = -v), whose start
    s = 1 - 1e-6 (lambda finite) is taken here too. K evaluations, deterministic."""
    h = objective.t_end / steps
    grid = [i * h for i in range(steps + 1)]
    start = [max(grid[0], FLOW_START), *grid[1:]]  # lambda = log(alpha / sigma) is -inf at pure noise
    c = path_coefficients(objective.path, torch.tensor(start, dtype=torch.float64))
    alpha, sigma = c.alpha.tolist(), c.sigma.tolist()

    def to_x0(x: Tensor, v: Tensor, i: int) -> Tensor:
        return velocity_to_data(objective.path, x, torch.full((x.shape[0],), grid[i]), v)

    return (yield from _unipc(noise.float(), grid[:-1], alpha, sigma, to_x0))
