"""Timestep spacings for DDPM / DDIM with K inference steps, as diffusers defines them
(`DDIMScheduler.set_timesteps`, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2).

Each returns K descending integer timesteps in [0, T).
"""

from __future__ import annotations

import numpy as np
import torch

from training.paths import DDPMSchedule

SPACINGS = ("trailing", "leading", "linspace")


def timesteps(spacing: str, steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    T, K = num_train_timesteps, steps
    if not 1 <= K <= T:
        raise ValueError(f"steps must be in [1, {T}], got {K}")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, K).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        ratio = T // K
        ts = (np.arange(0, K) * ratio).round()[::-1].copy().astype(np.int64)
    elif spacing == "trailing":
        # diffusers writes np.round(np.arange(T, 0, -T / K)) - 1; a float arange can yield K + 1 values
        # (a trailing -1) for some K (61, 103, ...), so the same values are computed from the index.
        ts = np.round(T - np.arange(K) * (T / K)).astype(np.int64) - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
    return ts


def solver_timesteps(spacing: str, steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """K descending timesteps as diffusers' DPMSolverMultistepScheduler.set_timesteps places them.

    Its last step goes to the data (sigma = 0) rather than to timestep 0, so linspace and leading lay K + 1
    grid points and drop the one at t = 0; trailing is DDIM's. Needs K + 1 <= T for distinct timesteps.
    """
    T, K = num_train_timesteps, steps
    if not 1 <= K <= T - 1:
        raise ValueError(f"steps must be in [1, {T - 1}], got {K}")
    if spacing == "linspace":
        return np.linspace(0, T - 1, K + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = T // (K + 1)
        return (np.arange(0, K + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
    return timesteps(spacing, K, T)


Grid = tuple[np.ndarray, list[float], list[float], list[float]]


def solver_grid(schedule: DDPMSchedule, spacing: str, steps: int) -> Grid:
    """The multistep solvers' grid (`solver_timesteps`): the timesteps, and alpha_bar, alpha = sqrt(alpha_bar)
    and sigma = sqrt(1 - alpha_bar) at each."""
    ts = solver_timesteps(spacing, steps, schedule.num_timesteps)
    ab = schedule.alpha_bar_at(torch.as_tensor(ts)).tolist()
    return ts, ab, [a**0.5 for a in ab], [(1 - a) ** 0.5 for a in ab]
