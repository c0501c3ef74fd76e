"""Which rows run in the next engine tick: earliest deadline first, under a per-tick row budget.

The engine calls `plan_tick` once per tick with the requests in flight (`state.RequestState`) and runs
exactly the rows it returns. The policy, from `limits.Policy`:

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

- **Express lane** (`express`, `plan_beside_lane`, `plan_express_tick`): while a tick too long for the
  event loop runs in the engine's thread, the requests that limit the ticks they are in (a finite
  allowance: a deadline, or short) and whose rows alone make an inline tick are left out of it and tick on
  the event loop beside it, at most what runs inline per tick.

`finish_s` is the same policy's estimate of how long a new request would take, used for admission
(`admission.predict`) and for choosing K under a deadline (`step_budget`).

Functions of their arguments (time is passed in; `Efficiency` is the one running record): tests drive them
with a fake clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from serving.policy.limits import Policy
from serving.policy.state import Load, RequestState
from serving.policy.tick_model import TickModel

DEADLINE_SHARE = 0.5  # the share of a deadline request's slack that other requests' rows may take


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


def order(slots: Iterable[RequestState], policy: Policy) -> list[RequestState]:
    """Starved default-class requests first (longest idle first), then deadlines earliest first, then the
    default class by work left; arrival order breaks ties."""

    def key(s: RequestState) -> tuple:
        starved = starving(s, policy)
        urgency = s.deadline if s.deadline is not None else float(s.work_left)
        return (not starved, -s.idle_ticks if starved else 0, s.deadline is None, urgency, s.seq)

    return sorted(slots, key=key)


def starving(slot: RequestState, policy: Policy) -> bool:
    """A default-class request idle for max_skip_ticks ticks. (A late deadline request is already first
    among its class by EDF.)"""
    return slot.deadline is None and slot.idle_ticks >= policy.max_skip_ticks


def allowance(slot: RequestState, now: float, model: TickModel, policy: Policy) -> float:
    """The tick length `slot` can afford. With a deadline: half the time left to it per evaluation left, and at
    least `stretch` times its own tick alone. Without: `stretch` times its tick alone while the time it has
    left alone is short (at most the slack the efficiency target allows in one window, (1 - efficiency) x
    efficiency_window_s); a longer request sets no limit, so long requests alone run in full ticks."""
    own = policy.stretch * model.tick_s(slot.rows)
    if slot.deadline is not None:  # half the slack: the other half is the margin against misprediction
        return max(DEADLINE_SHARE * (slot.deadline - now) / max(slot.evals_left, 1), own)
    left_alone = slot.evals_left * model.tick_s(slot.rows)
    return own if left_alone <= (1.0 - policy.efficiency) * policy.efficiency_window_s else math.inf


def binds(slot: RequestState, other: RequestState, policy: Policy) -> bool:
    """Whether `slot`'s allowance limits the ticks `other` joins: always with a deadline; without, only when
    `other` is at least size_ratio times its size."""
    return slot.deadline is not None or other.size >= policy.size_ratio * slot.size


def row_floor(model: TickModel, policy: Policy, recent_efficiency: float) -> int:
    """The rows a tick may always grow to: `efficient_rows` once recent efficiency is below the target, else 0."""
    return efficient_rows(model, policy) if recent_efficiency < policy.efficiency else 0


def plan_tick(
    slots: Sequence[RequestState], now: float, model: TickModel, policy: Policy, recent_efficiency: float = 1.0
) -> list[tuple[RequestState, int]]:
    """The next tick: (request, rows to run) in order; rows never exceed a request's `rows_now` and the total
    never exceeds max_rows_per_tick. recent_efficiency: `Efficiency.value()` of the ticks so far."""
    cap = policy.max_rows_per_tick
    if policy.fifo:
        return [(s, s.rows_now) for s in slots]
    if len(slots) == 1:  # the loop below, for one request: what its allowance holds, at least one row
        s = slots[0]
        return [(s, min(s.rows_now, max(1, rows_within(allowance(s, now, model, policy), model, cap))))]
    floor = row_floor(model, policy, recent_efficiency)
    plan: list[tuple[RequestState, int]] = []
    # requests in the plan with a finite allowance: only they limit a tick
    limits: list[tuple[RequestState, float]] = []
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
            row_budget = max(floor, rows_within(limit_s, model, cap))  # joining beats waiting, whatever its own
            take = min(s.rows_now, row_budget - total, cap - total)
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


def finish_s(request: RequestState, load: Load, now: float, model: TickModel, policy: Policy) -> float:
    """Seconds from `now` until a new `request` (rows per evaluation, planned evaluations, absolute deadline or
    None; not yet in `load`) would finish under the policy (not FIFO): the rest of the tick running now, then
    the work ordered before it at the throughput of `efficient_rows` ticks (within 1 - efficiency of the best),
    then its own evaluations in ticks of the size the row budget allows it beside the rest; with a decode stage,
    the decodes due now and those of the requests ordered before it (each decoded between two ticks), then its
    own. It errs long: work ordered before it in fact shares its ticks, and its decodes share calls."""
    cap = policy.max_rows_per_tick
    running = max(0.0, load.running_since + model.tick_s(load.running_rows) - now) if load.running_rows else 0.0
    others = sum(s.rows for s in load.requests)
    floor = efficient_rows(model, policy)
    rows, evaluations = request.rows, request.planned
    probe = RequestState(rows, evaluations, request.deadline, seq=1 << 62)  # ordered after its equals
    ranked = order([*load.requests, probe], policy)
    before = ranked[: ranked.index(probe)]
    ahead = sum(s.work_left for s in before)
    # Its ticks: its own rows and those of requests it does not bind (like sizes share whole ticks), plus what
    # the row budget lets the rest add (never more than they have).
    own = allowance(probe, now, model, policy)
    unbound = sum(s.rows for s in load.requests if not binds(probe, s, policy))
    row_budget = max(
        row_floor(model, policy, load.recent_efficiency), rows_within(own, model, cap), min(rows + unbound, cap)
    )
    if rows <= cap:
        own_s = evaluations * model.tick_s(min(rows + others, row_budget))
    else:  # each evaluation runs in ceil(rows / cap) full ticks
        own_s = evaluations * math.ceil(rows / cap) * model.tick_s(cap)
    ahead_s = ahead * model.tick_s(floor) / floor if ahead else 0.0
    decodes_s = load.decoding_s + sum(s.decode_s for s in before) + request.decode_s
    return running + ahead_s + own_s + decodes_s


def express(request: RequestState, now: float, model: TickModel, policy: Policy) -> bool:
    """Whether `request` may tick in the express lane (where the engine has one): it limits the ticks it is in
    (a finite `allowance`: a deadline, or a short request) and its rows alone make a tick short enough to run
    on the event loop."""
    return model.inline(request.rows) and math.isfinite(allowance(request, now, model, policy))


def plan_beside_lane(
    requests: Sequence[RequestState],
    now: float,
    model: TickModel,
    policy: Policy,
    recent_efficiency: float,
    lane: bool,
) -> list[tuple[RequestState, int]]:
    """The next tick of the engine's main lane: with the express lane on (`lane`) and both kinds in flight,
    the non-express requests alone, when their tick is too long for the event loop (the express ones tick
    beside it); else `plan_tick` of them all."""
    if lane and not policy.fifo and len(requests) > 1:
        fast = [express(r, now, model, policy) for r in requests]
        if 0 < sum(fast) < len(requests):
            plan = plan_tick(
                [r for r, f in zip(requests, fast, strict=True) if not f], now, model, policy, recent_efficiency
            )
            if not model.inline(sum(n for _, n in plan)):
                return plan
    return plan_tick(requests, now, model, policy, recent_efficiency)


def plan_express_tick(
    requests: Sequence[RequestState], now: float, model: TickModel, policy: Policy
) -> list[tuple[RequestState, int]]:
    """One express tick of `requests` (express, not in the tick running in the thread): their `plan_tick`
    with no throughput floor (these ticks are short by design), cut to at most what runs inline; the first
    always runs."""
    limit = model.rows_within(model.inline_s, policy.max_rows_per_tick)
    plan: list[tuple[RequestState, int]] = []
    total = 0
    for r, n in plan_tick(requests, now, model, policy, 1.0):
        if plan and total + n > limit:
            continue
        plan.append((r, n))
        total += n
    return plan
