"""python -m loadtests deadline: its statistics, table and plots on synthetic response records, and its one-line
refusal of a service that does not take deadline requests (the stand-in service over real HTTP)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests import plots
from loadtests.client import Record
from loadtests.deadline import main as deadline_main
from loadtests.goodput import deadline_text, met, profile_quality, summarize_deadline, unsupported
from tests.loadtests.stub_service import MODEL, StubService

PROFILE = {
    "metric": "sw_ratio",
    "points": [
        {"sampler": "fm-euler", "steps": 1, "nfe": 1, "value": 20.0, "quality": 0.05},
        {"sampler": "fm-euler", "steps": 10, "nfe": 10, "value": 2.0, "quality": 0.5},
        {"sampler": "fm-euler", "steps": 20, "nfe": 20, "value": 1.25, "quality": 0.8},
    ],
}


def rec(i: int, latency: float, status: str = "200", warmup: bool = False, **kw) -> Record:
    start = 1.0 + 0.1 * i
    return Record(i, "fm-euler", "auto", 4.0, start, start, start + latency, status, warmup, num_samples=1, **kw)


def test_met_uses_the_response_then_the_servers_total_time() -> None:
    assert met(rec(0, 0.5, deadline_met=True), 100.0)  # the service's word, whatever the client saw
    assert not met(rec(0, 0.01, deadline_met=False), 100.0)
    assert met(rec(0, 0.5, server_total_s=0.09), 100.0) and not met(rec(0, 0.05, server_total_s=0.11), 100.0)
    assert not met(rec(0, 0.01, status="503"), 100.0)


def test_profile_quality_reads_points_and_interpolates_in_k() -> None:
    assert profile_quality(PROFILE, "fm-euler", 10) == 0.5
    assert profile_quality(PROFILE, "fm-euler", 15) == pytest.approx(0.65)
    assert profile_quality(PROFILE, "fm-euler", 100) == 0.8  # beyond the last point: its value
    assert profile_quality(PROFILE, "fm-rk4", 10) is None and profile_quality(None, "fm-euler", 10) is None


def test_summarize_deadline_counts_goodput_attainment_k_and_quality() -> None:
    auto = {"served_sampler": "fm-euler", "deadline_ms": 100.0}
    recs = [rec(0, 5.0, warmup=True, served_steps=50, deadline_met=False, **auto)]  # warmup: never counted
    recs += [rec(i, 0.08, served_steps=20, deadline_met=True, predicted_quality=0.8, **auto) for i in range(1, 7)]
    recs += [rec(7, 0.15, served_steps=10, deadline_met=False, predicted_quality=0.5, **auto)]
    recs += [rec(8, 0.07, served_steps=10, deadline_met=True, **auto)]  # no predicted quality: the profile's 0.5
    recs += [rec(9, 0.01, status="503"), rec(10, 0.01, status="422")]
    c = summarize_deadline(recs, 100.0, PROFILE)
    assert c["requests"] == 10 and c["ok"] == 8 and c["met"] == 7 and c["met_reported"] == 8
    # window: first measured start 1.1 to last measured end (request 10: 2.0 + 0.01)
    assert c["window_s"] == pytest.approx(0.91)
    assert c["goodput_rps"] == pytest.approx(7 / 0.91)
    assert c["attainment"] == pytest.approx(0.7)  # refusals are misses
    assert c["attainment_client"] == pytest.approx(0.7)  # the 150 ms answer is the only slow one
    assert c["k_histogram"] == [
        {"sampler": "fm-euler", "steps": 10, "count": 2},
        {"sampler": "fm-euler", "steps": 20, "count": 6},
    ]
    assert c["quality"]["mean"] == pytest.approx((6 * 0.8 + 2 * 0.5) / 8) and c["quality"]["min"] == 0.5
    assert c["quality_goodput_rps"] == pytest.approx((6 * 0.8 + 0.5) / 0.91)
    assert c["errors"] == {"422": 1, "503": 1}


def _cells() -> list[dict]:
    cells = []
    for deadline in (50.0, 200.0):
        for multiple in (0.5, 2.0):
            for arm, steps in (("auto", 20 if deadline > 100 else 5), ("fixed", 10)):
                extra = {"served_sampler": "fm-euler", "served_steps": steps, "deadline_met": multiple < 1}
                recs = [rec(i, 0.05, **extra) for i in range(5)]
                c = summarize_deadline(recs, deadline, PROFILE)
                c.update(arm=arm, load_multiple=multiple, offered_rps=4 * multiple, sampler="fm-euler", steps="auto")
                cells.append(c)
    return cells


def test_deadline_table_and_plots(tmp_path: Path) -> None:
    cells = _cells()
    text = deadline_text(cells)
    lines = text.splitlines()
    assert len(lines) == 2 + len(cells) and "goodput/s" in lines[0] and "quality/s" in lines[0]
    column = lines[0].split().index("quality/s") - 2  # "deadline ms" and "met (client)" are two words each
    assert lines[2].split()[column] == format(cells[0]["quality_goodput_rps"], ".2f")
    assert "fm-euler K=20 (100%)" in text and "0.0%" in text and "100.0%" in text
    for fn, name in ((plots.deadline_goodput, "g.png"), (plots.deadline_k_histogram, "k.png")):
        path = fn(cells, tmp_path / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_unsupported_recognises_the_services_unknown_field_answers() -> None:
    old = rec(0, 0.01, status="422", detail="unknown field 'deadline_ms'")
    assert unsupported(old) is not None
    steps = rec(0, 0.01, status="422", detail="steps: Input should be a valid integer, unable to parse string")
    assert unsupported(steps) is not None
    # a service with the feature refusing a deadline no K can meet is an answer, not a missing feature
    assert unsupported(rec(0, 0.01, status="422", detail="deadline_ms 1 cannot be met at any K")) is None
    assert unsupported(rec(0, 0.01, status="503", detail="unknown field 'deadline_ms'")) is None


def test_cli_against_a_service_without_deadlines_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    service = StubService(strict=True).start()
    try:
        args = ["--url", service.url, "--model", MODEL, "--sampler", "fm-euler", "--deadline-ms", "100"]
        rc = deadline_main([*args, "--duration", "1", "--out", str(tmp_path), "--no-progress"])
    finally:
        service.stop()
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "does not take deadline requests" in err and "422" in err
    assert not (tmp_path / "results.json").exists()
