"""Admission: how long a new request would take on a replica's engine, and whether the engine takes it.

Functions of a load snapshot (`state.Load`), the replica's latency model (`tick_model.TickModel`) and the
engine's knobs (`limits.EngineLimits`); time is passed in. Waiting is bounded by work, not by count: each
request carries its work (rows x net evaluations), and a new request is refused (`Overloaded`, with a
Retry-After from the prediction) when it is predicted to take longer than `max_wait_s` beyond its time alone,
or when the count bounds (requests in flight and waiting) are full. Under the deadline policy the prediction
is `tick_plan.predicted_latency`; under FIFO: when its rows fit the next tick, its evaluations times the
extra tick time of the rows in flight, else the work ahead of it at the full-tick throughput plus its
evaluations times the extra time of a full tick. A request on an idle engine waits 0 whatever its size (the
work cap of `sampling.request.validate` bounds size).
"""

from __future__ import annotations

import math

from serving.policy import tick_plan
from serving.policy.limits import EngineLimits
from serving.policy.state import Load, RequestState
from serving.policy.tick_model import TickModel
from serving.refusals import Overloaded


def alone_s(rows: int, evaluations: int, model: TickModel, limits: EngineLimits) -> float:
    """Seconds a request of `rows` rows x `evaluations` evaluations takes on an idle engine."""
    cap = limits.max_rows_per_tick
    return evaluations * math.ceil(rows / cap) * model.tick_s(min(rows, cap))


def predicted_latency(
    load: Load,
    rows: int,
    evaluations: int,
    deadline: float | None,
    now: float,
    model: TickModel,
    limits: EngineLimits,
) -> float:
    """Seconds from `now` until a new request of `rows` rows x `evaluations` evaluations (deadline on the
    engine's clock, or None) would finish under `load`. One that would tick in the express lane beside
    others' long ticks is predicted against the other express requests only."""
    policy = limits.policy
    if policy.fifo:
        return _fifo_wait(load, rows, evaluations, model, limits) + evaluations * model.tick_s(rows)
    requests = load.requests
    if load.express_lane and requests and model.inline(rows):
        probe = RequestState(rows, evaluations, deadline)
        if tick_plan.express(probe, now, model, policy):
            in_lane = [tick_plan.express(r, now, model, policy) for r in requests]
            others = min(sum(r.rows for r, e in zip(requests, in_lane, strict=True) if not e), policy.max_rows_per_tick)
            if others and not model.inline(others):  # it would tick beside the others' long ticks
                load = Load([r for r, e in zip(requests, in_lane, strict=True) if e])
    return tick_plan.predicted_latency(rows, evaluations, deadline, load, now, model, policy)


def predicted_wait(
    load: Load,
    rows: int,
    evaluations: int,
    deadline: float | None,
    now: float,
    model: TickModel,
    limits: EngineLimits,
) -> float:
    """Seconds a new request would take beyond its time alone (see the module docstring)."""
    if limits.policy.fifo:
        return _fifo_wait(load, rows, evaluations, model, limits)
    latency = predicted_latency(load, rows, evaluations, deadline, now, model, limits)
    return max(0.0, latency - evaluations * model.tick_s(rows))


def _fifo_wait(load: Load, rows: int, evaluations: int, model: TickModel, limits: EngineLimits) -> float:
    alone = model.tick_s(rows)
    in_flight_rows = sum(r.rows for r in load.in_flight)
    fits = in_flight_rows + rows <= limits.max_rows_per_tick or not load.in_flight
    if not load.queued and fits and len(load.in_flight) < limits.max_in_flight:
        return evaluations * (model.tick_s(in_flight_rows + rows) - alone)
    full = limits.max_rows_per_tick
    tick = model.tick_s(full)
    ahead = sum(r.work_left for r in load.requests)
    return ahead * tick / full + evaluations * max(tick - alone, 0.0)


def refusal(
    load: Load,
    rows: int,
    evaluations: int,
    deadline: float | None,
    now: float,
    model: TickModel,
    limits: EngineLimits,
) -> Overloaded | None:
    """Why the engine refuses a new request (the count bounds are full, or its predicted wait exceeds
    max_wait_s), with a Retry-After from the prediction; None when it takes it."""
    wait = predicted_wait(load, rows, evaluations, deadline, now, model, limits)
    retry = retry_after(wait, limits.max_wait_s)
    if len(load.in_flight) + len(load.queued) >= limits.max_in_flight + limits.max_queue:
        return Overloaded(f"engine full: {len(load.in_flight)} requests in flight, {len(load.queued)} queued", retry)
    if wait > limits.max_wait_s:
        return Overloaded(f"predicted wait {wait:.1f} s exceeds the bound of {limits.max_wait_s:g} s", retry)
    return None


def retry_after(wait_s: float, bound_s: float) -> int:
    """Seconds until the work ahead has drained below the wait bound, in [1, 60]."""
    return int(min(60, max(1, math.ceil(wait_s - bound_s))))
