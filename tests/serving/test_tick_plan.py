"""The tick scheduler on a fake clock: each tick takes exactly the latency model's time for its rows, so
order, budgets, starvation and predictions are checked without a net or a real clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from serving.policy.limits import Policy
from serving.policy.state import Load, RequestState
from serving.policy.tick_model import TickModel
from serving.policy.tick_plan import (
    Efficiency,
    allowance,
    binds,
    efficient_rows,
    finish_s,
    plan_tick,
    rows_within,
)

FIXED, PER_ROW = 1e-3, 1e-5  # a tick: 1 ms plus 10 us per row
MODEL = TickModel([(1, FIXED + PER_ROW), (1000, FIXED + 1000 * PER_ROW)])


@dataclass
class Req:
    name: str
    rows: int
    evals: int
    arrive: float = 0.0
    deadline: float | None = None  # relative to arrival
    slot: RequestState | None = None
    finished: float | None = None
    predicted: float | None = None
    advanced_at: list[int] = field(default_factory=list)  # ticks in which it ran rows


def simulate(reqs: list[Req], policy: Policy, max_ticks: int = 100_000) -> tuple[float, list[list[tuple[Req, int]]]]:
    """Run every request to completion on the fake clock; the tick plans, and the time the last finished.
    Each request's `predicted` is `finish_s` from the state when it joined."""
    now, tick = 0.0, 0
    eff = Efficiency(policy.efficiency_window_s)
    pending = sorted(reqs, key=lambda r: r.arrive)
    active: list[Req] = []
    plans = []
    for seq, r in enumerate(pending):
        r.slot = RequestState(r.rows, r.evals, None if r.deadline is None else r.arrive + r.deadline, seq)
    while (pending or active) and tick < max_ticks:
        while pending and pending[0].arrive <= now:
            r = pending.pop(0)
            load = Load([a.slot for a in active], recent_efficiency=eff.value())
            ahead = finish_s(RequestState(r.rows, r.evals, r.slot.deadline), load, now, MODEL, policy)
            r.predicted = (now - r.arrive) + ahead
            active.append(r)
        if not active:
            now = pending[0].arrive
            continue
        by_slot = {id(r.slot): r for r in active}
        plan = [(by_slot[id(s)], n) for s, n in plan_tick([r.slot for r in active], now, MODEL, policy, eff.value())]
        plans.append(plan)
        rows = sum(n for _, n in plan)
        now += MODEL.tick_s(rows)
        eff.record(rows, now, MODEL, policy)
        ran = {id(r) for r, _ in plan}
        for r in active:
            r.slot.idle_ticks = 0 if id(r) in ran else r.slot.idle_ticks + 1
        for r, n in plan:
            r.advanced_at.append(tick)
            r.slot.cursor += n
            if r.slot.cursor == r.rows:
                r.slot.cursor = 0
                r.slot.evaluations += 1
                if r.slot.evaluations == r.evals:
                    r.finished = now
                    active.remove(r)
        tick += 1
    assert not pending and not active, "the simulation did not finish"
    return now, plans


def alone_s(rows: int, evals: int) -> float:
    return evals * MODEL.tick_s(rows)


def test_earliest_deadline_runs_first_and_finishes_first() -> None:
    """Three deadline requests that each fill a tick: served strictly in deadline order, whatever the order
    they arrived in."""
    policy = Policy(max_rows_per_tick=100)
    reqs = [
        Req("late", 100, 3, deadline=9.0),
        Req("early", 100, 3, deadline=1.0),
        Req("middle", 100, 3, deadline=5.0),
    ]
    _, plans = simulate(reqs, policy)
    assert [p[0][0].name for p in plans] == ["early"] * 3 + ["middle"] * 3 + ["late"] * 3
    done = sorted(reqs, key=lambda r: r.finished)
    assert [r.name for r in done] == ["early", "middle", "late"]


def test_deadline_requests_go_before_the_default_class() -> None:
    policy = Policy(max_rows_per_tick=50)
    reqs = [Req("default", 50, 2), Req("deadline", 50, 2, deadline=100.0)]
    _, plans = simulate(reqs, policy)
    assert [p[0][0].name for p in plans] == ["deadline", "deadline", "default", "default"]


def test_every_tick_respects_the_row_budget() -> None:
    """No tick exceeds max_rows_per_tick; while a short request runs, its ticks hold no more than its budget:
    the rows of `stretch` times its tick alone, or the efficient floor."""
    policy = Policy(max_rows_per_tick=2048)
    longs = [Req(f"long{i}", 256, 100) for i in range(6)]
    short = Req("short", 64, 5, arrive=0.5)
    _, plans = simulate([*longs, short], policy)
    assert all(sum(n for _, n in p) <= 2048 for p in plans)
    budget = max(efficient_rows(MODEL, policy), rows_within(policy.stretch * MODEL.tick_s(64), MODEL, 2048))
    with_short = [p for p in plans if any(r is short for r, _ in p)]
    assert len(with_short) == 5
    assert all(sum(n for _, n in p) <= budget for p in with_short)
    assert all(p[0][0] is short for p in with_short)  # least work first


def test_short_request_is_not_slowed_by_long_ones_and_throughput_holds() -> None:
    """Six K = 100 requests of 256 rows, then a K = 5 request of 64 rows: under FIFO the short one runs in
    ticks of 1 600 rows; under the deadline policy in ticks near its own size. The whole batch finishes in
    nearly the same time (throughput within 10 %)."""
    results = {}
    for name, policy in (("fifo", Policy(fifo=True)), ("deadline", Policy())):
        longs = [Req(f"long{i}", 256, 100) for i in range(6)]
        short = Req("short", 64, 5, arrive=0.5)
        makespan, _ = simulate([*longs, short], policy)
        results[name] = (makespan, (short.finished - short.arrive) / alone_s(64, 5))
    fifo_makespan, fifo_slowdown = results["fifo"]
    makespan, slowdown = results["deadline"]
    # The short one may also wait out the tick running when it arrives: at most one more tick.
    assert slowdown <= Policy().stretch * 1.0 + MODEL.tick_s(2048) / alone_s(64, 5)
    assert fifo_slowdown > 3 * slowdown
    assert fifo_makespan / makespan >= 0.9


def test_a_default_request_is_not_starved_by_a_stream_of_urgent_ones() -> None:
    """Urgent requests arriving back to back fill every tick; the default-class request still advances at
    least once every max_skip_ticks + 1 ticks."""
    policy = Policy(max_rows_per_tick=64, max_skip_ticks=4)
    urgent = [Req(f"u{i}", 64, 2, arrive=i * 0.001, deadline=0.01) for i in range(200)]
    background = Req("background", 64, 10)
    simulate([background, *urgent], policy)
    # Each of its 10 evaluations is one whole-request advance (64 rows, a tick's worth), and it finished while
    # the stream still ran: at least one urgent request finished after it.
    assert len(background.advanced_at) == 10
    assert background.finished < max(u.finished for u in urgent)
    gaps = [b - a for a, b in zip(background.advanced_at, background.advanced_at[1:], strict=False)]
    assert gaps and max(gaps) <= policy.max_skip_ticks + 1


def test_fifo_runs_every_request_every_tick() -> None:
    reqs = [Req("a", 10, 3), Req("b", 20, 5)]
    _, plans = simulate(reqs, Policy(fifo=True))
    assert [sum(n for _, n in p) for p in plans] == [30, 30, 30, 20, 20]


def test_allowance_grows_with_deadline_slack() -> None:
    policy = Policy()
    tight = RequestState(64, 10, deadline=0.0, seq=0)
    loose = RequestState(64, 10, deadline=10.0, seq=1)
    assert allowance(tight, 0.0, MODEL, policy) == pytest.approx(policy.stretch * MODEL.tick_s(64))
    assert allowance(loose, 0.0, MODEL, policy) == pytest.approx(0.5)  # half of 10 s over 10 evaluations


@pytest.mark.parametrize("deadline", [None, 0.5])
@pytest.mark.parametrize("longs_n", [0, 2, 6])
def test_the_prediction_errs_long_but_not_far(deadline: float | None, longs_n: int) -> None:
    """finish_s for a request joining amid load (from the state it joins in), against the simulated
    time it then takes: never shorter, at most twice as long (give or take one tick)."""
    policy = Policy()
    longs = [Req(f"long{i}", 256, 100) for i in range(longs_n)]
    new = Req("new", 64, 10, arrive=0.5, deadline=deadline)
    simulate([*longs, new], policy)
    actual = new.finished - new.arrive
    slack = MODEL.tick_s(2048)
    assert new.predicted * 1.0001 + slack >= actual
    assert new.predicted <= 2.0 * actual + slack


def test_a_fit_without_fixed_cost_does_not_make_ticks_tiny() -> None:
    """A latency fit whose fixed cost came out 0 (noise) would call any tick efficient; long requests still
    run ticks of at least min_tick_rows."""
    flat = TickModel([(1, 1e-5), (1000, 1e-2)])  # exactly proportional: fixed 0
    assert flat.fixed_s == pytest.approx(0.0, abs=1e-12)
    policy = Policy()
    slots = [RequestState(256, 100, None, i) for i in range(6)]
    plan = plan_tick(slots, 0.0, flat, policy)
    assert sum(n for _, n in plan) >= policy.min_tick_rows


def test_a_steady_stream_of_short_requests_keeps_most_of_the_throughput() -> None:
    """Short requests arriving back to back beside long ones: each gets small ticks while the efficiency
    guard allows, and the whole finishes within about 1 / efficiency of FIFO's time."""
    makespans = {}
    for name, policy in (("fifo", Policy(fifo=True)), ("deadline", Policy())):
        longs = [Req(f"long{i}", 256, 100) for i in range(6)]
        shorts = [Req(f"s{i}", 64, 5, arrive=i * alone_s(64, 5)) for i in range(150)]
        makespans[name], _ = simulate([*longs, *shorts], policy)
    assert makespans["fifo"] / makespans["deadline"] >= 0.88


def test_requests_of_like_size_share_whole_ticks_as_under_fifo() -> None:
    """Eight K = 50, 256-row requests arriving staggered (so some are always near their end) and a mix of
    64-row requests with K from 30 to 70: within size_ratio of each other, none limits another's ticks, so
    every request runs all its rows every tick, as under FIFO, and the whole takes FIFO's time."""
    for make in (
        lambda: [Req(f"r{i}", 256, 50, arrive=i * 0.02) for i in range(8)],
        lambda: [Req(f"r{i}", 64, (30, 40, 50, 60, 70)[i % 5], arrive=i * 0.01) for i in range(40)],
    ):
        makespans = {}
        for name, policy in (("fifo", Policy(fifo=True)), ("deadline", Policy())):
            reqs = make()
            makespans[name], plans = simulate(reqs, policy)
            if name == "deadline":
                for p in plans:
                    assert all(n == r.rows for r, n in p)  # no request split
                assert max(len(p) for p in plans) == max(len(p) for p in simulate(make(), Policy(fifo=True))[1])
        assert makespans["deadline"] == pytest.approx(makespans["fifo"], rel=1e-9)


def test_a_request_limits_only_requests_several_times_its_size_or_everyone_with_a_deadline() -> None:
    policy = Policy(size_ratio=4.0)
    small = RequestState(64, 5, None, seq=0)  # size 320
    assert not binds(small, RequestState(64, 19, None, seq=1), policy)  # 1 216 < 4 x 320
    assert binds(small, RequestState(64, 20, None, seq=2), policy)  # 1 280 = 4 x 320
    assert binds(
        RequestState(64, 5, 1.0, seq=3), RequestState(1, 1, None, seq=4), policy
    )  # a deadline binds all after it
    # The size is what it asked for: a long request near its end still counts as long.
    tail = RequestState(256, 100, None, seq=5)
    tail.evaluations = 99  # one evaluation left
    assert tail.size == 25_600 and not binds(tail, RequestState(256, 100, None, seq=6), policy)


def test_the_decodes_due_before_a_request_are_in_its_finish() -> None:
    """With a decode stage, a request's finish holds the decodes still due for finished requests, those of the
    requests ordered before it (decoded between two ticks, before its last) and its own; not those of requests
    ordered after it."""
    policy = Policy()
    short = RequestState(64, 2, seq=0, decode_s=0.25)  # less work: ordered first
    long = RequestState(64, 400, seq=1, decode_s=0.5)  # more work: after the probe
    probe = RequestState(64, 20, decode_s=0.125)
    bare = RequestState(64, 20)
    base = finish_s(bare, Load([short, long]), 0.0, MODEL, policy)
    # the same load without decodes: the decode seconds are the whole difference
    plain = Load([RequestState(64, 2, seq=0), RequestState(64, 400, seq=1)])
    assert base == pytest.approx(finish_s(bare, plain, 0.0, MODEL, policy) + 0.25)
    assert finish_s(probe, Load([short, long]), 0.0, MODEL, policy) == pytest.approx(base + 0.125)
    busy = Load([short, long], decoding_s=1.0)
    assert finish_s(probe, busy, 0.0, MODEL, policy) == pytest.approx(base + 0.125 + 1.0)
