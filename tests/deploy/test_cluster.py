"""Cluster mode for real: a Ray head and two more Ray nodes on this machine (separate raylets, own ports, temp
dirs and custom resources), the application deployed with Ray's `serve deploy` from deploy/serve-cluster.yaml,
served over HTTP; scale-out of one model over two nodes; a worker node lost under steady load.

The tests of this module run in order on one cluster (module fixture) and report what they measure on stdout
(`pytest -s tests/deploy/test_cluster.py` shows it): per-replica request counts, 1 vs 2 replica throughput,
failed requests and their statuses, and time to recovery after the node loss. With STEPSERVE_CLUSTER_REPORT set
to a path, the same numbers are written there as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.localcluster import ROOT, LocalRayCluster, free_ports

pytestmark = pytest.mark.slow

CONFIG = ROOT / "deploy" / "serve-cluster.yaml"
MODELS = ("moons-ddpm", "moons-fm", "digits-ddpm", "digits-fm")
SCALE_MODEL = "moons-fm"  # 2 replicas, at most one per node (deploy/serve-cluster.yaml)
WORKERS = ("worker-1", "worker-2")
# Faster than Ray's defaults so the test sees a lost node within seconds: the GCS declares a raylet dead after
# 3 missed 1 s health checks; metrics reach each node's Prometheus port every second.
SYSTEM_CONFIG = {
    "metrics_report_interval_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}
REQUEST = {
    "moons-ddpm": {"sampler": "ddim", "steps": 10, "num_samples": 16},
    "moons-fm": {"sampler": "fm-euler", "steps": 10, "num_samples": 16},
    "digits-ddpm": {"sampler": "ddim", "steps": 10, "num_samples": 4},
    "digits-fm": {"sampler": "fm-euler", "steps": 10, "num_samples": 4},
}
REPORT: dict[str, Any] = {}


def report(key: str, value: Any) -> None:
    REPORT[key] = value
    print(f"\n[cluster] {key}: {json.dumps(value, indent=1, sort_keys=True)}")
    path = os.environ.get("STEPSERVE_CLUSTER_REPORT")
    if path:
        Path(path).write_text(json.dumps(REPORT, indent=1, sort_keys=True))


def cluster_config(http_port: int, moons_fm_replicas: int = 2) -> dict[str, Any]:
    """deploy/serve-cluster.yaml with this test's HTTP port, the committed models by absolute path and the
    scale-out model's replica count."""
    config = yaml.safe_load(CONFIG.read_text())
    config["http_options"]["port"] = http_port
    (app,) = config["applications"]
    app["args"]["models_dir"] = str(ROOT / "models")
    for d in app["deployments"]:
        if d["name"] == SCALE_MODEL:
            d["num_replicas"] = moons_fm_replicas
    return config


@dataclass
class Served:
    cluster: LocalRayCluster
    base: str
    http_port: int
    work: Path

    def deploy(self, moons_fm_replicas: int) -> None:
        path = self.work / f"serve-cluster-{moons_fm_replicas}.yaml"
        path.write_text(yaml.safe_dump(cluster_config(self.http_port, moons_fm_replicas), sort_keys=False))
        self.cluster.serve("deploy", str(path))
        self.wait_running({SCALE_MODEL: moons_fm_replicas})

    def wait_running(self, replicas: dict[str, int], timeout_s: float = 300) -> dict[str, Any]:
        """Until the app is RUNNING with these RUNNING replica counts (Ingress 2 as in the config, others 1)
        and /healthz answers 200."""
        want = {m: replicas.get(m, 2 if m == "Ingress" else 1) for m in (*MODELS, "Ingress")}
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            self.cluster.check_alive()
            try:
                status = self.cluster.serve_status()
                app = (status.get("applications") or {}).get("stepserve") or {}
                deployments = app.get("deployments") or {}
                got = {m: (deployments.get(m) or {}).get("replica_states", {}).get("RUNNING", 0) for m in want}
                last = (app.get("status"), got)
                healthy = app.get("status") == "RUNNING" and got == want
                if healthy and httpx.get(f"{self.base}/healthz", timeout=10).status_code == 200:
                    return status
            except (httpx.HTTPError, RuntimeError) as e:
                last = e
            time.sleep(1)
        raise TimeoutError(f"application not RUNNING with replicas {want} after {timeout_s:.0f} s (last: {last})")


@pytest.fixture(scope="module")
def served() -> Served:
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("Ray's `ray` CLI is not installed next to this Python (install the project: make install)")
    # Unix socket paths under the temp dir must stay short (about 100 characters), hence /tmp and a short name.
    work = Path(tempfile.mkdtemp(prefix="ssc-", dir="/tmp"))
    cluster = LocalRayCluster(work)
    (http_port,) = free_ports(1)
    try:
        t0 = time.monotonic()
        cluster.start_head({"head_node": 1}, num_cpus=2, system_config=SYSTEM_CONFIG)
        cluster.wait_nodes({"head"})
        for w in WORKERS:  # one at a time: less for a busy machine to start at once
            cluster.add_node_and_wait(w, {"worker_node": 1}, num_cpus=2)
        t1 = time.monotonic()
        s = Served(cluster, f"http://127.0.0.1:{http_port}", http_port, work)
        s.deploy(moons_fm_replicas=2)
        report(
            "startup_s",
            {"three_nodes_alive": round(t1 - t0, 1), "serve_deploy_to_healthy": round(time.monotonic() - t1, 1)},
        )
        yield s
    finally:
        left = cluster.stop(grace_s=3)
        if not left:
            shutil.rmtree(work, ignore_errors=True)
        assert not left, f"Ray processes left behind (logs in {work}): {left}"


def sample(base: str, model: str, seed: int, timeout: float = 60, **overrides: Any) -> httpx.Response:
    body = {"model": model, **REQUEST[model], "seed": seed, **overrides}
    return httpx.post(f"{base}/v1/samples", json=body, timeout=timeout)


# --- per-replica metrics from each node's Prometheus port ------------------------------------------------------

SERIES = re.compile(r"^ray_serve_deployment_request_counter_total\{([^}]*)\}\s+([0-9.eE+-]+)$", re.M)


def replica_requests(cluster: LocalRayCluster, deployment: str) -> dict[tuple[str, str], float]:
    """(node name, replica id) -> requests the replica has handled, scraped from every live node's metrics port."""
    out: dict[tuple[str, str], float] = {}
    for node in cluster.nodes:
        if node.lost:
            continue
        text = httpx.get(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10).text
        for labels, value in SERIES.findall(text):
            tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if tags.get("deployment") == deployment and tags.get("application") == "stepserve":
                key = (node.name, tags.get("replica", "?"))
                out[key] = out.get(key, 0.0) + float(value)
    return out


def metrics_delta(before: dict, after: dict) -> dict[str, float]:
    return {f"{n}/{r}": after[(n, r)] - before.get((n, r), 0.0) for (n, r) in after}


def settle_metrics(cluster: LocalRayCluster, deployment: str, timeout_s: float = 15) -> dict:
    """Scrape until two reads a report interval apart agree (the last requests have been exported)."""
    prev = replica_requests(cluster, deployment)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(2.5)
        cur = replica_requests(cluster, deployment)
        if cur == prev:
            return cur
        prev = cur
    return prev


# --- a closed-loop load generator (asyncio in a thread) -----------------------------------------------------------


@dataclass
class Outcome:
    model: str
    sent: float
    done: float
    status: int | str  # HTTP status, or the exception's name when no response came
    detail: str = ""


@dataclass
class Load:
    base: str
    clients: list[tuple[str, dict[str, Any]]]  # (model, request overrides) per client
    timeout_s: float = 90.0
    pause_s: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=self.timeout_s + 30)
        assert not self._thread.is_alive(), "the load generator did not stop"
        return self.outcomes

    async def _client(self, c: httpx.AsyncClient, i: int, model: str, overrides: dict[str, Any]) -> None:
        seed = 1000 * i
        while not self._stop.is_set():
            seed += 1
            body = {"model": model, **REQUEST[model], "seed": seed, **overrides}
            t0 = time.monotonic()
            try:
                r = await c.post(f"{self.base}/v1/samples", json=body, timeout=self.timeout_s)
                out = Outcome(model, t0, time.monotonic(), r.status_code, "" if r.status_code == 200 else r.text[:300])
            except httpx.HTTPError as e:
                out = Outcome(model, t0, time.monotonic(), type(e).__name__, str(e)[:300])
            self.outcomes.append(out)
            if self.pause_s:
                await asyncio.sleep(self.pause_s)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=len(self.clients) + 4)
        async with httpx.AsyncClient(limits=limits) as c:
            await asyncio.gather(*(self._client(c, i, m, o) for i, (m, o) in enumerate(self.clients)))


# --- the tests, in order -----------------------------------------------------------------------------------------


def test_cluster_serves_from_config(served: Served) -> None:
    """`serve deploy` of deploy/serve-cluster.yaml: model replicas on the worker nodes only (by custom resources),
    the ingress on the head, the scale-out model on both workers, the work-aware router on every model; every
    model answers over HTTP."""
    placement = served.cluster.replica_nodes()
    report("placement", placement)
    assert set(placement["Ingress"]) == {"head"} and len(placement["Ingress"]) == 2  # both Ingress replicas on the head
    for m in MODELS:
        assert placement[m] and set(placement[m]) <= set(WORKERS), f"{m} replicas must sit on worker nodes: {placement}"
    assert placement[SCALE_MODEL] == sorted(WORKERS)
    for m in MODELS:
        r = sample(served.base, m, seed=7)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == m and body["shape"][0] == REQUEST[m]["num_samples"]
    models = httpx.get(f"{served.base}/v1/models", timeout=10).json()["models"]
    assert sorted(x["id"] for x in models) == sorted(MODELS)
    # every model deployment as deployed routes through the work-aware router (the config's request_router_config)
    deployed = served.cluster.api("/api/serve/applications/")["applications"]["stepserve"]["deployments"]
    routers = {m: deployed[m]["deployment_config"].get("request_router_config") or {} for m in MODELS}
    classes = {m: str(r.get("request_router_class", "")).replace(":", ".") for m, r in routers.items()}
    assert set(classes.values()) == {"serving.router.WorkAwareRouter"}, routers


def test_scale_out_spreads_and_stays_deterministic(served: Served) -> None:
    """Two replicas of one model on two nodes: concurrent requests reach both (per-replica metrics on each node's
    Prometheus port) and a seeded request gives the same samples whichever replica answers. Each of the two
    Ingress replicas routes through its own work-aware router (deploy/serve-cluster.yaml), which knows only the
    requests it sent itself and snapshots a second old, so a burst may still go to one replica; bursts repeat
    (at most 5) until both replicas have served some of them."""
    cluster = served.cluster
    before = settle_metrics(cluster, SCALE_MODEL)
    body = {"model": SCALE_MODEL, "sampler": "fm-euler", "steps": 20, "num_samples": 256, "seed": 1234}
    n = 24

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(*(c.post(f"{served.base}/v1/samples", json=body) for _ in range(n)))

    responses: list[httpx.Response] = []
    by_node: Counter = Counter()
    bursts = 0
    while bursts < 5:
        bursts += 1
        responses += asyncio.run(burst())
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        delta = metrics_delta(before, settle_metrics(cluster, SCALE_MODEL))
        by_node = Counter()
        for key, v in delta.items():
            by_node[key.split("/")[0]] += v
        if all(by_node[w] > 0 for w in WORKERS):
            break
    report("scale_out_same_seed_requests_by_replica", {"bursts": bursts, "requests": len(responses), **delta})
    assert sum(delta.values()) >= len(responses), f"replica counters missed requests: {delta}"
    assert all(by_node[w] > 0 for w in WORKERS), f"requests did not reach both nodes' replicas: {delta}"
    first = responses[0].json()["samples"]
    assert all(r.json()["samples"] == first for r in responses), "same seed, different samples across replicas"


def _throughput(served: Served, window_s: float, concurrency: int) -> dict[str, float]:
    heavy = {"steps": 32, "num_samples": 512}
    load = Load(served.base, [(SCALE_MODEL, heavy)] * concurrency).start()
    time.sleep(1.5)  # warm-up, not counted
    t0 = time.monotonic()
    time.sleep(window_s)
    t1 = time.monotonic()
    outcomes = load.stop()
    done = [o for o in outcomes if t0 <= o.done <= t1]
    bad = [o for o in outcomes if o.status != 200]
    assert not bad, f"requests failed during the throughput run: {Counter(o.status for o in bad)} {bad[:2]}"
    return {
        "requests_per_s": len(done) / (t1 - t0),
        "samples_per_s": len(done) * heavy["num_samples"] / (t1 - t0),
        "median_latency_ms": 1e3 * statistics.median(o.done - o.sent for o in done) if done else float("nan"),
    }


def test_serve_deploy_changes_the_replica_count(served: Served) -> None:
    """`serve deploy` of the same config with `num_replicas` changed takes the scale-out model down to one replica
    on one worker and back to two, one on each worker; a seeded request gives the same samples at every count.

    With STEPSERVE_CLUSTER_THROUGHPUT_ROUNDS=n (n >= 1) it also measures closed-loop throughput, 2 replicas on two
    nodes (B) against 1 (A), side by side: B A B for n = 1, B A B A B for n = 2, and so on; medians. All nodes
    share this machine's cores, so the gain is bounded by them (2 cores: under 2x, since the proxy, ingress, load
    generator and Ray's own processes share those cores). A measurement, not a verdict: off in `make test`."""
    rounds = int(os.environ.get("STEPSERVE_CLUSTER_THROUGHPUT_ROUNDS", "0"))
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    reference = sample(served.base, SCALE_MODEL, seed=11)
    assert reference.status_code == 200, reference.text
    current = 2
    for replicas in [2, 1] * max(rounds, 1) + [2]:
        if replicas != current:
            served.deploy(moons_fm_replicas=replicas)
            current = replicas
            placement = served.cluster.replica_nodes()[SCALE_MODEL]
            assert len(placement) == replicas and set(placement) <= set(WORKERS), placement
            again = sample(served.base, SCALE_MODEL, seed=11)
            assert again.status_code == 200 and again.json()["samples"] == reference.json()["samples"]
        if rounds:
            runs[replicas].append(_throughput(served, window_s=6.0, concurrency=6))
    assert served.cluster.replica_nodes()[SCALE_MODEL] == sorted(WORKERS)
    if rounds:
        med = {r: statistics.median(x["samples_per_s"] for x in runs[r]) for r in runs}
        report(
            "throughput_moons_fm_fm_euler_K32_N512_concurrency6",
            {
                "order": "B A " * rounds + "B (B = 2 replicas, A = 1)",
                "runs": {f"{r}_replica(s)": runs[r] for r in runs},
                "median_samples_per_s": {f"{r}_replica(s)": med[r] for r in med},
                "ratio_2_over_1": med[2] / med[1],
                "cores": os.cpu_count(),
            },
        )


NODE_LOSS: dict[str, Any] = {}


def test_node_loss_under_load(served: Served) -> None:
    """Under steady load on every model, one worker node is killed (SIGKILL to every process of the node): Serve
    starts the replicas it held on the remaining worker node and every model answers again. Counts the failed
    requests by status and measures time to recovery per model (kill -> first success of a request sent after
    the kill)."""
    cluster = served.cluster
    placement = cluster.replica_nodes()
    singles = Counter(placement[m][0] for m in MODELS if m != SCALE_MODEL)
    victim = max(WORKERS, key=lambda w: singles[w])  # the worker holding most single-replica models
    survivor = next(w for w in WORKERS if w != victim)
    clients = [(SCALE_MODEL, {})] * 3 + [(m, {}) for m in MODELS if m != SCALE_MODEL]
    load = Load(served.base, clients, timeout_s=120, pause_s=0.05).start()
    time.sleep(4)
    kill_t = cluster.kill_node(victim)
    recovered_at: dict[str, float] = {}
    deadline = kill_t + 150
    while time.monotonic() < deadline and len(recovered_at) < len(MODELS):
        for o in list(load.outcomes):
            if o.status == 200 and o.sent > kill_t and o.model not in recovered_at:
                recovered_at[o.model] = o.done
        time.sleep(0.5)
    steady_from = (max(recovered_at.values()) if recovered_at else time.monotonic()) + 2
    time.sleep(max(0.0, steady_from + 4 - time.monotonic()))  # steady traffic after recovery, checked below
    outcomes = load.stop()

    lost_models = sorted(m for m in MODELS if victim in placement[m])
    failed = [o for o in outcomes if o.status != 200]
    per_model = {}
    for m in MODELS:
        mine = [o for o in outcomes if o.model == m]
        during = [o for o in mine if o.done >= kill_t]
        per_model[m] = {
            "replicas_on_lost_node": placement[m].count(victim),
            "requests": len(mine),
            "statuses": dict(Counter(str(o.status) for o in mine)),
            "recovery_s": round(recovered_at[m] - kill_t, 2) if m in recovered_at else None,
            "max_latency_after_kill_s": round(max((o.done - o.sent for o in during), default=0.0), 2),
        }
    NODE_LOSS.update(per_model=per_model, failed=failed, victim=victim)
    report(
        "node_loss",
        {
            "lost_node": victim,
            "placement_before": placement,
            "placement_after": cluster.replica_nodes(),
            "models_with_a_replica_on_lost_node": lost_models,
            "failed_requests": len(failed),
            "failed_statuses": dict(Counter(str(o.status) for o in failed)),
            "failed_details": sorted({f"{o.model}: {o.status} {o.detail[:160]}" for o in failed}),
            "failed_sent_at_s_after_kill": [round(o.sent - kill_t, 2) for o in failed],
            "recovery_s_service": round(max(recovered_at.values()) - kill_t, 2) if recovered_at else None,
            "per_model": per_model,
        },
    )
    assert set(recovered_at) == set(MODELS), f"models not answering 150 s after the node loss: {per_model}"
    # The HTTP entry point lives on the head: the node loss never costs a connection, and nothing is a 500.
    transport = [o for o in failed if not isinstance(o.status, int)]
    assert not transport, f"requests without an HTTP answer: {transport[:3]}"
    assert all(o.status == 503 for o in failed), f"non-503 failures: {Counter(o.status for o in failed)}"
    assert all("unavailable" in o.detail for o in failed), [o.detail for o in failed][:3]
    # Failures only come from the outage (requests on a replica that died, or routed to it before Ray declared
    # the node dead); from 2 s after every model answered again, steady traffic has none.
    steady = [o for o in outcomes if o.sent >= steady_from]
    assert len(steady) >= 10 and all(o.status == 200 for o in steady), Counter(str(o.status) for o in steady)
    # Serve placed every replica of the lost node on the surviving worker (the scale-out model's second replica
    # may not: at most one of its replicas per node, so it waits for a node to join).
    after = cluster.replica_nodes()
    for m in MODELS:
        assert after[m] == [survivor], f"{m}: {after}"
    for m in MODELS:
        r = sample(served.base, m, seed=3)
        assert r.status_code == 200, r.text


def test_node_loss_no_5xx_while_another_replica_lives(served: Served) -> None:
    """The contract: no request answered 5xx except ones whose retry also failed. The scale-out model kept a live
    replica on the surviving node throughout, so a retry of any of its requests could succeed."""
    assert NODE_LOSS, "test_node_loss_under_load must run first"
    failed = [o for o in NODE_LOSS["failed"] if o.model == SCALE_MODEL]
    assert not failed, f"{len(failed)} {SCALE_MODEL} request(s) answered {Counter(o.status for o in failed)}"


def test_stop_leaves_no_ray_behind(served: Served) -> None:
    """Stopping signals only the process groups this test started (never `ray stop`); none of their processes
    remain, and the head's GCS port is closed."""
    cluster = served.cluster
    pids = [n.proc.pid for n in cluster.nodes]
    left = cluster.stop(grace_s=3)
    assert not left, f"Ray processes left behind: {left}"
    assert all(n.proc.poll() is not None for n in cluster.nodes), pids
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{served.base}/healthz", timeout=3)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", cluster.gcs_port), timeout=3):
        pass
