"""The replica's latency model: the time of one engine tick as a function of its rows,

    tick_s(rows) = fixed_s + per_row_s * rows                 (the line; ticks that run on the event loop)
                 + handoff_s        when the line exceeds inline_s (ticks handed to the engine's thread).

The line is fitted online by least squares over the replica's own ticks with exponential forgetting
(recent ticks count most: the machine's load changes), seeded from a profile of the backend taken at
start-up. The seed stays in the fit with a small constant weight, so a run of ticks of one size (which
alone cannot separate the two terms) never makes it singular. A tick too long to run on the event loop
(`inline_s`) is handed to the engine's thread and back; that handoff is measured apart (time awaited
less time in the thread: the handoff itself plus whatever else the event loop ran before the engine
resumed) and kept as its own running mean, so the line is fitted to what every tick pays whichever way it
runs (0.36-0.46 ms measured on 2 cores, paid only by the longer ticks). Admission control predicts waits
with the model. Without a profile, until ticks of two sizes have been seen, the model knows only the mean
tick time (per_row_s 0), and before any tick it predicts 0 s.

The profile's own line (`profiled`) is kept as it was measured: the tick planner's throughput guard sizes ticks
by it (`serving.policy.tick_plan.efficient_rows`), unless it came out with no per-row cost. The online line is no
yardstick for that: under a mix of requests it moved by 3x from one second to the next (fixed cost 0.25-0.88
ms), because a tick also pays per request (each request's sampler step and bookkeeping), and large ticks hold
more requests. The guard enlarges ticks, which raised the fitted fixed cost, which enlarged the guard's tick
size again. The profile times the bare net, ticks of each size in turn over several rounds (medians), which a
drift in the machine's speed during it moves far less.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only where a net is profiled: the router (serving.router) imports this module too
    from torch import Tensor

DECAY = 0.98  # per tick: a tick's weight halves after about 35 newer ticks
PRIOR_WEIGHT = 1.0
# A tick whose line is at most this long runs on the event loop itself (`serving.engine`): handing it to the
# executor thread and back costs about as much as the net call (0.5-1.3 ms measured on 2 CPU cores, against
# 0.5-2 ms for the net), and the loop yields right after it, so new requests join and finished ones answer
# between two ticks.
INLINE_TICK_S = 0.003
HANDOFF_DECAY = 0.9  # per handed-off tick, for the handoff's running mean


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
    """tick_s(rows) = fixed_s + per_row_s * rows (+ handoff_s past inline_s), from a start-up profile and then
    every tick."""

    def __init__(self, profile: list[tuple[int, float]] | tuple = (), inline_s: float = INLINE_TICK_S) -> None:
        """profile: (rows, seconds) pairs measured on the backend (two or more distinct row counts), or none;
        inline_s: the longest tick (by the line) that runs without a handoff (0: every tick is handed off)."""
        if profile and len({r for r, _ in profile}) < 2:
            raise ValueError("a tick profile needs at least two distinct row counts")
        if inline_s < 0:
            raise ValueError(f"inline_s must be >= 0, got {inline_s}")
        self.inline_s = inline_s
        self.handoff_s = 0.0
        self._handoffs = 0
        self._prior = _Moments()
        for rows, seconds in profile:
            self._prior.add(rows, seconds, PRIOR_WEIGHT)
        self._data = _Moments()
        self.fixed_s, self.per_row_s = self._solve()
        # the profile's line (fixed_s, per_row_s), never refitted; None without a profile
        self.profiled: tuple[float, float] | None = (self.fixed_s, self.per_row_s) if profile else None

    def yardstick(self) -> tuple[float, float]:
        """(fixed_s, per_row_s) the throughput guard sizes ticks by: the profile's line, else (no profile, or a
        profile with no per-row cost, which would call every tick too small for good) the online one."""
        if self.profiled is not None and self.profiled[1] > 0.0:
            return self.profiled
        return self.fixed_s, self.per_row_s

    def observe(self, rows: int, seconds: float, handoff_s: float | None = None) -> None:
        """A tick of `rows` took `seconds` besides its handoff, if it had one: `handoff_s` (None: it ran inline)."""
        if handoff_s is not None:  # the mean of the handoffs so far, then exponentially forgetting
            self._handoffs += 1
            weight = max(1.0 - HANDOFF_DECAY, 1.0 / self._handoffs)
            self.handoff_s += weight * (max(0.0, handoff_s) - self.handoff_s)
        d = self._data  # every moment times DECAY, plus this tick (inline: runs every tick)
        d.w = DECAY * d.w + 1.0
        d.r = DECAY * d.r + rows
        d.rr = DECAY * d.rr + rows * rows
        d.t = DECAY * d.t + seconds
        d.rt = DECAY * d.rt + rows * seconds
        self.fixed_s, self.per_row_s = self._solve()

    def line_s(self, rows: int) -> float:
        """The tick's time without a handoff: what the net and the engine's bookkeeping cost."""
        return self.fixed_s + self.per_row_s * rows

    def inline(self, rows: int) -> bool:
        """Whether a tick of `rows` runs on the event loop (no handoff)."""
        return self.inline_s > 0.0 and self.line_s(rows) <= self.inline_s

    def tick_s(self, rows: int) -> float:
        return self.line_s(rows) + (0.0 if self.inline(rows) else self.handoff_s)

    def rows_within(self, seconds: float, cap: int) -> int:
        """The most rows (at most cap) a tick of at most `seconds` holds: tick_s(rows) <= seconds."""
        if math.isinf(seconds):
            return cap
        if self.per_row_s <= 0.0:
            return cap if self.tick_s(cap) <= seconds else 0
        rows = math.floor((seconds - self.fixed_s) / self.per_row_s + 1e-9)
        if rows >= 0 and not self.inline(rows):  # past the inline limit each tick also pays the handoff
            inline_rows = math.floor((self.inline_s - self.fixed_s) / self.per_row_s + 1e-9)
            if inline_rows >= 0 and not self.inline(inline_rows):  # the tolerance above must not cross the limit
                inline_rows -= 1
            rows = max(inline_rows, math.floor((seconds - self.fixed_s - self.handoff_s) / self.per_row_s + 1e-9))
        return int(min(cap, max(0, rows)))

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


@dataclass
class DecodeCost:
    """A decode stage's time (a latent model's decoder, `serving.engine`): `samples` images are decoded in
    calls of at most `chunk` rows, each timed by `model` (a TickModel over decoded rows)."""

    model: TickModel
    chunk: int

    def seconds(self, samples: int) -> float:
        """Predicted seconds of decoding `samples` images."""
        if samples <= 0:
            return 0.0
        chunks, last = divmod(samples, self.chunk)
        return chunks * self.model.tick_s(self.chunk) + (self.model.tick_s(last) if last else 0.0)


def tick_profile_sizes(max_rows_per_tick: int, backend: object) -> tuple[int, ...]:
    """The batch sizes a replica profiles: 1, 64, 256 and 1 024 rows, each brought within the engine's rows
    per tick and the backend's own batch bounds (`min_batch` / `max_batch`: a TensorRT plan's profile).
    Fewer than two distinct sizes (bounds that allow one batch size only) give no line: the replica then
    starts without a profile."""
    low = max(1, int(getattr(backend, "min_batch", None) or 1))
    high = max(low, min(int(max_rows_per_tick), int(getattr(backend, "max_batch", None) or max_rows_per_tick)))
    return tuple(sorted({min(max(b, low), high) for b in (1, 64, 256, 1024)}))


def profile_tick_times(
    forward: Callable[[Tensor, Tensor, Tensor], Tensor],
    data_shape: tuple[int, ...],
    null_label: int,
    batches: tuple[int, ...],
    rounds: int = 9,
    budget_s: float = 0.5,
    min_rounds: int = 3,
) -> list[tuple[int, float]]:
    """(rows, median seconds) of `forward` at each batch size: one warm-up call each, then rounds that time
    every size in turn (so a drift in the machine's speed moves all sizes alike), up to `rounds`, and no more
    than `min_rounds` once `budget_s` has been spent after the warm-up (a large net's profile stays short)."""
    if min_rounds < 1 or rounds < min_rounds:
        raise ValueError(f"need 1 <= min_rounds <= rounds, got {min_rounds} and {rounds}")
    import torch

    inputs = {
        b: (torch.randn(b, *data_shape), torch.full((b,), 0.5), torch.full((b,), null_label, dtype=torch.long))
        for b in batches
    }
    times: dict[int, list[float]] = {b: [] for b in batches}
    with torch.inference_mode():
        for b in batches:
            forward(*inputs[b])
        start = time.perf_counter()
        for done in range(rounds):
            if done >= min_rounds and time.perf_counter() - start > budget_s:
                break
            for b in batches:
                t0 = time.perf_counter()
                forward(*inputs[b])
                times[b].append(time.perf_counter() - t0)
    return [(b, statistics.median(ts)) for b, ts in times.items()]
