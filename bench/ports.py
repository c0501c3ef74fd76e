"""Free TCP ports for servers that bind them later (benchmarks and tests).

A port from `bind(("127.0.0.1", 0))` lies in the kernel's ephemeral range, which every outgoing connection on
the machine draws from too. Handed to a server that binds it seconds or minutes later (HAProxy's stats page
once a model is trained, a Ray node's agent), it may meanwhile have become the local end of some client's
connection — Ray alone opens hundreds — and the server fails with "Address already in use". So the ports here
come from below the ephemeral range (/proc/sys/net/ipv4/ip_local_port_range) and above Ray's default worker
ports (10002-19999), where only a server that asks for that number binds, and each is handed out once per
process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

RAY_WORKER_PORTS_MAX = 19999  # Ray's default --max-worker-port
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")

_handed_out: set[int] = set()


def _candidate_range() -> range:
    """Ports a server may take with little chance of a client's connection holding them."""
    try:
        ephemeral_low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    low = RAY_WORKER_PORTS_MAX + 1
    if ephemeral_low - low < 1000:  # an unusual ephemeral range: fall back to the registered ports below Ray's
        return range(1024 + 1000, 10000)
    return range(low, ephemeral_low)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))  # all interfaces: conflicts with a listener on any address
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """n distinct ports, free now, outside the ephemeral range, none handed out before by this process."""
    candidates = _candidate_range()
    picked: list[int] = []
    for _ in range(200 * n):
        if len(picked) == n:
            break
        port = random.choice(candidates)
        if port in _handed_out or port in picked or not _bindable(port):
            continue
        picked.append(port)
    if len(picked) < n:
        raise RuntimeError(f"found only {len(picked)} of {n} free ports in {candidates.start}-{candidates.stop - 1}")
    _handed_out.update(picked)
    return picked


def free_port() -> int:
    """One port as `free_ports` picks them."""
    return free_ports(1)[0]
