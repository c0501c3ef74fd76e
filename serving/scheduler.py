"""Which rows run in the next engine tick: earliest deadline first, under a per-tick row budget.

The engine calls `plan_tick` once per tick with what it knows of each request in flight (a `Slot`) and
runs exactly the rows it returns. The policy, from `Policy`:

- **Order.** A request without a deadline that has not advanced for `max_skip_ticks` ticks goes first (it
  cannot starve behind deadline traffic);
  then requests with a deadline, earliest first (EDF); then the default class (no deadline), least work
  left first (rows x evaluations left), so a short request is not queued behind long ones.
- **Row budget.** Each request can afford ticks of some length (`allowance`): `stretch` times its own tick
  alone for a short request without a deadline (one whose time left alone is within the slack the
  throughput guard allows in one window), more for a request with a deadline if half the time left to it
  divided by the evaluations left allows, and no limit for a long request without one. Going down the
  order, a request joins the tick while the tick's predicted time (`TickModel`) stays within the shortest
  allowance of the requests already in it that bind it, so a short or urgent request is not slowed by the
  rows of long ones: a request with a deadline binds every request after it, one without binds only
  requests at least `size_ratio` times its size (rows x evaluations asked for). Requests of like size share
  whole ticks, as under FIFO: splitting their rows would cost fixed tick time and gain them little (the
  tail of a long request is not a short request). A request whose rows do not all fit runs part of them
  (its evaluation completes over several ticks).
- **Throughput guard.** The first request in the order always runs, and when recent ticks' throughput
  relative to ticks of the efficient size (`Efficiency`: ticks whose fixed cost is `1 - tick_efficiency` of
  them, over about `efficiency_window_s`) has fallen below `efficiency`, a tick may always grow to
  `efficient_rows`, the size at which the fixed cost is at most `1 - efficiency` of it. So an occasional
  short request gets small ticks, and a steady stream of them cannot cut throughput much below
  `efficiency` of the best.
- `Policy.fifo` turns all of that off: every request runs all its rows every tick (continuous batching
  as it was; kept to compare against).

`predicted_latency` is the same policy's estimate of how long a new request would take, used for
admission and for choosing K under a deadline (`serving.budget`).

Pure functions of their arguments (time is passed in): tests drive them with a fake clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from serving.latency import TickModel

DEADLINE_SHARE = 0.5  # the share of a deadline request's slack that other requests' rows may take


@dataclass(frozen=True)
class Policy:
    """max_rows_per_tick: hard cap of one tick; stretch: how much slower than alone a request's ticks may
    be made by others; max_skip_ticks: the longest a request without a deadline waits between two advances;
    efficiency: below this share of recent tick time spent on rows (not fixed cost), ticks may always grow
    to the efficient size; efficiency_window_s: how far back that share looks; tick_efficiency: the share of
    the ticks that share is measured against; min_tick_rows: the efficient size is never taken below
    this; size_ratio: a request without a deadline limits the ticks only of requests at least this many
    times its size; fifo: every request runs whole every tick instead."""

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


class Efficiency:
    """How close recent ticks came to the throughput of efficient ones, by the latency model: the time their
    rows would take in ticks of `efficient_rows` at `tick_efficiency` over the time the ticks took, each
    tick's share capped at 1 and weighted by exp(-age / window_s); 1.0 before any tick. Both times come from
    the model's yardstick line (`TickModel.yardstick`: the start-up profile's, as in `efficient_rows`), so
    noise in measured times (other load on the machine) does not move it."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._ideal_s = 0.0
        self._total_s = 0.0
        self._last: float | None = None

    def record(self, rows: int, now: float, model: TickModel, policy: Policy) -> None:
        decay = 1.0 if self._last is None else math.exp(-max(0.0, now - self._last) / self.window_s)
        size = efficient_rows(model, policy, policy.tick_efficiency)
        fixed, per_row = model.yardstick()
        took = fixed + per_row * rows
        ideal = min(took, rows * (fixed / size + per_row))
        self._ideal_s = self._ideal_s * decay + ideal
        self._total_s = self._total_s * decay + took
        self._last = now

    def value(self) -> float:
        return self._ideal_s / self._total_s if self._total_s > 0 else 1.0


@dataclass(eq=False)
class Slot:
    """What the scheduler knows of one request in flight.

    rows: rows of one evaluation; cursor: rows of the current evaluation already run; evals_left: evaluations
    left, the current one included; deadline: absolute seconds, None for the default class;
    idle_ticks: ticks since it last advanced; seq: arrival order; size: rows x evaluations asked for, fixed
    for its life (0: rows x evals_left at creation)."""

    rows: int
    evals_left: int
    deadline: float | None
    seq: int
    cursor: int = 0
    idle_ticks: int = 0
    size: int = 0

    def __post_init__(self) -> None:
        if not self.size:
            self.size = self.rows * self.evals_left

    @property
    def rows_now(self) -> int:
        """Rows still to run of the current evaluation."""
        return self.rows - self.cursor

    @property
    def work_left(self) -> int:
        """Rows x evaluations still to run."""
        return self.rows * self.evals_left - self.cursor


def efficient_rows(model: TickModel, policy: Policy, efficiency: float | None = None) -> int:
    """The smallest tick whose fixed cost is at most 1 - efficiency (default: the policy's) of its time by
    the model's yardstick (`TickModel.yardstick`: the bare net's cost line from the start-up profile, which
    does not move with the mix of requests in flight), and never below min_tick_rows: a fit whose fixed
    cost comes out near 0 (noise) must not make ticks tiny."""
    fixed, per_row = model.yardstick()
    if per_row <= 0.0:
        return policy.max_rows_per_tick
    e = policy.efficiency if efficiency is None else efficiency
    rows = fixed * e / ((1.0 - e) * per_row)
    return int(min(policy.max_rows_per_tick, max(policy.min_tick_rows, math.ceil(rows))))


def rows_within(seconds: float, model: TickModel, cap: int) -> int:
    """The most rows a tick of at most `seconds` holds under `model` (cap when rows cost nothing)."""
    return model.rows_within(seconds, cap)


def order(slots: Iterable[Slot], policy: Policy) -> list[Slot]:
    """Starved default-class requests first (longest idle first), then deadlines earliest first, then the
    default class by work left; arrival order breaks ties."""

    def key(s: Slot) -> tuple:
        starved = starving(s, policy)
        urgency = s.deadline if s.deadline is not None else float(s.work_left)
        return (not starved, -s.idle_ticks if starved else 0, s.deadline is None, urgency, s.seq)

    return sorted(slots, key=key)


def starving(slot: Slot, policy: Policy) -> bool:
    """A default-class request idle for max_skip_ticks ticks. (A late deadline request is already first
    among its class by EDF.)"""
    return slot.deadline is None and slot.idle_ticks >= policy.max_skip_ticks


def allowance(slot: Slot, now: float, model: TickModel, policy: Policy) -> float:
    """The tick length `slot` can afford. With a deadline: half the time left to it per evaluation left, and at
    least `stretch` times its own tick alone. Without: `stretch` times its tick alone while the time it has
    left alone is short (at most the slack the efficiency target allows in one window, (1 - efficiency) x
    efficiency_window_s); a longer request sets no limit, so long requests alone run in full ticks."""
    own = policy.stretch * model.tick_s(slot.rows)
    if slot.deadline is not None:  # half the slack: the other half is the margin against misprediction
        return max(DEADLINE_SHARE * (slot.deadline - now) / max(slot.evals_left, 1), own)
    left_alone = slot.evals_left * model.tick_s(slot.rows)
    return own if left_alone <= (1.0 - policy.efficiency) * policy.efficiency_window_s else math.inf


def binds(slot: Slot, other: Slot, policy: Policy) -> bool:
    """Whether `slot`'s allowance limits the ticks `other` joins: always with a deadline; without, only when
    `other` is at least size_ratio times its size."""
    return slot.deadline is not None or other.size >= policy.size_ratio * slot.size


def budget_floor(model: TickModel, policy: Policy, recent_efficiency: float) -> int:
    """The rows a tick may always grow to: `efficient_rows` once recent efficiency is below the target, else 0."""
    return efficient_rows(model, policy) if recent_efficiency < policy.efficiency else 0


def plan_tick(
    slots: Sequence[Slot], now: float, model: TickModel, policy: Policy, recent_efficiency: float = 1.0
) -> list[tuple[Slot, int]]:
    """The next tick: (slot, rows to run) in order; rows never exceed a slot's `rows_now` and the total never
    exceeds max_rows_per_tick. recent_efficiency: `Efficiency.value()` of the ticks so far."""
    cap = policy.max_rows_per_tick
    if policy.fifo:
        return [(s, s.rows_now) for s in slots]
    if len(slots) == 1:  # the loop below, for one request: what its allowance holds, at least one row
        s = slots[0]
        return [(s, min(s.rows_now, max(1, rows_within(allowance(s, now, model, policy), model, cap))))]
    floor = budget_floor(model, policy, recent_efficiency)
    plan: list[tuple[Slot, int]] = []
    limits: list[tuple[Slot, float]] = []  # requests in the plan with a finite allowance: only they limit a tick
    smallest = math.inf  # the smallest size among those without a deadline
    with_deadline = False  # whether any of them has a deadline
    total = 0
    for s in order(slots, policy):
        if total >= cap:
            break
        starved = starving(s, policy)
        own = allowance(s, now, model, policy)
        if not plan:  # the first always runs: what its allowance holds, at least one row
            take = min(s.rows_now, max(1, rows_within(own, model, cap)))
        elif starved:
            take = min(s.rows_now, cap - total)
        else:
            limit_s = math.inf
            if with_deadline or s.size >= policy.size_ratio * smallest:  # else none of them binds it: skip the scan
                limit_s = min((a for p, a in limits if binds(p, s, policy)), default=math.inf)
            budget = max(floor, rows_within(limit_s, model, cap))  # joining beats waiting, whatever its own
            take = min(s.rows_now, budget - total, cap - total)
        if take <= 0:
            continue
        plan.append((s, take))
        total += take
        if math.isfinite(own):
            limits.append((s, own))
            if s.deadline is None:
                smallest = min(smallest, s.size)
            else:
                with_deadline = True
    return plan


@dataclass(frozen=True)
class Load:
    """What a prediction needs of the engine's state: the slots in flight or queued, the rows of the tick
    running now (0 when idle) and when it started."""

    slots: Sequence[Slot]
    running_rows: int = 0
    running_since: float = 0.0
    recent_efficiency: float = 1.0


def predicted_latency(
    rows: int,
    evaluations: int,
    deadline: float | None,
    load: Load,
    now: float,
    model: TickModel,
    policy: Policy,
) -> float:
    """Seconds from now until a new request (rows per evaluation, evaluations, absolute deadline or None)
    would finish under the policy (not FIFO): the rest of the tick running now, then the work ordered before
    it at the throughput of `efficient_rows` ticks (within 1 - efficiency of the best), then its own
    evaluations in ticks of the size the budget allows it beside the rest. It errs long: work ordered
    before it in fact shares its ticks."""
    cap = policy.max_rows_per_tick
    running = max(0.0, load.running_since + model.tick_s(load.running_rows) - now) if load.running_rows else 0.0
    others = sum(s.rows for s in load.slots)
    floor = efficient_rows(model, policy)
    probe = Slot(rows, evaluations, deadline, seq=1 << 62)
    ranked = order([*load.slots, probe], policy)
    before = ranked[: ranked.index(probe)]
    ahead = sum(s.work_left for s in before)
    # Its ticks: its own rows and those of requests it does not bind (like sizes share whole ticks), plus what
    # the budget lets the rest add (never more than they have).
    own = allowance(probe, now, model, policy)
    unbound = sum(s.rows for s in load.slots if not binds(probe, s, policy))
    budget = max(
        budget_floor(model, policy, load.recent_efficiency), rows_within(own, model, cap), min(rows + unbound, cap)
    )
    if rows <= cap:
        own_s = evaluations * model.tick_s(min(rows + others, budget))
    else:  # each evaluation runs in ceil(rows / cap) full ticks
        own_s = evaluations * math.ceil(rows / cap) * model.tick_s(cap)
    ahead_s = ahead * model.tick_s(floor) / floor if ahead else 0.0
    return running + ahead_s + own_s
