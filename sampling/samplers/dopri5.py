"""Adaptive Dormand-Prince 5(4) (Dormand & Prince 1980; Hairer, Norsett & Wanner, "Solving ODEs I", II.4-5)
on the flow-matching velocity field, t from 0 to t_end.

Step-size control as torchdiffeq's dopri5 does it, so the two take the same steps: local error estimate
e = h sum_j (b_j - b*_j) k_j, ratio = RMS over all the request's elements of e / (atol + rtol max(|x|, |x_new|)),
accept when ratio <= 1, next h = h min(10, max(0.9 ratio^(-1/5), 0.2 if rejected else 1)). The last step is
clipped to land on t_end. FSAL: an accepted step's last stage is the next step's first, so each attempt costs
6 evaluations and NFE = 1 + 6 x attempts.

Accepting or rejecting happens here, between evaluations, so the driver (or the engine) only ever sees a
stream of evaluations and never waits on this request. The request's own samples share one step size.

Budget: `steps` sets the first trial step, t_end / steps; `max_nfe` (default 6 steps + 1, the cost of `steps`
Dormand-Prince steps) caps evaluations. When the remaining budget can no longer cover the rest of the
interval at the current step size, the solver stops adapting and spends what is left on equal steps that it
accepts, so it always ends at t_end within max_nfe.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sampling.samplers.base import Evaluation, SamplerGen, full_t
from training.paths import FMObjective

# Butcher tableau (Dormand & Prince 1980): nodes c, stage weights a, 5th-order weights b (also the 7th,
# FSAL, stage's row) and the error weights b - b* (b* the embedded 4th-order solution).
C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
B = A[6] + (0.0,)
E = (
    35 / 384 - 1951 / 21600,
    0.0,
    500 / 1113 - 22642 / 50085,
    125 / 192 - 451 / 720,
    -2187 / 6784 + 12231 / 42400,
    11 / 84 - 649 / 6300,
    -1 / 60,
)
EVALS_PER_ATTEMPT = 6
SAFETY, IFACTOR, DFACTOR, ORDER = 0.9, 10.0, 0.2, 5
DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-4


def next_step_size(h: float, ratio: float) -> float:
    """torchdiffeq's _optimal_step_size: grow at most 10x; shrink at most 5x, and only after a rejection."""
    if ratio == 0:
        return h * IFACTOR
    if not math.isfinite(ratio):
        return h * DFACTOR
    floor = DFACTOR if ratio >= 1 else 1.0
    return h * min(IFACTOR, max(SAFETY / ratio ** (1 / ORDER), floor))


def _combine(x: Tensor, h: float, weights: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    out = x
    for w, k in zip(weights, ks, strict=False):
        if w != 0.0:
            out = out + (h * w) * k
    return out


def fm_dopri5(
    objective: FMObjective,
    noise: Tensor,
    steps: int,
    generator: torch.Generator,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    max_nfe: int | None = None,
) -> SamplerGen:
    """Dormand-Prince 5(4) with adaptive steps: NFE = 1 + 6 x (accepted + rejected steps) <= max_nfe."""
    budget = 1 + EVALS_PER_ATTEMPT * steps if max_nfe is None else max_nfe
    t_end = objective.t_end
    x = noise.float()
    b = x.shape[0]
    k1 = yield Evaluation(x, full_t(0.0, b))
    nfe, t, h = 1, 0.0, t_end / steps
    while t < t_end:
        remaining = t_end - t
        attempts_left = (budget - nfe) // EVALS_PER_ATTEMPT
        forced = attempts_left <= 1 or attempts_left * h < remaining
        if forced:
            h = remaining / max(attempts_left, 1)
        # The budget's final step must end exactly at t_end, whatever t + h rounds to.
        last = (forced and attempts_left <= 1) or t + h >= t_end
        if last:
            h = remaining
        ks = [k1]
        for stage in range(1, 7):
            k = yield Evaluation(_combine(x, h, A[stage], ks), full_t(t + C[stage] * h, b))
            ks.append(k)
        nfe += EVALS_PER_ATTEMPT
        x_new = _combine(x, h, B, ks)  # the 7th stage was evaluated at exactly this point (FSAL)
        err = _combine(torch.zeros_like(x), h, E, ks)
        tol = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        ratio = (err / tol).pow(2).mean().sqrt().item()
        if ratio <= 1 or forced:
            t = t_end if last else t + h
            x, k1 = x_new, ks[6]
        h = next_step_size(h, ratio)
    return x
