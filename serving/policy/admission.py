"""Admission: how long a new request would take on a replica's engine, and whether the engine takes it.

`predict` gives a new request's `Prediction` once, and `refusal` decides from it. Functions of the request
(a `state.RequestState` not yet in the engine), a load snapshot (`state.Load`), the replica's latency model
(`tick_model.TickModel`) and the engine's knobs (`limits.EngineLimits`); time is passed in.

Waiting is bounded by work, not by count: each request carries its work (rows x net evaluations), and a new
request is refused (`Overloaded`, with a Retry-After from the prediction) when it is predicted to take longer
than `max_wait_s` beyond its time alone, or when the count bounds (requests in flight and waiting) are full.
Under the deadline policy the prediction is `tick_plan.finish_s`; under FIFO: when its rows fit the next
tick, its evaluations times the extra tick time of the rows in flight, else the work ahead of it at the
full-tick throughput plus its evaluations times the extra time of a full tick. A request on an idle engine
waits 0 whatever its size (the work cap of `sampling.request.validate` bounds size).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

from serving.policy import tick_plan
from serving.policy.limits import EngineLimits
from serving.policy.state import Load, RequestState
from serving.policy.tick_model import DecodeCost, TickModel
from serving.refusals import Overloaded


@dataclass(frozen=True)
class Prediction:
    """A new request under one load: latency_s, seconds from then until it would finish; wait_s, how much of
    that is beyond its time alone (what `max_wait_s` bounds)."""

    latency_s: float
    wait_s: float


def alone_s(request: RequestState, model: TickModel, limits: EngineLimits) -> float:
    """Seconds `request` (rows x planned evaluations, then its decode) takes on an idle engine."""
    cap = limits.max_rows_per_tick
    return request.planned * math.ceil(request.rows / cap) * model.tick_s(min(request.rows, cap)) + request.decode_s


def predict(request: RequestState, load: Load, now: float, model: TickModel, limits: EngineLimits) -> Prediction:
    """How long a new `request` (rows, planned evaluations, deadline on the engine's clock or None) would take
    from `now` under `load`. One that would tick in the express lane beside others' long ticks is predicted
    against the other express requests only."""
    policy = limits.policy
    own_s = request.planned * model.tick_s(request.rows) + request.decode_s  # its own decode is its time alone
    if policy.fifo:
        wait = _fifo_wait(request, load, model, limits)
        return Prediction(wait + own_s, wait)
    requests = load.requests
    if load.express_lane and requests and model.inline(request.rows) and tick_plan.express(request, now, model, policy):
        in_lane = [tick_plan.express(r, now, model, policy) for r in requests]
        others = min(sum(r.rows for r, e in zip(requests, in_lane, strict=True) if not e), policy.max_rows_per_tick)
        if others and not model.inline(others):  # it would tick beside the others' long ticks
            load = Load([r for r, e in zip(requests, in_lane, strict=True) if e], decoding_s=load.decoding_s)
    latency = tick_plan.finish_s(request, load, now, model, policy)
    return Prediction(latency, max(0.0, latency - own_s))


def drain_s(load: Load, model: TickModel, limits: EngineLimits) -> float:
    """Seconds of work in `load` (requests in flight and queued) at the most the engine batches: every request
    runs its evaluations left in ticks beside all the others still running, ticks of more rows than the cap
    split into full ones, and every decode due (a latent model's decode stage). What the autoscaling policy
    reads as a replica's backlog (`serving.autoscale`)."""
    cap = limits.max_rows_per_tick
    left = sorted(((r.evals_left, r.rows) for r in load.requests), reverse=True)
    total, rows = load.decoding_s + sum(r.decode_s for r in load.requests), 0
    # Ticks from the last request's end backwards: while k requests remain, the rows are theirs.
    for i, (evals, r) in enumerate(left):
        rows += r
        fewer = left[i + 1][0] if i + 1 < len(left) else 0
        ticks = evals - fewer
        if ticks > 0:
            total += ticks * math.ceil(rows / cap) * model.tick_s(min(rows, cap))
    return total


def _fifo_wait(request: RequestState, load: Load, model: TickModel, limits: EngineLimits) -> float:
    rows, evaluations = request.rows, request.planned
    alone = model.tick_s(rows)
    in_flight_rows = sum(r.rows for r in load.in_flight)
    fits = in_flight_rows + rows <= limits.max_rows_per_tick or not load.in_flight
    decodes = load.decoding_s + sum(r.decode_s for r in load.requests)  # all of them finish first (FIFO)
    if not load.queued and fits and len(load.in_flight) < limits.max_in_flight:
        return decodes + evaluations * (model.tick_s(in_flight_rows + rows) - alone)
    full = limits.max_rows_per_tick
    tick = model.tick_s(full)
    ahead = sum(r.work_left for r in load.requests)
    return decodes + ahead * tick / full + evaluations * max(tick - alone, 0.0)


def refusal(prediction: Prediction, load: Load, limits: EngineLimits) -> Overloaded | None:
    """Why the engine refuses a new request predicted as `prediction` under `load` (the count bounds are full,
    or its predicted wait exceeds max_wait_s), with a Retry-After from the prediction; None when it takes it."""
    wait = prediction.wait_s
    retry = retry_after(wait, limits.max_wait_s)
    if len(load.in_flight) + len(load.queued) >= limits.max_in_flight + limits.max_queue:
        return Overloaded(f"engine full: {len(load.in_flight)} requests in flight, {len(load.queued)} queued", retry)
    if wait > limits.max_wait_s:
        return Overloaded(f"predicted wait {wait:.1f} s exceeds the bound of {limits.max_wait_s:g} s", retry)
    return None


def retry_after(wait_s: float, bound_s: float) -> int:
    """Seconds until the work ahead has drained below the wait bound, in [1, 60]."""
    return int(min(60, max(1, math.ceil(wait_s - bound_s))))


@dataclass(frozen=True)
class Snapshot:
    """An engine's load as another process sees it (the HTTP edge, `serving.api.door`): the requests'
    scheduling fields with every time relative to `taken_at` (unix seconds, when it was taken), a copy of the
    latency model and the knobs, and of the decode stage's cost (a latent model's; None without one);
    `replica` names the replica it came from."""

    replica: str
    taken_at: float
    load: Load
    model: TickModel
    limits: EngineLimits
    factor: float = 1.0  # the replica's steps-"auto" calibration (step_budget.Calibration): its predictions' scale
    decode: DecodeCost | None = None

    def decode_s(self, samples: int) -> float:
        """Predicted seconds of decoding `samples` images on this replica (0 without a decode stage)."""
        return 0.0 if self.decode is None else self.decode.seconds(samples)

    def refusal(self, request: RequestState, now: float, sent: Sequence[RequestState] = ()) -> Overloaded | None:
        """`refusal` for a new `request` (its deadline relative to taken_at, or None) at unix time `now`, with
        `sent`, requests sent to the engine since the snapshot was taken, queued behind the rest."""
        load = self._load(sent)
        prediction = predict(request, load, now - self.taken_at, self.model, self.limits)
        return refusal(prediction, load, self.limits)

    def latency_s(self, request: RequestState, now: float, sent: Sequence[RequestState] = ()) -> float:
        """Seconds from unix time `now` until a new `request` would finish on this load (with `sent` queued), as
        the replica's steps-"auto" choice predicts it (times its calibration `factor`)."""
        return self.factor * predict(request, self._load(sent), now - self.taken_at, self.model, self.limits).latency_s

    def _load(self, sent: Sequence[RequestState]) -> Load:
        load = self.load
        return Load(load.in_flight, (*load.queued, *sent), *_rest(load)) if sent else load


def _rest(load: Load) -> tuple[int, float, float, bool, float]:
    return load.running_rows, load.running_since, load.recent_efficiency, load.express_lane, load.decoding_s


def snapshot(
    load: Load,
    now: float,
    model: TickModel,
    limits: EngineLimits,
    replica: str,
    taken_at: float,
    factor: float = 1.0,
    decode: DecodeCost | None = None,
) -> Snapshot:
    """`load` at `now` on the engine's clock as a `Snapshot` taken at unix time `taken_at`."""

    def scheduling(r: RequestState) -> RequestState:
        deadline = None if r.deadline is None else r.deadline - now
        return RequestState(
            r.rows, r.planned, deadline, r.seq, r.evaluations, r.cursor, r.idle_ticks, r.size, r.decode_s
        )

    portable = Load(
        tuple(map(scheduling, load.in_flight)),
        tuple(map(scheduling, load.queued)),
        load.running_rows,
        load.running_since - now,
        load.recent_efficiency,
        load.express_lane,
        load.decoding_s,
    )
    return Snapshot(replica, taken_at, portable, copy.deepcopy(model), limits, factor, copy.deepcopy(decode))
