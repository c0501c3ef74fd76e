"""Samplers by name. Each is a generator with one signature (see `base`); `start` builds one.

`start` trusts its arguments: requests are checked once, by `sampling.request.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sampling.samplers.base import Evaluation, Forward, SamplerFn, SamplerGen
from sampling.samplers.ddpm import ddim, ddpm
from sampling.samplers.fm import fm_euler, fm_rk4
from sampling.samplers.spacing import SPACINGS, timesteps
from training.paths import Objective


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    objective_kind: str  # "ddpm" or "fm": the objective whose net this sampler can drive
    fn: SamplerFn
    evals_per_step: int
    options: tuple[str, ...] = ()


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec("ddpm", "ddpm", ddpm, 1, ("spacing",)),
    "ddim": SamplerSpec("ddim", "ddpm", ddim, 1, ("eta", "spacing")),
    "fm-euler": SamplerSpec("fm-euler", "fm", fm_euler, 1),
    "fm-rk4": SamplerSpec("fm-rk4", "fm", fm_rk4, 4),
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
    "start",
    "timesteps",
]
