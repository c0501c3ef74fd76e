"""Samplers by name. Each is a generator with one signature (see `base`); `start` builds one for a request."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from serving.samplers.base import Evaluation, SamplerFn, SamplerGen
from serving.samplers.ddpm import ddim, ddpm
from serving.samplers.fm import fm_euler, fm_rk4
from serving.samplers.spacing import SPACINGS, timesteps
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


def get_spec(name: str, objective: Objective) -> SamplerSpec:
    """The spec of sampler `name`, refused with a clear message if unknown or unfit for `objective`."""
    spec = SAMPLERS.get(name)
    if spec is None:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    if spec.objective_kind != objective.kind:
        raise ValueError(
            f"sampler {name!r} needs a {spec.objective_kind} model but this model is {objective.kind}; "
            f"use one of {samplers_for(objective)}"
        )
    return spec


def initial_noise(shape: tuple[int, ...], num_samples: int, seed: int) -> tuple[Tensor, torch.Generator]:
    """The request's own generator (seeded from the request) and its starting noise (N, *shape)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((num_samples, *shape), generator=gen), gen


def start(
    name: str, objective: Objective, noise: Tensor, steps: int, generator: torch.Generator, **options
) -> SamplerGen:
    """Build sampler `name` for `objective`; unknown or unfit options are refused by name."""
    spec = get_spec(name, objective)
    extra = {k for k, v in options.items() if v is not None} - set(spec.options)
    if extra:
        raise ValueError(f"sampler {name!r} takes no option(s) {sorted(extra)}; it takes {list(spec.options)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if spec.objective_kind == "ddpm" and steps > objective.schedule.num_timesteps:
        # checked here, not at the generator's first step, so callers refuse the request up front
        raise ValueError(f"steps must be at most {objective.schedule.num_timesteps} for {name!r}, got {steps}")
    return spec.fn(objective, noise, steps, generator, **{k: v for k, v in options.items() if v is not None})


__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "Evaluation",
    "SamplerGen",
    "SamplerSpec",
    "get_spec",
    "initial_noise",
    "samplers_for",
    "start",
    "timesteps",
]
