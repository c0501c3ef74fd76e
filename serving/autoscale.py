"""Autoscaling the model deployments on work: a custom Ray Serve autoscaling policy (`AutoscalingConfig.policy`,
Ray pinned in pyproject.toml) and the replica side of its metrics.

Each model replica reports, through Serve's custom autoscaling metrics (`ModelReplica.record_autoscaling_stats`,
pushed every metrics interval and averaged over look_back_period_s by the controller):
- `backlog_s`: seconds of work in flight and queued on its engine at full batching (`admission.drain_s`);
- `deadline_miss_rate`: of its deadline requests over the last WINDOW_S, the share that finished late or
  were refused for load (a deadline no replica could meet alone is not counted: more replicas would not help);
- `refusal_rate`: of all its requests over the last WINDOW_S, the share refused for load (the engine full, or
  the predicted wait over max_wait_s). A saturated replica sheds instead of queueing, so its backlog stays
  near what max_wait_s admits and its ongoing requests stay few: refusals are what says it needs help.

`WorkPolicy` (run by Serve's controller, which applies min/max_replicas and upscale/downscale_delay_s around
it) wants as many replicas as the summed backlog needs at `target_backlog_s` each; it adds one more while any
replica misses more than `max_miss_rate` of its deadlines or refuses more than `max_refusal_rate` of its
requests; it removes replicas only when those left would carry at most `downscale_below` of the target
(hysteresis: no flapping around the target), and never while deadlines are being missed or requests refused.
Serve drains a replica before it stops it (graceful_shutdown_timeout_s in the deploy configs, above the
engine's request_timeout_s), so scaling down drops no request in flight.

The controller unpickles this module by value: it imports only the standard library.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

BACKLOG = "backlog_s"
MISS_RATE = "deadline_miss_rate"
REFUSAL_RATE = "refusal_rate"
WINDOW_S = 30.0


class Outcomes:
    """A replica's requests of one kind over the last `window_s`, each good or bad (a deadline met or missed; a
    request admitted or refused for load)."""

    def __init__(self, window_s: float = WINDOW_S, clock=time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._events: deque[tuple[float, bool]] = deque(maxlen=4096)

    def record(self, bad: bool) -> None:
        self._events.append((self.clock(), bad))

    def rate(self) -> float:
        """Bad over all in the window; 0 with none."""
        cutoff = self.clock() - self.window_s
        while self._events and self._events[0][0] < cutoff:
            self._events.popleft()
        if not self._events:
            return 0.0
        return sum(m for _, m in self._events) / len(self._events)


class WorkPolicy:
    """Replicas for the summed backlog at `target_backlog_s` each, one more while deadlines are missed beyond
    `max_miss_rate` or requests refused beyond `max_refusal_rate`, fewer only when the rest would carry at most
    `downscale_below` x the target."""

    def __init__(
        self,
        target_backlog_s: float = 2.0,
        max_miss_rate: float = 0.05,
        downscale_below: float = 0.5,
        max_refusal_rate: float = 0.05,
    ) -> None:
        if target_backlog_s <= 0:
            raise ValueError(f"target_backlog_s must be > 0, got {target_backlog_s}")
        if not 0.0 <= max_miss_rate <= 1.0:
            raise ValueError(f"max_miss_rate must be in [0, 1], got {max_miss_rate}")
        if not 0.0 <= max_refusal_rate <= 1.0:
            raise ValueError(f"max_refusal_rate must be in [0, 1], got {max_refusal_rate}")
        if not 0.0 < downscale_below < 1.0:
            raise ValueError(f"downscale_below must be in (0, 1), got {downscale_below}")
        self.target_backlog_s = target_backlog_s
        self.max_miss_rate = max_miss_rate
        self.downscale_below = downscale_below
        self.max_refusal_rate = max_refusal_rate

    def decide(
        self, replicas: int, backlogs: list[float], miss_rates: list[float], refusal_rates: Sequence[float] = ()
    ) -> int:
        """The replicas wanted, from `replicas` running and each one's reported backlog, miss rate and refusal
        rate (before Serve's bounds and delays)."""
        if replicas == 0:
            return 1 if any(b > 0 for b in backlogs) else 0
        if not backlogs:  # no reports yet (replicas starting): hold
            return replicas
        total = sum(backlogs) * replicas / len(backlogs)  # replicas not reporting yet carry the average
        missing = max(miss_rates, default=0.0) > self.max_miss_rate
        refusing = max(refusal_rates, default=0.0) > self.max_refusal_rate
        want = max(1, math.ceil(total / self.target_backlog_s))
        if missing or refusing:
            return max(want, replicas + 1)
        if want >= replicas:
            return want
        # Fewer replicas: only as far as those left stay at most downscale_below of the target each.
        fewer = replicas
        while fewer > 1 and total / (fewer - 1) <= self.downscale_below * self.target_backlog_s:
            fewer -= 1
        return fewer

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """Serve's entry point: an AutoscalingContext in, (replicas wanted, policy state) out."""
        metrics = ctx.aggregated_metrics or {}
        backlogs = [float(v) for v in (metrics.get(BACKLOG) or {}).values()]
        miss_rates = [float(v) for v in (metrics.get(MISS_RATE) or {}).values()]
        refusal_rates = [float(v) for v in (metrics.get(REFUSAL_RATE) or {}).values()]
        want = self.decide(ctx.current_num_replicas, backlogs, miss_rates, refusal_rates)
        state = dict(ctx.policy_state or {})
        state.update(
            {
                "backlog_s": sum(backlogs),
                "max_miss_rate": max(miss_rates, default=0.0),
                "max_refusal_rate": max(refusal_rates, default=0.0),
                "wanted": want,
            }
        )
        return want, state
