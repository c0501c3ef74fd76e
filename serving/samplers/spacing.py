"""Timestep spacings for DDPM / DDIM with K inference steps, as diffusers defines them
(`DDIMScheduler.set_timesteps`, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2).

Each returns K descending integer timesteps in [0, T).
"""

from __future__ import annotations

import numpy as np

SPACINGS = ("trailing", "leading", "linspace")


def timesteps(spacing: str, steps: int, num_train_timesteps: int = 1000, steps_offset: int = 0) -> np.ndarray:
    T, K = num_train_timesteps, steps
    if not 1 <= K <= T:
        raise ValueError(f"steps must be in [1, {T}], got {K}")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, K).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        ratio = T // K
        ts = (np.arange(0, K) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ratio = T / K
        ts = np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
    return ts
