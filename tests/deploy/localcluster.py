"""A real multi-node Ray cluster on this machine, for tests: one `ray start --head` and more `ray start --address`
nodes, each a separate raylet with its own ports, temp dir and custom resources.

Every node is a `ray start --block` process started in a new session, so the node's GCS / raylet / workers /
agents all carry that session id (Ray's worker processes may get process groups of their own, not a session):
the node is stopped, or killed to simulate losing the machine, by signalling exactly the processes of that
session, found by id in /proc. Nothing here runs `ray stop` (which would stop every Ray on the machine).

Token authentication is on (RAY_AUTH_MODE=token) with a token made for this cluster and kept in its root
directory (RAY_AUTH_TOKEN_PATH), never in ~/.ray; every CLI this helper runs (`serve deploy`, `serve status`)
gets the same two variables, and the dashboard's REST API is called with `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    temp_dir: Path
    log: Path
    metrics_port: int
    resources: dict[str, float]
    lost: bool = False  # killed on purpose (node loss): its exit is expected

    @property
    def sid(self) -> int:
        return self.proc.pid  # started with start_new_session: the session id is its pid


@dataclass
class LocalRayCluster:
    root: Path
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0
    token: str = ""

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(32)
        self.token_path = self.root / "auth_token"
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)

    # --- environment ---------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment of every Ray process and CLI of this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            RAY_USAGE_STATS_ENABLED="0",
            RAY_DEDUP_LOGS="0",
        )
        env.pop("RAY_AUTH_TOKEN", None)
        return env

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # --- nodes ---------------------------------------------------------------------------------------

    def _start(self, name: str, args: list[str], resources: dict[str, float], num_cpus: float) -> Node:
        temp_dir = self.root / name
        temp_dir.mkdir(parents=True, exist_ok=True)
        agent_http, agent_grpc, runtime_env, metrics = free_ports(4)
        cmd = [
            str(BIN / "ray"),
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--node-name={name}",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}",
            "--object-store-memory=200000000",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--metrics-export-port={metrics}",
            "--node-manager-port=0",
            "--object-manager-port=0",
            "--min-worker-port=0",  # 0: the OS picks each worker's port, so two raylets never share a range
            "--max-worker-port=0",
            "--disable-usage-stats",
            *args,
        ]
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env(), cwd=ROOT, start_new_session=True
            )
        node = Node(name, proc, temp_dir, log, metrics, resources)
        self.nodes.append(node)
        return node

    def start_head(self, resources: dict[str, float], num_cpus: float = 2, system_config: dict | None = None) -> Node:
        self.gcs_port, self.dashboard_port, client_port = free_ports(3)
        args = [
            "--head",
            f"--port={self.gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={client_port}",
        ]
        if system_config:
            args.append(f"--system-config={json.dumps(system_config)}")
        return self._start("head", args, resources, num_cpus)

    def add_node(self, name: str, resources: dict[str, float], num_cpus: float = 2) -> Node:
        assert self.gcs_port, "start the head first"
        return self._start(name, [f"--address=127.0.0.1:{self.gcs_port}"], resources, num_cpus)

    def add_node_and_wait(self, name: str, resources: dict[str, float], num_cpus: float = 2, tries: int = 2) -> Node:
        """add_node, then wait until the GCS sees it alive. `ray start` gives up when its raylet has not
        registered within 30 s (fixed in Ray), which a busy 2-core machine can exceed: then once more."""
        for attempt in range(1, tries + 1):
            node = self.add_node(name, resources, num_cpus)
            try:
                self.wait_nodes({n.name for n in self.nodes if not n.lost})
                return node
            except RuntimeError:
                if attempt == tries or node.proc.poll() is None:
                    raise
                node.lost = True  # its session is still signalled by stop()
                _signal_session(node.sid, signal.SIGKILL)
        raise AssertionError("unreachable")

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name and not n.lost)

    # --- the dashboard's REST API (state API) ---------------------------------------------------------

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(
            f"{self.dashboard_url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=20,
        )
        r.raise_for_status()
        return r.json()

    def alive_nodes(self) -> dict[str, str]:
        """node_id -> node name of the nodes the GCS sees alive."""
        data = self.api("/api/v0/nodes", limit=100, detail="true")["data"]["result"]["result"]
        return {n["node_id"]: n["node_name"] for n in data if n["state"] == "ALIVE"}

    def wait_nodes(self, names: set[str], timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                last = set(self.alive_nodes().values())
                if last == names:
                    return
            except httpx.HTTPError as e:
                last = e
            time.sleep(1)
        raise TimeoutError(f"nodes {sorted(names)} not all alive after {timeout_s:.0f} s (last seen: {last})")

    def check_alive(self) -> None:
        for n in self.nodes:
            if n.proc.poll() is not None and not n.lost:
                tail = n.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"ray node {n.name} exited with {n.proc.returncode}; its log ends:\n{tail}")

    def replica_nodes(self) -> dict[str, list[str]]:
        """Serve deployment -> the node names of its live replicas (from the actor table)."""
        nodes = self.alive_nodes()
        actors = self.api(
            "/api/v0/actors",
            limit=1000,
            detail="true",
            filter_keys="state",
            filter_predicates="=",
            filter_values="ALIVE",
        )["data"]["result"]["result"]
        out: dict[str, list[str]] = {}
        for a in actors:
            name = a.get("name") or ""
            if name.startswith("SERVE_REPLICA::"):
                deployment = name.split("#")[1]
                out.setdefault(deployment, []).append(nodes.get(a["node_id"], a["node_id"]))
        return {k: sorted(v) for k, v in out.items()}

    # --- Serve CLIs ---------------------------------------------------------------------------------------

    def serve(self, *args: str, timeout_s: float = 120) -> str:
        """Run Ray's `serve` CLI against this cluster; its stdout (raises with its output on failure)."""
        cmd = [str(BIN / "serve"), *args, f"--address={self.dashboard_url}"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), cwd=ROOT, timeout=timeout_s)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p.stdout

    def serve_status(self) -> dict[str, Any]:
        import yaml

        return yaml.safe_load(self.serve("status"))

    # --- stopping -----------------------------------------------------------------------------------------

    def kill_node(self, name: str) -> float:
        """Lose a node at once: SIGKILL to every process of its session (raylet, workers, agents, the
        `ray start` itself). Returns the monotonic time of the kill."""
        node = self.node(name)
        _signal_session(node.sid, signal.SIGKILL)
        t = time.monotonic()
        node.lost = True
        node.proc.wait(timeout=30)
        return t

    def stop(self, grace_s: float = 10.0) -> list[str]:
        """Stop every node this helper started (SIGTERM to the processes of its session, SIGKILL to what is left
        after grace_s), workers first; returns the processes of those sessions still running afterwards."""
        for node in reversed(self.nodes):
            _signal_session(node.sid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for node in reversed(self.nodes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        # `ray start --block` drains for up to 30 s on SIGTERM; whatever is left of those sessions is killed now.
        for node in self.nodes:
            _signal_session(node.sid, signal.SIGKILL)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        left = self.leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = self.leftovers()
        return left

    def leftovers(self) -> list[str]:
        """Running (not zombie) processes in the sessions of the nodes this helper started."""
        sids = {n.sid for n in self.nodes}
        return [f"{pid} {comm} (session {sid})" for pid, comm, sid in processes_in_sessions(sids)]


def _signal_session(sid: int, sig: int) -> None:
    for pid, _, _ in processes_in_sessions({sid}):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def processes_in_sessions(sids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, command name, session id) of the running (not zombie) processes in these sessions."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces, so split after its closing paren
        fields = stat[stat.rindex(")") + 2 :].split()
        state, session = fields[0], int(fields[3])
        if session in sids and state not in ("Z", "X"):
            out.append((int(d.name), stat[stat.index("(") + 1 : stat.rindex(")")], session))
    return out
