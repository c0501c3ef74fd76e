"""Training objectives: DDPM (eps / v / x0 targets) and flow matching on the linear or the VP path.

FM convention (Lipman et al. 2023): noise x0 ~ N(0, I) at t = 0, data x1 at t = 1,
x_t = alpha_t x1 + sigma_t x0 with target velocity alpha'_t x1 + sigma'_t x0 (see `fm_paths`); on the
linear path (rectified flow) x_t = (1 - t) x0 + t x1 and v = x1 - x0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from training.paths.conversions import TARGETS, target_from
from training.paths.fm_paths import FM_PATHS, path_coefficients, path_t_end
from training.paths.noise_schedules import SCHEDULES, DDPMSchedule

# Nets see time through a sinusoidal embedding of t * t_scale: DDPM's integer t already spans
# [0, 1000); FM's t in [0, 1] is stretched to the same range.
DDPM_T_SCALE = 1.0
FM_T_SCALE = 1000.0


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against x (B, ...)."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


@dataclass(frozen=True)
class DDPMObjective:
    schedule_name: str = "linear"
    target: str = "eps"
    kind: str = "ddpm"

    def __post_init__(self) -> None:
        if self.schedule_name not in SCHEDULES:
            raise ValueError(f"objective.schedule: unknown {self.schedule_name!r}; expected one of {SCHEDULES}")
        if self.target not in TARGETS:
            raise ValueError(f"objective.target: unknown {self.target!r}; expected one of {TARGETS}")

    @property
    def schedule(self) -> DDPMSchedule:
        return DDPMSchedule.create(self.schedule_name)

    @property
    def t_scale(self) -> float:
        return DDPM_T_SCALE

    def to_dict(self) -> dict:
        return {"kind": "ddpm", "schedule": self.schedule_name, "target": self.target}

    def loss(self, net, x1: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """MSE between net(x_t, t, y) and the chosen target; t ~ U{0..T-1}. x1: (B, ...) data."""
        sched = self.schedule
        b = x1.shape[0]
        t = torch.randint(0, sched.num_timesteps, (b,), generator=generator)
        eps = torch.randn(x1.shape, generator=generator)
        ab = _bcast(sched.alpha_bar_at(t).float(), x1)
        x_t = ab.sqrt() * x1 + (1 - ab).sqrt() * eps
        pred = net(x_t, t.float(), y)
        return F.mse_loss(pred, target_from(x1, eps, ab, self.target))


@dataclass(frozen=True)
class FMObjective:
    path: str = "linear"
    kind: str = "fm"

    def __post_init__(self) -> None:
        if self.path not in FM_PATHS:
            raise ValueError(f"objective.path: unknown {self.path!r}; expected one of {FM_PATHS}")

    @property
    def t_scale(self) -> float:
        return FM_T_SCALE

    @property
    def t_end(self) -> float:
        """Samplers integrate t from 0 to t_end (1 on the linear path; the vp path stops short of it)."""
        return path_t_end(self.path)

    def to_dict(self) -> dict:
        return {"kind": "fm", "path": self.path}

    def loss(
        self, net, x1: Tensor, y: Tensor, generator: torch.Generator | None = None, x0: Tensor | None = None
    ) -> Tensor:
        """Conditional FM loss ||net(x_t, t, y) - (alpha'_t x1 + sigma'_t x0)||^2, t ~ U[0, t_end]. x1: (B, ...).
        `x0`: each row's noise, coupled to its x1 (reflow); None draws it independently."""
        b = x1.shape[0]
        t = torch.rand((b,), generator=generator) * self.t_end
        if x0 is None:
            x0 = torch.randn(x1.shape, generator=generator)
        c = path_coefficients(self.path, t)
        x_t = _bcast(c.alpha, x1) * x1 + _bcast(c.sigma, x1) * x0
        target = _bcast(c.d_alpha, x1) * x1 + _bcast(c.d_sigma, x1) * x0
        return F.mse_loss(net(x_t, t, y), target)


Objective = DDPMObjective | FMObjective


def objective_from_dict(d: dict) -> Objective:
    """Inverse of `to_dict`; unknown keys or kinds are refused with their names."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind == "ddpm":
        allowed = {"schedule", "target"}
        extra = set(d) - allowed
        if extra:
            raise ValueError(f"objective: unknown key(s) {sorted(extra)} for kind 'ddpm'")
        return DDPMObjective(schedule_name=d.get("schedule", "linear"), target=d.get("target", "eps"))
    if kind == "fm":
        path = d.pop("path", "linear")
        if d:
            raise ValueError(f"objective: unknown key(s) {sorted(d)} for kind 'fm'")
        return FMObjective(path=path)
    raise ValueError(f"objective.kind: unknown {kind!r}; expected 'ddpm' or 'fm'")
