"""Samplers by name. Each is a generator with one signature (see `base`); `start` builds one.

`start` trusts its arguments: requests are checked once, by `sampling.request.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sampling.samplers.base import Evaluation, Forward, SamplerFn, SamplerGen
from sampling.samplers.ddpm import ddim, ddpm
from sampling.samplers.dopri5 import fm_dopri5
from sampling.samplers.dpm import dpm_solver_pp
from sampling.samplers.fm import fm_euler, fm_rk4
from sampling.samplers.heun import fm_heun, heun
from sampling.samplers.spacing import SPACINGS, solver_timesteps, timesteps
from sampling.samplers.unipc import fm_unipc, unipc
from training.paths import Objective


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler by name. evals_per_step: net evaluations per step (the last step of heun / fm-heun takes one
    fewer; fm-dopri5's count depends on the request, see `nfe`). grid_extra: on a DDPM model the sampler's
    timestep grid holds K + grid_extra distinct timesteps, so K <= T - grid_extra."""

    name: str
    objective_kind: str  # "ddpm" or "fm": the objective whose net this sampler can drive
    fn: SamplerFn
    evals_per_step: int
    options: tuple[str, ...] = ()
    adaptive: bool = False
    grid_extra: int = 0
    last_step_evals: int | None = None

    def nfe(self, steps: int) -> int | None:
        """Evaluations per sample for K = steps, unguided; None when the solver adapts (known only at the end)."""
        if self.adaptive:
            return None
        last = self.evals_per_step if self.last_step_evals is None else self.last_step_evals
        return (steps - 1) * self.evals_per_step + last


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec("ddpm", "ddpm", ddpm, 1, ("spacing",)),
    "ddim": SamplerSpec("ddim", "ddpm", ddim, 1, ("eta", "spacing")),
    "dpm-solver++": SamplerSpec("dpm-solver++", "ddpm", dpm_solver_pp, 1, ("spacing",), grid_extra=1),
    "unipc": SamplerSpec("unipc", "ddpm", unipc, 1, ("spacing",), grid_extra=1),
    "heun": SamplerSpec("heun", "ddpm", heun, 2, ("spacing",), last_step_evals=1),
    "fm-euler": SamplerSpec("fm-euler", "fm", fm_euler, 1),
    "fm-heun": SamplerSpec("fm-heun", "fm", fm_heun, 2, last_step_evals=1),
    "fm-rk4": SamplerSpec("fm-rk4", "fm", fm_rk4, 4),
    "fm-unipc": SamplerSpec("fm-unipc", "fm", fm_unipc, 1),
    "fm-dopri5": SamplerSpec("fm-dopri5", "fm", fm_dopri5, 6, ("rtol", "atol", "max_nfe"), adaptive=True),
}


def samplers_for(objective: Objective) -> list[str]:
    return [name for name, spec in SAMPLERS.items() if spec.objective_kind == objective.kind]


def start(
    name: str, objective: Objective, noise: Tensor, steps: int, generator: torch.Generator, **options
) -> SamplerGen:
    """Sampler `name` for `objective` from `noise` (B, *shape), K = `steps`, options by name."""
    return SAMPLERS[name].fn(objective, noise, steps, generator, **options)


__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "Evaluation",
    "Forward",
    "SamplerGen",
    "SamplerSpec",
    "samplers_for",
    "solver_timesteps",
    "start",
    "timesteps",
]
