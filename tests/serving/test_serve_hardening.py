"""`serve_cli --ingress haproxy` from the outside: HAProxy holds the port, every other socket of its process
tree is where docs/security.md says, and the API answers through it unchanged. The process tree and its
listening sockets are read from /proc (Linux, no extra tool); tests/serving/test_make_serve.py checks
`make serve`'s own sockets with the same helpers."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.serve_cli import INGRESS_MAXCONN, INGRESS_QUEUE_MS
from tests.serving.conftest import free_port, interrupt
from tests.serving.test_stream import events

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")]
ROOT = Path(__file__).resolve().parents[2]


def process_tree(root: int) -> dict[int, str]:
    """pid -> command line of `root` and all its descendants."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - tree
        tree |= frontier
    out = {}
    for pid in tree:
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out


def listening_sockets(pids: dict[int, str]) -> list[tuple[str, int, str]]:
    """(address, port, command line) of every listening TCP socket that one of `pids` holds."""
    listening: dict[str, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A":  # LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints each 32-bit word of the address in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            listening[cols[9]] = (str(ipaddress.ip_address(raw)), int(hex_port, 16))
    out = []
    for pid, cmd in pids.items():
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = target[len("socket:[") : -1] if target.startswith("socket:[") else None
            if inode in listening:
                out.append((*listening[inode], cmd))
    return sorted(set(out))


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@contextlib.contextmanager
def running_serve_cli(
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    config: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen, int, int, Path]]:
    """`python -m serving.serve_cli` (its own RAY_ defaults, plus `env`) serving the Serve config file `config`
    with the tiny models as its models_dir, until it prints that it is ready: (process, HTTP port, metrics port,
    log file); Ctrl-C on leaving."""
    path = config
    extra = ("--models-dir", str(tiny_checkpoints["moons-fm"].parent), *extra)
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, **(env or {})}
    cmd = [sys.executable, "-m", "serving.serve_cli", "--config", str(path), "--port", str(port)]
    cmd += ["--metrics-port", str(metrics_port), "--num-cpus", "4", *extra]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "stepserve is ready." not in log.read_text():
            assert proc.poll() is None, f"serve_cli exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready within 4 minutes:\n{log.read_text()[-3000:]}"
            time.sleep(1.0)
        yield proc, port, metrics_port, log
    finally:
        interrupt(proc)


def check_haproxy_contract(proc: subprocess.Popen, port: int, stats: int, metrics: int, log: Path, one_hop: bool):
    """What `--ingress haproxy` promises, checked on a running service whose HAProxy stats page and metrics are on
    `stats` / `metrics`: HAProxy, not Serve's Python proxy, holds the HTTP port, and the Ingress replica serves
    HTTP itself on a port in 30000-31000 (on the node's address: loopback here; docs/security.md). The API answers
    through it as through the proxy: a 200 whose samples a second request with the same seed repeats, a 422 naming
    the bad field, a 413 for an oversized body, and a streamed request's events ending with the unstreamed body.
    What a client that hangs up does behind HAProxy is not checked here (docs/architecture.md). `one_hop`: the
    application is moons-fm's own (`ModelIngress`, no Ingress deployment), else deploy/serve.yaml's layout (an
    Ingress, and moons-fm's application whose own route /models/moons-fm keeps the same contract)."""
    assert "ingress: HAProxy" in log.read_text()
    # HAProxy reloads (a new process takes over the listening socket) as Serve's endpoints settle, also after
    # the service first answers: read the process tree again until a HAProxy process holds the port.
    deadline = time.monotonic() + 60
    while True:
        tree = process_tree(proc.pid)
        sockets = listening_sockets(tree)
        by_port = {p: (a, c) for a, p, c in sockets}
        if "haproxy" in by_port.get(port, ("", ""))[1] or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    model_replicas = [c for c in tree.values() if c.startswith("ray::ServeReplica") and ":moons-fm" in c]
    ingress_replicas = [c for c in tree.values() if c.startswith("ray::ServeReplica") and ":Ingress" in c]
    assert model_replicas and (not ingress_replicas if one_hop else ingress_replicas), tree
    assert port in by_port and "haproxy" in by_port[port][1] and by_port[port][0] == "127.0.0.1", sockets
    assert not any(c.startswith("ray::ProxyActor") for _, p, c in sockets if p == port), sockets
    replica_http = [(a, p) for a, p, c in sockets if 30000 <= p < 31000 and c.startswith("ray::ServeReplica")]
    assert replica_http and all(is_loopback(a) for a, _ in replica_http), sockets  # the node's address
    # Nothing on every interface besides the replicas' gRPC servers: HAProxy's stats page and metrics, which
    # Ray's template binds to `*`, are on loopback (scripts/haproxy.sh; docs/security.md), and answer.
    open_ = [(a, p, c) for a, p, c in sockets if not is_loopback(a) and "ServeReplica" not in c]
    assert not open_, sockets
    haproxy = {(p, a) for a, p, c in sockets if "haproxy" in c}
    assert {(stats, "127.0.0.1"), (metrics, "127.0.0.1")} <= haproxy, sockets
    assert httpx.get(f"http://127.0.0.1:{stats}/stats", timeout=10).status_code == 200
    assert "haproxy_process" in httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text
    # ... and the config Ray wrote bounds each Ingress replica's slots, with HAProxy's JSON errors.
    cfg = next(c.split(" -f ", 1)[1].split()[0] for c in tree.values() if "haproxy" in c and " -f " in c)
    # Ray's HAProxy manager rewrites the file whenever the replicas change (a reload in between lists the
    # backend without servers for a moment), and scripts/haproxy.sh rewrites Ray's file as the HAProxy it
    # starts for that reload comes up (Ray's version, without the bounds, lies there in between): read it until
    # the Ingress replicas are in it and the wrapper's rewrite is too (its error files named in it).
    until = time.monotonic() + 30
    while True:
        text = Path(cfg).read_text()
        servers = [line for line in text.splitlines() if line.strip().startswith("server SERVE_REPLICA_")]
        if (servers and "stepserve-503.http" in text) or time.monotonic() > until:
            break
        time.sleep(0.5)
    assert servers and all(line.endswith(f" maxconn {INGRESS_MAXCONN}") for line in servers), text
    assert f"timeout queue {INGRESS_QUEUE_MS}ms" in text and "stepserve-503.http" in text, text
    body = {"model": "moons-fm", "sampler": "fm-euler", "steps": 4, "num_samples": 8, "seed": 3}
    answers = []
    for base in [f"http://127.0.0.1:{port}"] + ([] if one_hop else [f"http://127.0.0.1:{port}/models/moons-fm"]):
        first, again = (httpx.post(f"{base}/v1/samples", json=body, timeout=60) for _ in range(2))
        assert first.status_code == 200, (base, first.text)
        assert first.json()["nfe"] == 4 and np.asarray(first.json()["samples"]).shape == (8, 2)
        assert again.json()["samples"] == first.json()["samples"]
        answers.append(first.json()["samples"])
        bad = httpx.post(f"{base}/v1/samples", json={**body, "steps": 0}, timeout=60)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "steps", bad.text
        big = httpx.post(f"{base}/v1/samples", content=b"x" * (65 * 1024), timeout=60)
        assert big.status_code == 413 and big.json()["error"]["field"] == "body", big.text
        got = events(base, {**body, "stream": True})
        assert [e for e, _ in got] == ["progress"] * 4 + ["result"]
        assert got[-1][1]["samples"] == first.json()["samples"]
    assert all(a == answers[0] for a in answers)  # both routes reach the same replicas, the same samples


def test_serve_cli_one_hop_behind_haproxy_keeps_the_http_contract(tiny_checkpoints: dict[str, Path], tmp_path: Path):
    """`check_haproxy_contract` on deploy/serve-one-hop.yaml. The two-hop application behind HAProxy is the
    shipped `make serve`, checked the same way by tests/serving/test_make_serve.py."""
    # HAProxy's stats and metrics ports (Ray's defaults 8404 and 9101) on free ports, so that a HAProxy already
    # running on this machine does not keep this one from starting
    stats, metrics = free_port(), free_port()
    env = {"RAY_SERVE_HAPROXY_STATS_PORT": str(stats), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics)}
    config = ROOT / "deploy" / "serve-one-hop.yaml"
    cli = running_serve_cli(tiny_checkpoints, tmp_path, config, "--ingress", "haproxy", env=env)
    with cli as (proc, port, _, log):
        check_haproxy_contract(proc, port, stats, metrics, log, one_hop=True)
