"""Flow-matching probability paths x_t = alpha_t x1 + sigma_t x0 (noise x0 at t = 0, data x1 at t = 1).

linear (rectified flow, Lipman et al. 2023 "OT path"): alpha_t = t, sigma_t = 1 - t.
vp (Song et al. 2021's variance-preserving SDE as an FM path, Lipman et al. 2023 sec. 4.1): with s = 1 - t,
    alpha_t = exp(-B(s) / 2),  B(s) = beta_min s + (beta_max - beta_min) s^2 / 2,  sigma_t = sqrt(1 - alpha_t^2),
    beta(s) = beta_min + s (beta_max - beta_min), beta_min = 0.1, beta_max = 20.
It is the continuous-time limit of DDPM's linear schedule (beta_i = beta(i / T) / T, T = 1000): DDPM's
x_i ~ N(sqrt(alpha_bar_i) x1, (1 - alpha_bar_i) I) is the vp path at s = (i + 1) / T. Its sigma_t behaves like
sqrt(beta_min s) near the data, so the velocity d sigma / dt blows up at t = 1; the path is therefore used on
[0, 1 - 1/T] (t_end), where sigma = 0.01 matches DDPM's first timestep, and samplers integrate up to t_end.
The conditional velocity target is d/dt x_t = alpha'_t x1 + sigma'_t x0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

FM_PATHS = ("linear", "vp")
VP_BETA_MIN = 0.1
VP_BETA_MAX = 20.0
VP_T_END = 1.0 - 1.0 / 1000  # DDPM's first timestep: the vp velocity is singular at t = 1


@dataclass(frozen=True)
class PathCoefficients:
    """alpha_t, sigma_t and their time derivatives, each shaped like the t they came from."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


def linear_path(t: Tensor) -> PathCoefficients:
    one = torch.ones_like(t)
    return PathCoefficients(t, 1 - t, one, -one)


def vp_path(t: Tensor, beta_min: float = VP_BETA_MIN, beta_max: float = VP_BETA_MAX) -> PathCoefficients:
    s = 1 - t
    big_b = beta_min * s + 0.5 * (beta_max - beta_min) * s**2
    beta = beta_min + (beta_max - beta_min) * s
    alpha = torch.exp(-0.5 * big_b)
    # 1 - exp(-B) via expm1 keeps sigma accurate near the data, where B is tiny.
    sigma = torch.sqrt(-torch.expm1(-big_b))
    d_alpha = 0.5 * beta * alpha  # d/dt = -d/ds
    d_sigma = -alpha * d_alpha / sigma
    return PathCoefficients(alpha, sigma, d_alpha, d_sigma)


def path_coefficients(path: str, t: Tensor) -> PathCoefficients:
    """Coefficients of path `path` at t (any shape)."""
    if path == "linear":
        return linear_path(t)
    if path == "vp":
        return vp_path(t)
    raise ValueError(f"unknown flow-matching path {path!r}; expected one of {FM_PATHS}")


def path_t_end(path: str) -> float:
    """Where samplers stop integrating: 1 (data) for linear, 1 - 1/T for vp."""
    return VP_T_END if path == "vp" else 1.0


def velocity_to_data(path: str, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """The data (x1) estimate from a velocity prediction v at (x_t, t) (B, ...), t (B,).

    From x_t = alpha x1 + sigma x0 and v = alpha' x1 + sigma' x0, eliminating the noise x0:
        x1 = (sigma v - sigma' x_t) / (sigma alpha' - sigma' alpha);
    on the linear path the denominator is 1 and x1 = x_t + (1 - t) v.
    """
    c = path_coefficients(path, t.to(x_t.dtype))
    shape = (-1, *([1] * (x_t.dim() - 1)))
    a, s = c.alpha.reshape(shape), c.sigma.reshape(shape)
    da, ds = c.d_alpha.reshape(shape), c.d_sigma.reshape(shape)
    return (s * v - ds * x_t) / (s * da - ds * a)
