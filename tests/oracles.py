"""Exact predictions for data whose denoiser is known in closed form, to test samplers without training.

Gaussian data N(m, C) and a small finite point set, for the DDPM path
(x_t = sqrt(ab) x0 + sqrt(1 - ab) eps) and the FM paths (linear: x_t = (1 - t) z + t x1; Gaussian data also vp).
Each oracle has the net signature forward(x, t, y) -> prediction; y is ignored unless stated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.paths import DDPMSchedule, path_coefficients
from training.paths.conversions import x0_to_eps


def _col(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


class GaussianDDPM:
    """E[x0 | x_t] for x0 ~ N(m, C): m + a C (a^2 C + s^2 I)^-1 (x_t - a m); returns eps (or x0 / v)."""

    def __init__(self, mean: Tensor, cov: Tensor, schedule: DDPMSchedule, target: str = "eps") -> None:
        self.m, self.C, self.sched, self.target = mean.double(), cov.double(), schedule, target

    def x0_hat(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        ab = self.sched.alpha_bar_at(t.round().long())  # (B,)
        a, s2 = ab.sqrt(), 1 - ab
        eye = torch.eye(len(self.m), dtype=torch.float64)
        xd = x.double()
        S = a[:, None, None] ** 2 * self.C + s2[:, None, None] * eye  # (B, D, D): rows may sit at different t
        r = torch.linalg.solve(S, xd - a[:, None] * self.m)  # (B, D)
        return self.m + a[:, None] * (r @ self.C.T), ab

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        x0, ab = self.x0_hat(x, t)
        abc = _col(ab, x0)
        if self.target == "x0":
            return x0.float()
        eps = x0_to_eps(x.double(), x0, abc)
        if self.target == "eps":
            return eps.float()
        return (abc.sqrt() * eps - (1 - abc).sqrt() * x0).float()


class GaussianFM:
    """Velocity of an FM path x_t = alpha_t x1 + sigma_t z to N(m, C) (linear path: alpha = t, sigma = 1 - t):
    v = alpha' E[x1 | x] + sigma' E[z | x] with x ~ N(alpha m, S), S = alpha^2 C + sigma^2 I,
    E[x1 | x] = m + alpha C S^-1 (x - alpha m), E[z | x] = sigma S^-1 (x - alpha m)."""

    def __init__(self, mean: Tensor, cov: Tensor, path: str = "linear") -> None:
        self.m, self.C, self.path = mean.double(), cov.double(), path

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        xd = x.double()
        c = path_coefficients(self.path, t.double())
        a, s = c.alpha[:, None], c.sigma[:, None]
        eye = torch.eye(len(self.m), dtype=torch.float64)
        S = a[:, :, None] ** 2 * self.C + s[:, :, None] ** 2 * eye  # (B, D, D)
        r = torch.linalg.solve(S, xd - a * self.m)  # (B, D)
        x1 = self.m + a * (r @ self.C.T)
        z = s * r
        return (c.d_alpha[:, None] * x1 + c.d_sigma[:, None] * z).float()

    def flow_map(self, z: Tensor, t_end: float = 1.0, t_start: float = 0.0) -> Tensor:
        """Exact solution at t_end of the ODE from z at t_start (noise at 0): every marginal covariance
        S_t = alpha_t^2 C + sigma_t^2 I shares C's eigenbasis, so x_t = alpha_t m + S_t^(1/2) S_s^(-1/2) (z - alpha_s m)
        (linear path from 0 to 1: x1 = m + C^(1/2) z)."""
        c0 = path_coefficients(self.path, torch.tensor(t_start, dtype=torch.float64))
        c1 = path_coefficients(self.path, torch.tensor(t_end, dtype=torch.float64))
        evals, evecs = torch.linalg.eigh(self.C)
        gain = ((c1.alpha**2 * evals + c1.sigma**2) / (c0.alpha**2 * evals + c0.sigma**2)).sqrt()
        root = evecs @ torch.diag(gain) @ evecs.T
        return (c1.alpha * self.m + (z.double() - c0.alpha * self.m) @ root.T).float()


class FinitePointsDDPM:
    """Exact denoiser of a finite set {p_i} (uniform): E[x0 | x_t] = sum_i softmax_i(-|x_t - a p_i|^2 / 2 s^2) p_i."""

    def __init__(self, points: Tensor, schedule: DDPMSchedule) -> None:
        self.p, self.sched = points.double(), schedule

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        ab = self.sched.alpha_bar_at(t.round().long())[:, None]  # (B, 1)
        a, s2 = ab.sqrt(), 1 - ab
        xd = x.double()
        d2 = ((xd[:, None, :] - a[:, :, None] * self.p[None]) ** 2).sum(-1)  # (B, P)
        w = torch.softmax(-d2 / (2 * s2), dim=1)
        x0 = w @ self.p
        return ((xd - a * x0) / s2.sqrt()).float()  # eps


class FinitePointsFM:
    """Exact velocity toward a finite set: v = (E[x1 | x] - x) / (1 - t), weights softmax(-|x - t p_i|^2 / 2(1-t)^2)."""

    def __init__(self, points: Tensor) -> None:
        self.p = points.double()

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        xd, td = x.double(), t.double()[:, None]
        # The exact field is singular at t = 1 (a point mass); solvers that evaluate there (RK4) see t = 1 - 1e-4.
        td = td.clamp(max=1 - 1e-4)
        var = (1 - td) ** 2
        d2 = ((xd[:, None, :] - td[:, :, None] * self.p[None]) ** 2).sum(-1)
        w = torch.softmax(-d2 / (2 * var), dim=1)
        return ((w @ self.p - xd) / (1 - td)).float()


class ClassGaussiansFM:
    """A conditional oracle: class c has data N(means[c], I * var); the null label is the equal-weight mixture
    approximated by N(mean of means, ...) is not exact, so the null row uses its own Gaussian `null_mean`.
    Only used to check CFG algebra: the predictions for cond and null rows differ and are known."""

    def __init__(self, means: Tensor, null_mean: Tensor, var: float = 0.25) -> None:
        d = means.shape[1]
        self.cond = [GaussianFM(m, var * torch.eye(d)) for m in means]
        self.null = GaussianFM(null_mean, var * torch.eye(d))
        self.null_label = len(means)

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        out = torch.empty_like(x)
        for label in y.unique().tolist():
            rows = y == label
            oracle = self.null if label == self.null_label else self.cond[label]
            out[rows] = oracle(x[rows], t[rows], y[rows])
        return out


def gaussian_pf_map(mean: Tensor, cov: Tensor, x_T: Tensor, alpha_bar_T: float) -> Tensor:
    """Exact endpoint of DDPM's probability-flow ODE for Gaussian data, started at x_T (t = T - 1):
    x0 = m + C^(1/2) S_T^(-1/2) (x_T - a_T m), S_T = a_T^2 C + s_T^2 I (all in C's eigenbasis)."""
    evals, evecs = torch.linalg.eigh(cov.double())
    a2, s2 = alpha_bar_T, 1 - alpha_bar_T
    gain = evecs @ torch.diag((evals / (a2 * evals + s2)).sqrt()) @ evecs.T
    return (mean.double() + (x_T.double() - a2**0.5 * mean.double()) @ gain.T).float()
