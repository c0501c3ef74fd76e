"""The locustfile drives the stand-in service headless. Locust is the `.[locust]` extra, which `make install`
installs: the test uses $LOCUST, else the `locust` beside this Python, else one on PATH, and fails naming
the install step when there is none."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.loadtests.stub_service import MODEL, StubService

ROOT = Path(__file__).resolve().parents[2]


def test_locustfile_sends_the_configured_requests(stub: StubService, tmp_path: Path) -> None:
    beside = Path(sys.executable).parent / "locust"
    exe = os.environ.get("LOCUST") or (str(beside) if beside.exists() else shutil.which("locust"))
    if not exe:
        pytest.fail("locust is not installed: run `make install` (or pip install -e '.[locust]', or set $LOCUST)")
    before = stub.received
    env = {
        **os.environ,
        "STEPSERVE_MODEL": MODEL,
        "STEPSERVE_SAMPLER": "fm-rk4",
        "STEPSERVE_STEPS": "7",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [
            exe,
            "-f",
            "loadtests/locustfile.py",
            "--host",
            stub.url,
            "--headless",
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "3s",
            "--csv",
            str(tmp_path / "l"),
            "--only-summary",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "l_stats.csv").open())}
    sent = int(rows["/v1/samples K=7"]["Request Count"])
    assert sent > 0 and int(rows["/v1/samples K=7"]["Failure Count"]) == 0
    # Locust leaves requests cut off by the end of the run out of its table; the server saw them all.
    bodies = stub.bodies[before:]
    assert len(bodies) >= sent
    assert {(b["model"], b["sampler"], b["steps"], b["num_samples"]) for b in bodies} == {(MODEL, "fm-rk4", 7, 1)}
    assert len({b["seed"] for b in bodies}) == len(bodies)  # request i has seed SEED + i
