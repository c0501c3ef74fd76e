"""bench.ports: ports for servers that bind later lie outside the range outgoing connections draw from."""

from __future__ import annotations

import socket

import pytest

from bench import ports


def test_ports_are_distinct_bindable_and_outside_the_ephemeral_and_ray_worker_ranges() -> None:
    low, high = (int(v) for v in ports.EPHEMERAL_RANGE.read_text().split())
    picked = ports.free_ports(20) + [ports.free_port() for _ in range(5)]
    assert len(set(picked)) == len(picked)
    for port in picked:
        assert not low <= port <= high
        assert port > ports.RAY_WORKER_PORTS_MAX
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports.free_port()))
        held.listen()
        port = held.getsockname()[1]
        monkeypatch.setattr(ports, "_candidate_range", lambda: range(port, port + 1))
        with pytest.raises(RuntimeError, match="found only 0 of 1 free ports"):
            ports.free_ports(1)
