"""Choosing the step budget K (and the sampler) for a deadline: `steps: "auto"`.

The HTTP edge turns a request into candidates, one per measured point of the model's quality profile
(`sampling.quality_profile`) that the request's sampler, limits and `min_quality` allow, each a validated
`SampleSpec` with the profile's predicted quality. The replica predicts each candidate's finish from its
engine's current load (`Engine.predict`) and `choose` takes, among those predicted to meet the
deadline, the best predicted quality, then the largest K, then the shortest predicted time. As load rises
the predictions grow and the choice moves down to smaller K, down to the quality floor, before anything is
refused.

Predictions are calibrated online (`Calibration`): the replica records, for each deadline request it runs,
its time in the engine over the time predicted, and scales later predictions by a high quantile of those
ratios, so a replica whose predictions run short (other load on its cores, a latency model off at some tick
sizes) chooses smaller K rather than missing deadlines, and one whose predictions run long chooses larger K.

When no candidate meets the deadline: if even an idle replica could not (every candidate's time alone is
over it) the deadline is impossible for this request (`DeadlineImpossible`, answered 422); otherwise only
the current load prevents it (`DeadlineOverloaded`, answered 503 with a Retry-After).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from serving.refusals import DeadlineImpossible, DeadlineOverloaded

if TYPE_CHECKING:  # a type here; importing it would bring torch into the router (serving.router)
    from sampling.request import SampleSpec


class Calibration:
    """How far a replica's latency predictions fell short lately: the `quantile` of actual / predicted over
    the last `window` requests, clipped to `bounds`; 1.0 until `min_count` have finished. A prediction times
    `factor()` is then met by about `quantile` of requests, as long as conditions hold."""

    def __init__(
        self,
        window: int = 200,
        quantile: float = 0.95,
        min_count: int = 20,
        bounds: tuple[float, float] = (0.5, 5.0),
    ) -> None:
        if window < 1 or not 0.0 < quantile <= 1.0 or not 1 <= min_count <= window:
            raise ValueError(
                f"need window >= 1, 0 < quantile <= 1 and 1 <= min_count <= window, "
                f"got {window}, {quantile}, {min_count}"
            )
        if not 0.0 < bounds[0] <= 1.0 <= bounds[1]:
            raise ValueError(f"bounds must hold 1.0 and be positive, got {bounds}")
        self.quantile = quantile
        self.min_count = min_count
        self.bounds = bounds
        self._ratios: deque[float] = deque(maxlen=window)
        self._factor = 1.0

    def record(self, predicted_s: float, actual_s: float) -> None:
        """One finished request: what was predicted (> 0, else ignored) and what it took."""
        if not (predicted_s > 0.0 and math.isfinite(predicted_s) and actual_s >= 0.0):
            return
        self._ratios.append(actual_s / predicted_s)
        if len(self._ratios) >= self.min_count:  # the quantile once per finished request, not per prediction
            q = float(np.quantile(np.fromiter(self._ratios, float), self.quantile))
            self._factor = min(self.bounds[1], max(self.bounds[0], q))

    def factor(self) -> float:
        return self._factor


class ArrivalRate:
    """A replica's requests per second over the last `window_s`, and the fair share of its time each may take
    alone at utilization `utilization`: utilization / rate. Keeping each steps-"auto" choice's time alone within
    it keeps the replica's work arriving no faster than it is done: a greedy choice (the best quality that fits
    the deadline now) fills the queue up to the deadline, and then every burst is refused."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._times: deque[float] = deque(maxlen=100_000)

    def arrived(self) -> None:
        self._times.append(self.clock())

    def rate(self) -> float:
        """Arrivals per second over the window (over the time since the first, while that is shorter)."""
        now = self.clock()
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], self.window_s / 10)
        return len(self._times) / span

    def share_s(self, utilization: float) -> float:
        """utilization / rate; inf when off (utilization 0) or with too few arrivals to tell."""
        rate = self.rate()
        return utilization / rate if utilization > 0 and rate > 0 else math.inf


@dataclass(frozen=True)
class Candidate:
    """One (sampler, K) a deadline request may run: its validated spec and the profile's predicted quality."""

    spec: SampleSpec
    quality: float


@dataclass(frozen=True)
class Choice:
    candidate: Candidate
    predicted_s: float


def choose(
    candidates: Sequence[Candidate],
    deadline_s: float,
    predict: Callable[[SampleSpec], float],
    alone: Callable[[SampleSpec], float],
    share_s: float = math.inf,
    cost: Callable[[SampleSpec], float] | None = None,
) -> Choice:
    """The best candidate predicted (`predict`: seconds from now to finish under the current load) to finish
    within `deadline_s`: highest quality, then largest K, then quickest. With a fair share `share_s` (the
    replica's time per arrival, `ArrivalRate.share_s`), only those whose `cost` (the replica's time it takes
    from the others: seconds of full ticks; None: its time alone) is within it, or, when none is, the cheapest:
    a share never refuses a request the deadline allows. Raises DeadlineImpossible when no candidate would make
    it even alone (`alone`: seconds on an idle replica), else DeadlineOverloaded."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    predicted = [(c, predict(c.spec)) for c in candidates]
    meets = [(c, p) for c, p in predicted if p <= deadline_s]
    if meets:
        if math.isfinite(share_s):
            costs = {id(c): (cost or alone)(c.spec) for c, _ in meets}
            fair = [(c, p) for c, p in meets if costs[id(c)] <= share_s]
            if not fair:
                best, seconds = min(meets, key=lambda cp: (costs[id(cp[0])], -cp[0].quality))
                return Choice(best, seconds)
            meets = fair
        best, seconds = max(meets, key=lambda cp: (cp[0].quality, cp[0].spec.steps, -cp[1]))
        return Choice(best, seconds)
    fastest_alone = min(alone(c.spec) for c in candidates)
    if fastest_alone > deadline_s:
        raise DeadlineImpossible(
            f"deadline_ms {1e3 * deadline_s:.0f} is shorter than the fastest allowed choice takes on an idle "
            f"replica ({1e3 * fastest_alone:.0f} ms); raise deadline_ms or lower min_quality",
            fastest_alone,
        )
    soonest = min(p for _, p in predicted)
    raise DeadlineOverloaded(
        f"no step budget meets deadline_ms {1e3 * deadline_s:.0f} under the current load "
        f"(the quickest allowed choice is predicted to take {1e3 * soonest:.0f} ms)",
        int(min(60, max(1, math.ceil(soonest - deadline_s)))),
    )
