"""Work-aware routing for the model deployments: a Ray Serve request router (alpha API, Ray pinned in
pyproject.toml) that sends each request to the replica predicted to finish it soonest, or to give it the
best quality in time for steps "auto" (`serving.policy.routing`).

Serve builds one router per deployment handle, in the process that calls the handle (the Ingress), and
calls `choose_replicas` for each request. The ranking reads this process's `routing.BOARD`: the snapshots
the model replicas' answers carried back and the routing stats Serve's controller polls from each replica
(`ModelReplica.record_routing_stats`), with the requests this router sent since. The ranks go back to Serve,
which takes the first replica of the best rank whose queue has room (by queue length within a rank), and
backs off and tries again when none has. Calls that are not sampling requests (load, health) are routed by
queue length alone. Nothing here waits on stats: a replica without fresh ones is ranked as unknown.

Select it per deployment with `request_router_config: {request_router_class: serving.router:WorkAwareRouter}`
(deploy/serve-latent.yaml, serve-gpu.yaml, serve-cluster.yaml; not on an application's ingress deployment
behind HAProxy, which Ray 2.60 refuses, as in deploy/serve.yaml); remove that to get Serve's default (power of
two choices on queue length).
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from serving.policy import routing


class WorkAwareRouter(RequestRouter):
    """Ranks a model's replicas by the work a request costs on each (`serving.policy.routing.rank`)."""

    def initialize_state(self, stale_s: float = routing.STALE_S, **_: Any) -> None:
        self.stale_s = float(stale_s)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        work = _work(pending_request)
        if work is None or len(candidate_replicas) < 2:
            return [candidate_replicas]
        by_id = {r.actor_id.hex(): r for r in candidate_replicas}
        for r in candidate_replicas:
            routing.BOARD.observe_stats(r.routing_stats)
        snapshots, sent = routing.BOARD.view(list(by_id))
        ranks = routing.rank(list(by_id), snapshots, work, time.time(), sent, getattr(self, "stale_s", routing.STALE_S))
        return [[by_id[r] for r in rank] for rank in ranks]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        work = _work(pending_request)
        replica = self._replicas.get(replica_id)
        if work is None or replica is None:
            return
        now = time.time()
        evaluations = work.evaluations
        if work.candidates:  # what it will most likely run there: the candidate its snapshot would choose
            snapshots, sent = routing.BOARD.view([replica.actor_id.hex()])
            snapshot = snapshots.get(replica.actor_id.hex())
            fit = None if snapshot is None else routing.best_fit(snapshot, work.candidates, work.due or now, now)
            evaluations = fit[2] if fit else min(c.spec.evaluations for c in work.candidates)
        routing.BOARD.sent(replica.actor_id.hex(), work.rows, evaluations, work.due, now, work.samples)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        replica = self._replicas.get(replica_id)
        if replica is not None:
            routing.BOARD.forget(replica.actor_id.hex())
        super().on_replica_actor_died(replica_id)


def _work(pending_request: PendingRequest | None) -> routing.Work | None:
    if pending_request is None:
        return None
    return routing.work_of(pending_request.metadata.call_method, pending_request.args, pending_request.kwargs)
