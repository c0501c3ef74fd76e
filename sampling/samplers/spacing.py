"""Timestep spacings for DDPM / DDIM with K inference steps, as diffusers defines them
(`DDIMScheduler.set_timesteps`, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2).

Each returns K descending integer timesteps in [0, T).
"""

from __future__ import annotations

import numpy as np

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
