"""Work-aware routing (serving.router) on a real local Ray: two replicas of one model, requests through a
deployment handle whose router runs in this process (as it does in the Ingress). A replica holding one huge
request is avoided by the medium requests sent after it (FIFO engines, where it slows every tick), though by
request count (Serve's default) it holds fewer; the same request gives the same samples again; calls that are
not sampling requests still route."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from sampling.request import SampleSpec
from tests.serving.conftest import ServeCluster, app_args

pytestmark = pytest.mark.slow

# FIFO engines: every request joins every tick, so a medium request beside the huge one runs in its 2 048-row
# ticks and the prediction says so. (Under the default deadline policy a medium request is scheduled before
# the huge one, least work first, and may be predicted as fast there: then either replica is a good choice.)
ENGINE = {"max_wait_s": 300.0, "scheduling": "fifo"}
ROUTER = {"request_router_class": "serving.router:WorkAwareRouter", "request_routing_stats_period_s": 0.2}


def test_medium_requests_avoid_the_replica_with_a_huge_one(
    serve_cluster: ServeCluster, tiny_checkpoints: dict[str, Path]
) -> None:
    from ray import serve

    options = {
        "moons-fm": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}, "request_router_config": ROUTER},
        "Ingress": {"ray_actor_options": {"num_cpus": 0.25}},
    }
    args = app_args(tiny_checkpoints, models=("moons-fm",), engine=ENGINE, deployment_options=options)
    serve_cluster.deploy("routed", "/routed", args)
    handle = serve.get_deployment_handle("moons-fm", app_name="routed")
    try:
        # both replicas up and answering, each known to this process's router by its routing stats
        warm = [handle.sample.remote(SampleSpec("fm-euler", 2, 4, seed=s)).result(timeout_s=60) for s in range(6)]
        assert len({w.snapshot.replica for w in warm}) >= 1
        time.sleep(0.6)

        # one huge request: 2 048 rows (1 024 samples, guided) x 300 evaluations, seconds of ticks
        huge = handle.sample.remote(SampleSpec("fm-euler", 300, 1024, guidance=2.0, class_label=0, seed=1))
        time.sleep(0.5)  # it is running; the stats polled since show it

        async def medium() -> list:
            calls = [handle.sample.remote(SampleSpec("fm-euler", 50, 32, seed=100 + i)) for i in range(8)]
            return await asyncio.gather(*calls)

        outs = asyncio.run(medium())
        big = huge.result(timeout_s=120)
        assert big.samples.shape == (1024, 2)
        assert all(o.snapshot.replica != big.snapshot.replica for o in outs), (
            big.snapshot.replica,
            [o.snapshot.replica for o in outs],
        )
        # the same request again, whichever replica takes it, gives the same samples (across replicas this is
        # tests/deploy/test_cluster.py's scale-out check)
        again = handle.sample.remote(SampleSpec("fm-euler", 50, 32, seed=100)).result(timeout_s=60)
        np.testing.assert_array_equal(again.samples, outs[0].samples)
        # a call that is not a sampling request routes by queue length alone
        assert handle.load.remote().result(timeout_s=30)["in_flight"] >= 0
    finally:
        serve_cluster.delete("routed")
