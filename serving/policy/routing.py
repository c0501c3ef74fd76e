"""Which replica of a model a request should go to, by the work it costs there (`serving.router` asks this).

A replica's load reaches a router in its process two ways: the `admission.Snapshot` every answer carries back
(observed by the process's `serving.api.door.Door`s, the freshest) and the one Serve's controller polls from
each replica as its routing stats (`ModelReplica.record_routing_stats`, every request_routing_stats_period_s;
what a replica that has not answered this process yet is known by). The `BOARD` keeps the newest of either
per replica and the requests routed there since it was taken, which `rank` queues behind that load.

`rank` orders the replicas by what their snapshots predict for this request: a fixed-steps request by whether
that engine would refuse it, whether it would miss its deadline, then its predicted latency there; a
steps-"auto" request by the best quality predicted to finish in time there (its K is the replica's choice),
then by that candidate's latency. Replicas whose predictions are within TIE_S or TIE_FRACTION of each other
share a rank (Serve takes the one with the shorter queue). A replica whose snapshot is older than STALE_S, or
that has none (new, idle for long, or stopped answering), is unknown: it shares the first rank with the best
known replica (the router then takes whichever of them has the shorter queue, so a new replica gets work at
once and a dead one is skipped by the queue probe), or goes first when every known replica would refuse the
request or miss its deadline. Nothing here waits: with no snapshots at all the ranking is one rank of every
replica, which is Serve's own choice by queue length.
"""

from __future__ import annotations

import math
import pickle
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serving.policy.admission import Snapshot
from serving.policy.state import RequestState
from serving.policy.step_budget import Candidate

STALE_S = 2.0  # a snapshot older than this is not ranked on (the replica is unknown)
MAX_SENT = 1024  # requests remembered per replica as routed since its snapshot
TIE_S, TIE_FRACTION = 0.002, 0.1  # predictions this close are a tie: Serve's queue length picks among them


@dataclass(frozen=True)
class Work:
    """What a request costs a replica: rows per evaluation, net evaluations (fixed steps; 0 for steps "auto"),
    its deadline (unix time) or None, for steps "auto" its candidates, and its samples (what a decode stage
    decodes)."""

    rows: int
    evaluations: int
    due: float | None
    candidates: tuple[Candidate, ...] = ()
    samples: int = 0


def work_of(method: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Work | None:
    """The work of a call to a model replica's `method` with these arguments (`serving.replica.ModelReplica`:
    sample(spec, deadline_at), sample_stream(spec, preview_every), sample_auto(candidates, deadline_at)); None
    for any other method (load, health) or arguments not of that form."""
    try:
        if method in ("sample", "sample_stream"):
            spec = args[0] if args else kwargs["spec"]
            due = kwargs.get("deadline_at", args[1] if len(args) > 1 and method == "sample" else None)
            due = None if due is None else float(due)
            return Work(int(spec.rows), int(spec.evaluations), due, samples=int(spec.num_samples))
        if method == "sample_auto":
            candidates = tuple(args[0] if args else kwargs["candidates"])
            due = float(args[1] if len(args) > 1 else kwargs["deadline_at"])
            rows, samples = (candidates[0].spec.rows, candidates[0].spec.num_samples) if candidates else (0, 0)
            return Work(int(rows), 0, due, candidates, int(samples))
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    return None


def state(rows: int, evaluations: int, due: float | None, snapshot: Snapshot, samples: int = 0) -> RequestState:
    """A request as the snapshot's engine would hold it (its deadline relative to when it was taken; the decode
    of its `samples` images where the replica has a decode stage)."""
    deadline = None if due is None else due - snapshot.taken_at
    return RequestState(rows, evaluations, deadline, seq=1 << 61, decode_s=snapshot.decode_s(samples))


def best_fit(
    snapshot: Snapshot, candidates: Sequence[Candidate], due: float, now: float, sent: Sequence[RequestState] = ()
) -> tuple[float, float, int] | None:
    """On this snapshot's load (with `sent` queued behind it), the best candidate predicted to finish by unix time
    `due` from `now`: (quality, predicted seconds, its evaluations); None when none would. A request's finish
    grows with its evaluations (more ticks on the same load), so the most evaluations that fit are found by
    bisection over the candidates' distinct counts: a handful of predictions, not one per candidate."""
    if not candidates:
        return None
    rows, samples = candidates[0].spec.rows, candidates[0].spec.num_samples
    counts = sorted({c.spec.evaluations for c in candidates})
    cache: dict[int, float] = {}

    def seconds(evaluations: int) -> float:
        if evaluations not in cache:
            request = state(rows, evaluations, due, snapshot, samples)
            cache[evaluations] = snapshot.latency_s(request, now, sent)
        return cache[evaluations]

    lo, hi = 0, len(counts)  # counts[:lo] fit; counts[hi:] do not
    while lo < hi:
        mid = (lo + hi) // 2
        if now + seconds(counts[mid]) <= due:
            lo = mid + 1
        else:
            hi = mid
    if lo == 0:
        return None
    fits = [c for c in candidates if c.spec.evaluations <= counts[lo - 1]]
    top = max(fits, key=lambda c: (c.quality, -c.spec.evaluations))
    return top.quality, seconds(top.spec.evaluations), top.spec.evaluations


@dataclass(frozen=True)
class Score:
    """A replica's promise for one request; lower `key` is better. `bad`: it would refuse the request or miss
    its deadline (an unknown replica is tried first then); `evaluations`: what the request is expected to run
    there (for steps "auto", the candidate it would likely choose)."""

    key: tuple[float, ...]
    bad: bool
    evaluations: int


def score(snapshot: Snapshot, work: Work, now: float, sent: Sequence[RequestState] = ()) -> Score:
    """What `snapshot`'s replica promises `work` at unix time `now` (see the module's docstring)."""
    if work.candidates:
        assert work.due is not None
        fit = best_fit(snapshot, work.candidates, work.due, now, sent)
        if fit is None:
            return Score((1.0, 0.0, math.inf), True, min(c.spec.evaluations for c in work.candidates))
        quality, seconds, evaluations = fit
        return Score((0.0, -quality, seconds), False, evaluations)
    request = state(work.rows, work.evaluations, work.due, snapshot, work.samples)
    refused = snapshot.refusal(request, now, sent) is not None
    latency = snapshot.latency_s(request, now, sent)
    late = work.due is not None and now + latency > work.due
    return Score((float(refused), float(late), latency), refused or late, work.evaluations)


def rank(
    replicas: Sequence[str],
    snapshots: dict[str, Snapshot],
    work: Work,
    now: float,
    sent: dict[str, list[RequestState]] | None = None,
    stale_s: float = STALE_S,
) -> list[list[str]]:
    """`replicas` in ranks, best first (see the module's docstring); `snapshots` and `sent` by replica id."""
    sent = sent or {}
    known: list[tuple[Score, int, str]] = []
    unknown: list[str] = []
    for i, r in enumerate(replicas):
        s = snapshots.get(r)
        if s is None or now - s.taken_at > stale_s:
            unknown.append(r)
        else:
            known.append((score(s, work, now, sent.get(r, ())), i, r))
    if not known:
        return [list(replicas)] if replicas else []
    known.sort(key=lambda k: (k[0].key, k[1]))
    ranks: list[list[str]] = []
    lead: tuple[float, ...] = ()
    for sc, _, r in known:
        if ranks and _tie(lead, sc.key):
            ranks[-1].append(r)
        else:
            ranks.append([r])
            lead = sc.key
    if unknown:
        if known[0][0].bad:
            ranks.insert(0, unknown)
        else:
            ranks[0].extend(unknown)
    return ranks


def _tie(best: tuple[float, ...], other: tuple[float, ...]) -> bool:
    """Whether two promises are the same but for a predicted time within TIE_S or TIE_FRACTION of it."""
    if best[:-1] != other[:-1]:
        return False
    a, b = best[-1], other[-1]
    return math.isinf(a) and math.isinf(b) or abs(b - a) <= max(TIE_S, TIE_FRACTION * min(a, b))


class Board:
    """Per replica id: the newest snapshot heard (from an answer or the controller's routing stats) and the
    requests routed to it since, (unix time, rows, evaluations, due, samples). Shared by the threads of one
    process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshots: dict[str, Snapshot] = {}
        self._sent: dict[str, deque[tuple[float, int, int, float | None, int]]] = {}
        self._decoded: dict[str, tuple[float, Snapshot]] = {}

    def observe(self, snapshot: Snapshot | None) -> None:
        if snapshot is None:
            return
        with self._lock:
            known = self._snapshots.get(snapshot.replica)
            if known is None or snapshot.taken_at > known.taken_at:
                self._snapshots[snapshot.replica] = snapshot
                sent = self._sent.get(snapshot.replica)
                while sent and sent[0][0] <= snapshot.taken_at:  # in this snapshot by now, or done
                    sent.popleft()

    def observe_stats(self, stats: dict[str, Any] | None) -> None:
        """A replica's routing stats (`routing_stats`): its pickled snapshot, unpickled once per snapshot."""
        if not stats or "snapshot" not in stats:
            return
        replica, taken_at = stats.get("replica"), stats.get("taken_at")
        cached = self._decoded.get(replica) if isinstance(replica, str) else None
        if cached is not None and cached[0] == taken_at:
            return
        try:
            snapshot = pickle.loads(stats["snapshot"])
        except Exception:  # a replica of another version: route without it
            return
        if isinstance(snapshot, Snapshot):
            self._decoded[snapshot.replica] = (snapshot.taken_at, snapshot)
            self.observe(snapshot)

    def sent(self, replica: str, rows: int, evaluations: int, due: float | None, now: float, samples: int = 0) -> None:
        with self._lock:
            self._sent.setdefault(replica, deque(maxlen=MAX_SENT)).append((now, rows, evaluations, due, samples))

    def view(self, replicas: Sequence[str]) -> tuple[dict[str, Snapshot], dict[str, list[RequestState]]]:
        """The newest snapshot of each of `replicas` that has one, and the requests routed to each since."""
        with self._lock:
            snapshots = {r: self._snapshots[r] for r in replicas if r in self._snapshots}
            sent = {
                r: [state(rows, e, due, s, n) for t, rows, e, due, n in self._sent.get(r, ()) if t > s.taken_at]
                for r, s in snapshots.items()
            }
        return snapshots, sent

    def forget(self, replica: str) -> None:
        with self._lock:
            self._snapshots.pop(replica, None)
            self._sent.pop(replica, None)
            self._decoded.pop(replica, None)


BOARD = Board()  # this process's: the Doors observe into it, the routers (serving.router) read it
