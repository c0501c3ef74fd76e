"""The knobs of a replica's engine: `Policy` (which rows run in a tick, `tick_plan`) inside `EngineLimits`
(what the engine admits, `admission`). A Serve config's `engine` section names them flat
(`EngineLimits.from_options`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Policy:
    """max_rows_per_tick: net rows per backend call (guided rows counted twice); stretch: how much slower than
    alone a request's ticks may be made by others; max_skip_ticks: the longest a request without a deadline
    waits between two advances; efficiency: below this share of recent tick time spent on rows (not fixed
    cost), ticks may always grow to the efficient size; efficiency_window_s: how far back that share looks;
    tick_efficiency: the share of the ticks that share is measured against; min_tick_rows: the efficient
    size is never taken below this; size_ratio: a request without a deadline limits the ticks only of
    requests at least this many times its size; fifo: every request runs whole every tick instead."""

    max_rows_per_tick: int = 4096
    stretch: float = 1.5
    max_skip_ticks: int = 8
    efficiency: float = 0.9
    efficiency_window_s: float = 1.0
    tick_efficiency: float = 0.95
    min_tick_rows: int = 256
    size_ratio: float = 4.0
    fifo: bool = False

    def __post_init__(self) -> None:
        if self.max_rows_per_tick < 1 or self.max_skip_ticks < 1 or self.min_tick_rows < 1:
            raise ValueError(f"max_rows_per_tick, max_skip_ticks and min_tick_rows must be >= 1, got {self}")
        if not self.stretch >= 1.0 or not 0.0 < self.efficiency < self.tick_efficiency < 1.0:
            raise ValueError(f"need stretch >= 1 and 0 < efficiency < tick_efficiency < 1, got {self}")
        if not self.efficiency_window_s > 0 or not self.size_ratio >= 1.0:
            raise ValueError(f"need efficiency_window_s > 0 and size_ratio >= 1, got {self}")


@dataclass(frozen=True)
class EngineLimits:
    """max_in_flight: requests advancing together; max_queue: requests waiting to join; max_wait_s: a request
    predicted to take longer than this beyond its time alone is refused; request_timeout_s: a request still
    running after this leaves the engine; express_lane: while a long tick runs in the engine's thread, short
    requests tick on the event loop beside it (for backends that allow two calls at once); auto_utilization: 0
    (off) or the utilization a replica's steps-"auto" choices aim at: a choice's time alone is held to
    auto_utilization / (the replica's recent arrivals per second) when the deadline allows one
    (`step_budget.ArrivalRate`); policy: the tick planner's knobs."""

    max_in_flight: int = 64
    max_queue: int = 256
    max_wait_s: float = 5.0
    request_timeout_s: float = 300.0
    express_lane: bool = True
    auto_utilization: float = 0.0
    bulk_nice: int = 4
    policy: Policy = field(default_factory=Policy)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.max_queue < 0:
            raise ValueError(f"engine limits must be positive (max_queue >= 0), got {self}")
        if not self.max_wait_s > 0 or not self.request_timeout_s > 0:
            raise ValueError(f"max_wait_s and request_timeout_s must be > 0, got {self}")
        if not 0.0 <= self.auto_utilization <= 1.0:
            raise ValueError(f"engine.auto_utilization must be in [0, 1], got {self.auto_utilization}")
        if isinstance(self.bulk_nice, bool) or not isinstance(self.bulk_nice, int) or not 0 <= self.bulk_nice <= 19:
            raise ValueError(f"engine.bulk_nice must be an integer in [0, 19], got {self.bulk_nice!r}")

    @property
    def max_rows_per_tick(self) -> int:
        return self.policy.max_rows_per_tick

    @classmethod
    def from_options(cls, **options: Any) -> EngineLimits:
        """From a config's `engine` section: the fields above and Policy's by name (all but `fifo`), and
        `scheduling`: "deadline" (EDF, then least work first, under a per-tick row budget; the default) or
        "fifo" (every request every tick, whole). Unknown names are refused by name."""
        scheduling = options.pop("scheduling", "deadline")
        if scheduling not in ("deadline", "fifo"):
            raise ValueError(f"engine.scheduling must be 'deadline' or 'fifo', got {scheduling!r}")
        own = {f.name for f in fields(cls)} - {"policy"}
        knobs = {f.name for f in fields(Policy)} - {"fifo"}
        unknown = sorted(set(options) - own - knobs)
        if unknown:
            raise ValueError(f"unknown engine option(s) {unknown}; known: {sorted(own | knobs | {'scheduling'})}")
        policy = Policy(**{k: v for k, v in options.items() if k in knobs}, fifo=scheduling == "fifo")
        return cls(**{k: v for k, v in options.items() if k in own}, policy=policy)
