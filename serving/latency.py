"""The replica's latency model: the time of one engine tick as a function of its rows,

    tick_s(rows) = fixed_s + per_row_s * rows,

fitted online by least squares over the replica's own ticks with exponential forgetting (recent ticks
count most: the machine's load changes), seeded from a profile of the backend taken at start-up. The
seed stays in the fit with a small constant weight, so a run of ticks of one size (which alone cannot
separate the two terms) never makes it singular. Admission control predicts waits with it. Without a
profile, until ticks of two sizes have been seen, the model knows only the mean tick time (per_row_s 0),
and before any tick it predicts 0 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

DECAY = 0.98  # per tick: a tick's weight halves after about 35 newer ticks
PRIOR_WEIGHT = 1.0


@dataclass
class _Moments:
    """Weighted sums for the least-squares line through (rows, seconds)."""

    w: float = 0.0
    r: float = 0.0
    rr: float = 0.0
    t: float = 0.0
    rt: float = 0.0

    def add(self, rows: float, seconds: float, weight: float = 1.0) -> None:
        self.w += weight
        self.r += weight * rows
        self.rr += weight * rows * rows
        self.t += weight * seconds
        self.rt += weight * rows * seconds


class TickModel:
    """tick_s(rows) = fixed_s + per_row_s * rows, from a start-up profile and then every tick."""

    def __init__(self, profile: list[tuple[int, float]] | tuple = ()) -> None:
        """profile: (rows, seconds) pairs measured on the backend (two or more distinct row counts), or none."""
        if profile and len({r for r, _ in profile}) < 2:
            raise ValueError("a tick profile needs at least two distinct row counts")
        self._prior = _Moments()
        for rows, seconds in profile:
            self._prior.add(rows, seconds, PRIOR_WEIGHT)
        self._data = _Moments()
        self.fixed_s, self.per_row_s = self._solve()

    def observe(self, rows: int, seconds: float) -> None:
        d = self._data  # every moment times DECAY, plus this tick (inline: runs every tick)
        d.w = DECAY * d.w + 1.0
        d.r = DECAY * d.r + rows
        d.rr = DECAY * d.rr + rows * rows
        d.t = DECAY * d.t + seconds
        d.rt = DECAY * d.rt + rows * seconds
        self.fixed_s, self.per_row_s = self._solve()

    def tick_s(self, rows: int) -> float:
        return self.fixed_s + self.per_row_s * rows

    def _solve(self) -> tuple[float, float]:
        p, d = self._prior, self._data
        w, r, rr, t, rt = p.w + d.w, p.r + d.r, p.rr + d.rr, p.t + d.t, p.rt + d.rt
        if w == 0.0:
            return 0.0, 0.0
        det = w * rr - r * r
        if det <= 1e-9 * w * max(rr, 1.0):  # one row count so far: only the mean tick time is known
            return t / w, 0.0
        per_row = (w * rt - r * t) / det
        fixed = (t - per_row * r) / w
        # A line through noisy points can tilt below zero at either end; times cannot.
        per_row = max(per_row, 0.0)
        fixed = max(fixed, 0.0)
        if per_row == 0.0 and fixed == 0.0:
            fixed = t / w
        return fixed, per_row


def profile_backend(
    forward: Callable[[Tensor, Tensor, Tensor], Tensor],
    data_shape: tuple[int, ...],
    null_label: int,
    batches: tuple[int, ...],
    repeats: int = 3,
) -> list[tuple[int, float]]:
    """(rows, median seconds) of `forward` at each batch size, after one warm-up call each."""
    out = []
    for b in batches:
        x, t, y = torch.randn(b, *data_shape), torch.full((b,), 0.5), torch.full((b,), null_label, dtype=torch.long)
        with torch.inference_mode():
            forward(x, t, y)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                forward(x, t, y)
                times.append(time.perf_counter() - t0)
        out.append((b, sorted(times)[len(times) // 2]))
    return out
