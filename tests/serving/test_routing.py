"""Routing by work (serving.policy.routing) and autoscaling on work (serving.autoscale) on the policy's own
objects, without Ray: the ranking follows predicted latency (not request counts), treats stale and missing
snapshots as unknown without waiting on them, counts what was routed since a snapshot; a replica's drain time
equals a tick-by-tick simulation; the scaling policy follows backlog and misses with hysteresis."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys

import pytest
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from sampling.request import SampleSpec
from serving.autoscale import BACKLOG, MISS_RATE, REFUSAL_RATE, Outcomes, WorkPolicy
from serving.policy import admission, routing
from serving.policy.limits import EngineLimits
from serving.policy.routing import Board, Work, rank, work_of
from serving.policy.state import Load, RequestState
from serving.policy.step_budget import Candidate
from serving.policy.tick_model import TickModel
from tests.conftest import ROOT

MODEL = TickModel([(1, 1e-3 + 1e-5), (1000, 1e-3 + 1e-2)])  # 1 ms a tick plus 10 us a row
LIMITS = EngineLimits(max_wait_s=5.0)
NOW = 1_800_000_000.0


def snap(requests: list[tuple[int, int]], replica: str, taken: float = NOW, due_in: float | None = None):
    """A snapshot of an engine holding `requests` (rows, evaluations left) in flight, due `due_in` s after it
    was taken (or without deadlines)."""
    engine_now = 100.0
    due = None if due_in is None else engine_now + due_in
    load = Load([RequestState(r, e, due, seq=i) for i, (r, e) in enumerate(requests)], (), 0, engine_now)
    return admission.snapshot(load, engine_now, MODEL, LIMITS, replica, taken)


def spec(steps: int, n: int = 8) -> SampleSpec:
    return SampleSpec(sampler="fm-euler", steps=steps, num_samples=n, seed=0)


def test_work_of_reads_the_replica_methods_arguments() -> None:
    s = spec(20)
    assert work_of("sample", (s, NOW + 1), {}) == Work(8, 20, NOW + 1, samples=8)
    assert work_of("sample", (s,), {}) == Work(8, 20, None, samples=8)
    assert work_of("sample_stream", (s, 5), {}) == Work(8, 20, None, samples=8)  # preview_every is not a deadline
    cands = [Candidate(spec(1), 0.2), Candidate(spec(10), 0.9)]
    assert work_of("sample_auto", (cands, NOW + 2), {}) == Work(8, 0, NOW + 2, tuple(cands), 8)
    assert work_of("load", (), {}) is None
    assert work_of("sample", ("not a spec",), {}) is None


def test_a_long_backlog_is_avoided_though_it_is_fewer_requests() -> None:
    """One 1024-row request with 1000 evaluations left against three 8-row requests with 10 left: by request
    count (Serve's default) the first replica looks idler; by work it is the one to avoid."""
    busy, light = snap([(1024, 1000)], "busy"), snap([(8, 10)] * 3, "light")
    ranks = rank(["busy", "light"], {"busy": busy, "light": light}, Work(8, 20, None), NOW)
    assert ranks == [["light"], ["busy"]]
    # and with the loads swapped between the replicas, the choice follows the load, not the name
    ranks = rank(["busy", "light"], {"busy": light, "light": busy}, Work(8, 20, None), NOW)
    assert ranks == [["busy"], ["light"]]


def test_a_deadline_prefers_the_replica_that_meets_it() -> None:
    # a's request is due first, so the new one waits behind it there (EDF)
    a, b = snap([(1024, 400)], "a", due_in=0.1), snap([(64, 20)], "b", due_in=0.1)
    work = Work(8, 50, NOW + 0.5)
    lat = {r: s.latency_s(routing.state(8, 50, work.due, s), NOW) for r, s in (("a", a), ("b", b))}
    assert lat["b"] < 0.5 < lat["a"]  # the case: only b meets it
    assert rank(["a", "b"], {"a": a, "b": b}, work, NOW) == [["b"], ["a"]]


def test_steps_auto_ranks_by_the_quality_that_fits() -> None:
    """A steps-"auto" request goes where the best quality finishes in time (the replica picks K there)."""
    cands = (Candidate(spec(2), 0.3), Candidate(spec(50), 0.9))
    idle, loaded = snap([], "idle"), snap([(1024, 15)], "loaded", due_in=0.01)  # ~0.17 s of work ahead
    work = Work(8, 0, NOW + 0.2, cands)
    assert routing.best_fit(idle, cands, work.due, NOW)[0] == 0.9
    assert routing.best_fit(loaded, cands, work.due, NOW)[0] == 0.3
    assert rank(["loaded", "idle"], {"idle": idle, "loaded": loaded}, work, NOW) == [["idle"], ["loaded"]]


def test_close_predictions_share_a_rank() -> None:
    """Within the tie tolerance the queue length decides (Serve's choice within a rank)."""
    a, b = snap([(8, 10)], "a"), snap([(8, 11)], "b")
    assert rank(["a", "b"], {"a": a, "b": b}, Work(8, 20, None), NOW) == [["a", "b"]]


def test_unknown_and_stale_replicas_share_the_best_rank_and_go_first_when_all_known_ones_fail() -> None:
    good, stale = snap([(8, 10)], "good"), snap([], "stale", taken=NOW - routing.STALE_S - 1)
    work = Work(8, 20, None)
    assert rank(["good", "stale", "new"], {"good": good, "stale": stale}, work, NOW) == [["good", "stale", "new"]]
    # nothing known: one rank of all (Serve's queue-length choice), never a wait
    assert rank(["x", "y"], {}, work, NOW) == [["x", "y"]]
    # every known replica would refuse: the unknown one is tried first
    full = snap([(1024, 5000)] * 8, "full")
    assert full.refusal(routing.state(8, 2000, None, full), NOW) is not None
    assert rank(["full", "new"], {"full": full}, Work(8, 2000, None), NOW) == [["new"], ["full"]]


def test_the_board_counts_requests_routed_since_each_snapshot() -> None:
    board = Board()
    a, b = snap([], "a", taken=NOW), snap([(64, 100)], "b", taken=NOW)
    board.observe(a)
    board.observe_stats({"replica": "b", "taken_at": b.taken_at, "snapshot": pickle.dumps(b)})
    board.observe_stats({"replica": "c", "taken_at": NOW, "snapshot": b"not a pickle"})  # ignored
    # fifty requests of 256 rows x 100 sent to a since its snapshot make it the worse choice
    for i in range(50):
        board.sent("a", 256, 100, None, NOW + 0.001 * (i + 1))
    snapshots, sent = board.view(["a", "b", "c"])
    assert set(snapshots) == {"a", "b"} and len(sent["a"]) == 50 and sent["b"] == []
    work = Work(256, 100, None)
    assert rank(["a", "b"], snapshots, work, NOW + 0.1, sent) == [["b"], ["a"]]
    assert rank(["a", "b"], snapshots, work, NOW + 0.1) == [["a"], ["b"]]  # without the sent ones a is idle
    # a newer snapshot of a includes them: they are dropped
    board.observe(snap([], "a", taken=NOW + 1.0))
    assert board.view(["a"])[1]["a"] == []
    board.forget("a")
    assert "a" not in board.view(["a"])[0]


def test_drain_time_equals_a_tick_by_tick_simulation() -> None:
    limits = EngineLimits.from_options(max_rows_per_tick=512)
    requests = [(300, 7), (8, 40), (256, 3), (100, 12), (8, 1)]
    load = Load([RequestState(r, e, seq=i) for i, (r, e) in enumerate(requests)])
    left, total = [list(x) for x in requests], 0.0
    while any(e > 0 for _, e in left):  # every request still running joins every tick, split at the cap
        rows = sum(r for r, e in left if e > 0)
        total += math.ceil(rows / 512) * MODEL.tick_s(min(rows, 512))
        left = [[r, e - 1] for r, e in left]
    assert admission.drain_s(load, MODEL, limits) == pytest.approx(total, rel=1e-12)
    assert admission.drain_s(Load(), MODEL, limits) == 0.0


def test_the_policy_follows_backlog_with_hysteresis_and_scales_up_on_misses() -> None:
    p = WorkPolicy(target_backlog_s=2.0, max_miss_rate=0.05, downscale_below=0.5)
    assert p.decide(1, [5.0], [0.0]) == 3  # 5 s of work at 2 s a replica
    assert p.decide(2, [1.0, 1.2], [0.0, 0.0]) == 2  # 2.2 s: 2 replicas wanted, 2 run: hold
    assert p.decide(2, [0.6, 0.6], [0.0] * 2) == 2  # 1.2 s fits 1 replica, but above half its target: hold
    assert p.decide(3, [0.4, 0.4, 0.4], [0.0] * 3) == 2  # 1.2 s: 2 left carry 0.6 each (<= 1), 1 would not
    assert p.decide(3, [0.1, 0.1, 0.1], [0.0] * 3) == 1  # 0.3 s: one replica carries it below half the target
    assert p.decide(2, [0.1, 0.1], [0.2, 0.0]) == 3  # deadlines missed: one more, whatever the backlog
    # A saturated replica sheds: its backlog stays near what max_wait_s admits, so refusals say it needs help
    assert p.decide(1, [1.9], [0.0], [0.3]) == 2
    assert p.decide(2, [0.1, 0.1], [0.0, 0.0], [0.04, 0.0]) == 1  # refusals under the bound: backlog decides
    assert p.decide(2, [0.1, 0.1], [0.0, 0.0], [0.0, 0.5]) == 3  # never down while refusing
    assert p.decide(2, [], []) == 2  # no reports yet: hold
    assert p.decide(2, [3.0], []) == 3  # one of two reporting: the other carries the average
    with pytest.raises(ValueError, match="target_backlog_s"):
        WorkPolicy(target_backlog_s=0)


def test_the_policy_reads_serves_autoscaling_context() -> None:
    config = AutoscalingConfig(min_replicas=1, max_replicas=4)
    ctx = AutoscalingContext(
        deployment_id=None,
        deployment_name="m",
        app_name="a",
        current_num_replicas=2,
        target_num_replicas=2,
        running_replicas=["r1", "r2"],
        total_num_requests=3,
        total_queued_requests=0,
        aggregated_metrics={
            BACKLOG: {"r1": 4.0, "r2": 3.0},
            MISS_RATE: {"r1": 0.0, "r2": 0.0},
            REFUSAL_RATE: {"r1": 0.5, "r2": 0.0},
        },
        raw_metrics={},
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=4,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=NOW,
        config=config,
    )
    want, state = WorkPolicy(target_backlog_s=2.0)(ctx)
    assert want == 4 and state["backlog_s"] == 7.0 and state["max_refusal_rate"] == 0.5
    ctx.aggregated_metrics[BACKLOG] = {"r1": 0.5, "r2": 0.5}
    assert WorkPolicy(target_backlog_s=2.0)(ctx)[0] == 3  # 1 s of backlog, but r1 refuses half: one more


def test_outcomes_forget_past_their_window() -> None:
    t = [0.0]
    d = Outcomes(window_s=10.0, clock=lambda: t[0])
    assert d.rate() == 0.0
    d.record(bad=True)
    d.record(bad=False)
    assert d.rate() == 0.5
    t[0] = 11.0
    d.record(bad=False)
    assert d.rate() == 0.0


def test_the_policy_module_imports_only_the_standard_library() -> None:
    """Serve's controller unpickles the policy by value: what its module imports must import there too."""
    import ast
    import sys
    from pathlib import Path

    import serving.autoscale

    tree = ast.parse(Path(serving.autoscale.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names and names <= set(sys.stdlib_module_names) | {"__future__"}, names


@pytest.mark.parametrize("module", ["serving.router", "serving.autoscale"])
def test_the_modules_serve_loads_in_its_own_processes_do_not_import_torch(module: str) -> None:
    """Serve imports the router in every process that routes to the models (and wherever a config naming it is
    built) and the autoscaling policy in its controller: torch there costs seconds per process on a loaded
    node, for nothing these modules use."""
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:5])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", f"{module} imports torch: {out.stdout.strip()}"
