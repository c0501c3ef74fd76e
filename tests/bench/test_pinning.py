"""bench.common.pinned_replicas on real processes: the replica's process (found by the title Ray gives it) gets
the last CPU, everything else below this process the others, and every CPU again afterwards."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from bench.common import pinned_replicas


def _spawn(title: str | None) -> subprocess.Popen:
    """A sleeping child whose cmdline starts with `title` (bash's `exec -a`), as Ray's process titles do."""
    cmd = f'exec -a "{title}" sleep 60' if title else "exec sleep 60"
    return subprocess.Popen(["bash", "-c", cmd])


def _wait_for_title(proc: subprocess.Popen, title: str) -> None:
    for _ in range(200):
        if Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(title.encode()):
            return
        time.sleep(0.01)
    raise AssertionError(f"child {proc.pid} never took the title {title!r}")


def test_the_replica_gets_the_last_cpu_and_everything_else_the_others() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    replica = _spawn("ray::ServeReplica:app:moons-fm")
    other = _spawn("ray::ServeReplica:app:moons-fm-big")  # another deployment whose name starts alike
    plain = _spawn(None)
    try:
        _wait_for_title(replica, "ray::ServeReplica:app:moons-fm")
        _wait_for_title(other, "ray::ServeReplica:app:moons-fm-big")
        if len(cpus) < 2:
            with pytest.raises(RuntimeError, match="2 or more CPUs"), pinned_replicas("moons-fm"):
                pass
            return
        with pinned_replicas("moons-fm") as where:
            assert where["replica_pids"] == [replica.pid]
            assert os.sched_getaffinity(replica.pid) == {cpus[-1]}
            for pid in (other.pid, plain.pid, os.getpid()):
                assert os.sched_getaffinity(pid) == set(cpus[:-1]), pid
        for pid in (replica.pid, other.pid, plain.pid, os.getpid()):
            assert os.sched_getaffinity(pid) == set(cpus), pid
    finally:
        for p in (replica, other, plain):
            p.kill()
            p.wait()


def test_no_such_replica_is_a_clear_error_and_touches_nothing() -> None:
    cpus = os.sched_getaffinity(0)
    expected = "no replica process of deployment 'nope'" if len(cpus) >= 2 else "2 or more CPUs"
    with pytest.raises(RuntimeError, match=expected), pinned_replicas("nope"):
        pass
    assert os.sched_getaffinity(0) == cpus
