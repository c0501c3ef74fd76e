"""Application metrics through `ray.serve.metrics`.

Ray's per-node metrics agent exports them in Prometheus format on the node's metrics export port
(`make serve`: http://127.0.0.1:8080/metrics), with the prefix `ray_` and the tags Serve adds
(deployment, replica, application); counters carry the suffix `_total`. Values from every replica
and node add up in Prometheus. The series (names as scraped):

    ray_stepserve_requests_total{model, sampler, status}    requests answered, by HTTP status code
    ray_stepserve_request_latency_seconds{model, sampler}   ingress receive -> response (histogram)
    ray_stepserve_queue_wait_seconds{model}                 engine queue wait (histogram)
    ray_stepserve_steps_total{model, sampler}               steps K of finished requests
    ray_stepserve_nfe_total{model, sampler}                 NFE of finished requests (API's nfe)
    ray_stepserve_net_rows_total{model}                     rows the net ran (num_samples x nfe)
    ray_stepserve_tick_rows{model}                          rows per engine tick (histogram)
    ray_stepserve_requests_in_flight{model}                 requests in the engine, per replica (gauge)
    ray_stepserve_rejections_total{model, reason}           requests refused (overloaded, deadline_impossible,
                                                            deadline_load) or timed out (timeout)
    ray_stepserve_auto_steps{model, sampler}                K chosen for steps "auto" requests (histogram)
    ray_stepserve_deadline_requests_total{model, outcome}   deadline requests finished, met or missed (at the
                                                            replica; the return hop is not counted)
    ray_stepserve_tick_model_seconds{model, term}           the replica's latency model: tick seconds =
                                                            fixed + per_row x rows (+ handoff for a tick
                                                            handed to the engine's thread; gauge, per replica)
    ray_stepserve_auth_requests_total{key_id, outcome}      requests seen by the API-key check (auth only)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ray.serve.metrics import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from serving.policy.tick_model import TickModel

LATENCY_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
ROWS_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
STEPS_BOUNDS = [1, 2, 3, 5, 8, 10, 15, 20, 30, 50, 100, 200, 500, 1000]
# A model replica's records wait at most this long and are then made together, off the request's path: one
# record costs 20-50 us in a replica, about 16 per lone K = 10 request (one per tick). Ray's metrics agent
# exports every few seconds, so scrapes do not see the delay.
FLUSH_S = 0.25


class IngressMetrics:
    """Recorded by the HTTP ingress, which sees every request, refused ones included."""

    def __init__(self) -> None:
        self.requests = Counter(
            "stepserve_requests",
            description="Sampling requests answered, by model, sampler and HTTP status.",
            tag_keys=("model", "sampler", "status"),
        )
        self.latency = Histogram(
            "stepserve_request_latency_seconds",
            description="Request latency at the ingress (receive to response), seconds.",
            boundaries=LATENCY_BOUNDS,
            tag_keys=("model", "sampler"),
        )

    def record(self, model: str, sampler: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"model": model, "sampler": sampler, "status": str(status)})
        if status == 200:
            self.latency.observe(seconds, tags={"model": model, "sampler": sampler})


class DoorMetrics:
    """Recorded by the HTTP ingress when it refuses a request at the door (`serving.api.door`)."""

    def __init__(self) -> None:
        self.refusals = Counter(
            "stepserve_door_refusals",
            description="Requests refused at the HTTP edge from the model replicas' load snapshots, without "
            "calling them, by model (their 503s are in stepserve_requests too).",
            tag_keys=("model",),
        )
        self.busy = Counter(
            "stepserve_busy_refusals",
            description="Sampling requests refused unread because the Ingress replica's event loop was running "
            "late (serving.api.door.LoopLag; their 503s are in stepserve_requests too, model unknown).",
        )

    def refused(self, model: str) -> None:
        self.refusals.inc(tags={"model": model})

    def refused_busy(self) -> None:
        self.busy.inc()


class ModelMetrics:
    """Recorded by a model replica's engine. Records are queued and made within FLUSH_S by a timer on the
    running event loop (at once when called outside one), in the order they were asked for."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._pending: list[tuple[Callable[..., Any], tuple, dict[str, Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.queue_wait = Histogram(
            "stepserve_queue_wait_seconds",
            description="Time a request waited in the engine before its first net call, seconds.",
            boundaries=LATENCY_BOUNDS,
            tag_keys=("model",),
        )
        self.steps = Counter(
            "stepserve_steps",
            description="Sampler steps K of finished requests.",
            tag_keys=("model", "sampler"),
        )
        self.nfe = Counter(
            "stepserve_nfe",
            description="Net evaluations per sample (the response's nfe) summed over finished requests.",
            tag_keys=("model", "sampler"),
        )
        self.net_rows = Counter(
            "stepserve_net_rows",
            description="Rows the net evaluated (num_samples x nfe).",
            tag_keys=("model",),
        )
        self.tick_rows = Histogram(
            "stepserve_tick_rows",
            description="Rows in one engine tick (one backend call).",
            boundaries=ROWS_BOUNDS,
            tag_keys=("model",),
        )
        self.in_flight = Gauge(
            "stepserve_requests_in_flight",
            description="Requests in this replica's engine (advancing or queued).",
            tag_keys=("model",),
        )
        self.rejections = Counter(
            "stepserve_rejections",
            description="Requests refused by the engine (overloaded: bounds full or predicted wait too long) "
            "or dropped past the request timeout (timeout).",
            tag_keys=("model", "reason"),
        )
        self.tick_model = Gauge(
            "stepserve_tick_model_seconds",
            description="This replica's latency model, tick seconds = fixed + per_row x rows (+ handoff for a "
            "tick handed to the engine's thread): its terms.",
            tag_keys=("model", "term"),
        )
        self.auto_steps = Histogram(
            "stepserve_auto_steps",
            description='Step budget K the replica chose for steps "auto" requests.',
            boundaries=STEPS_BOUNDS,
            tag_keys=("model", "sampler"),
        )
        self.calibration = Gauge(
            "stepserve_prediction_factor",
            description='What steps "auto" scales the engine\'s latency predictions by: a high quantile of recent '
            "deadline requests' actual over predicted engine time (1 until enough have finished).",
            tag_keys=("model",),
        )
        self.deadlines = Counter(
            "stepserve_deadline_requests",
            description="Requests with a deadline that finished, by whether the replica finished them in time.",
            tag_keys=("model", "outcome"),
        )
        for metric in (self.queue_wait, self.net_rows, self.tick_rows, self.in_flight, self.calibration):
            metric.set_default_tags({"model": model})
        # A gauge exists only once set: without this an idle replica (none served yet) has no series, and
        # dashboards show "no data" instead of 0.
        self.in_flight.set(0)
        self.calibration.set(1.0)

    def _later(self, record: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._pending.append((record, args, kwargs))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous caller): record now
            self.flush()
            return
        if self._timer is None or self._loop is not loop:  # a timer on another (ended) loop would never fire
            self._loop = loop
            self._timer = loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Make every queued record now."""
        self._timer = None
        pending, self._pending = self._pending, []
        for record, args, kwargs in pending:
            record(*args, **kwargs)

    def on_tick(self, rows: int) -> None:
        self._later(self.tick_rows.observe, rows)

    def finished(self, sampler: str, steps: int, nfe: int, num_samples: int, queue_s: float) -> None:
        tags = {"model": self.model, "sampler": sampler}
        self._later(self.steps.inc, steps, tags=tags)
        self._later(self.nfe.inc, nfe, tags=tags)
        self._later(self.net_rows.inc, nfe * num_samples)
        self._later(self.queue_wait.observe, queue_s)

    def chose(self, sampler: str, steps: int) -> None:
        self._later(self.auto_steps.observe, steps, tags={"model": self.model, "sampler": sampler})

    def deadline(self, met: bool) -> None:
        self._later(self.deadlines.inc, tags={"model": self.model, "outcome": "met" if met else "missed"})

    def rejected(self, reason: str) -> None:
        self._later(self.rejections.inc, tags={"model": self.model, "reason": reason})

    def set_in_flight(self, n: int) -> None:
        self._later(self.in_flight.set, n)

    def set_calibration(self, factor: float) -> None:
        self._later(self.calibration.set, factor)

    def set_tick_model(self, model: TickModel) -> None:
        for term, value in (("fixed", model.fixed_s), ("per_row", model.per_row_s), ("handoff", model.handoff_s)):
            self._later(self.tick_model.set, value, tags={"model": self.model, "term": term})


class AuthMetrics:
    """Recorded by the ingress's API-key check (serving.api.auth). Keys appear only as their ids (a sha256
    prefix); a request without a valid key is "none", so label sets stay bounded by the number of keys."""

    def __init__(self) -> None:
        self.requests = Counter(
            "stepserve_auth_requests",
            description="Requests seen by the API-key check, by key id and outcome "
            "(accepted, missing, invalid, rate, in_flight).",
            tag_keys=("key_id", "outcome"),
        )

    def record(self, key_id: str, outcome: str) -> None:
        self.requests.inc(tags={"key_id": key_id, "outcome": outcome})
