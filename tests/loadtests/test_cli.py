"""python -m loadtests end to end against the slow stand-in service, and its one-line argument errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ports import free_port
from loadtests import prom
from tests.loadtests.stub_service import DIGITS, MODEL, StubService

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = (
    "results.json",
    "results.csv",
    "requests.csv",
    "latency_vs_k.png",
    "throughput_vs_load.png",
    "latency_cdf.png",
)


def loadtests(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtests", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def assert_ordered(cell: dict) -> None:
    lat = cell["latency_s"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]


def test_sweep_writes_every_output_and_counts_what_the_server_counts(stub: StubService, tmp_path: Path) -> None:
    metrics = f"{stub.url}/metrics"
    before = prom.scrape(metrics)
    out = tmp_path / "run"
    proc = loadtests(
        "--url",
        stub.url,
        "--model",
        MODEL,
        "--sampler",
        "fm-euler,fm-rk4",
        "--steps",
        "2,8",
        "--rate",
        "10,30",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--metrics-url",
        metrics,
        "--out",
        str(out),
        "--no-progress",
        "--quality",
        "--quality-samples",
        "300",
    )
    assert proc.returncode == 0, proc.stderr
    for name in (*OUTPUTS, "quality_vs_latency.png"):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    after = prom.scrape(metrics)
    # The server's own counter moved by exactly what the client says it sent during the sweep (quality
    # requests come after the sweep's closing scrape and are left out of both).
    assert res["server"]["requests"] == res["requests_sent"]
    sweep_quality_requests = 2 * 2 * 2  # 2 samplers x 2 K x ceil(300 / 256) requests
    assert prom.summarize_server(before, after)["requests"] == res["requests_sent"] + sweep_quality_requests
    assert res["requests_sent"] == res["probe_requests"] + res["warmup_requests"] + res["measured_requests"]
    assert len(res["cells"]) == 8
    for cell in res["cells"]:
        assert_ordered(cell)
        assert cell["errors"] == {} and cell["ok"] == cell["requests"] > 0
        # stub latency: 50 ms + 2 ms per step, plus HTTP
        assert cell["latency_s"]["p50"] >= 0.05 + 0.002 * cell["steps"]
    assert {(m["sampler"], m["load"]) for m in res["cost_model"]} == {
        (s, r) for s in ("fm-euler", "fm-rk4") for r in (10, 30)
    }
    assert {m["nfe_per_step"] for m in res["cost_model"]} == {1, 4}
    # quality: the stub returns real moons draws, so the SW ratio is near 1
    assert all(0.5 < q["sw_ratio"] < 2.0 for q in res["quality"])
    assert "p95 ms" in proc.stdout and "largest K" in proc.stdout
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 8


def test_closed_loop_cli_runs(stub: StubService, tmp_path: Path) -> None:
    proc = loadtests(
        "--url",
        stub.url,
        "--model",
        MODEL,
        "--sampler",
        "fm-euler",
        "--steps",
        "1,4",
        "--concurrency",
        "1,3",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--metrics-url",
        "none",
        "--out",
        str(tmp_path),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["mode"] == "closed" and res["server"] is None
    for cell in res["cells"]:
        assert_ordered(cell)


def test_digits_quality_against_guidance(stub: StubService, tmp_path: Path) -> None:
    proc = loadtests(
        "--url",
        stub.url,
        "--model",
        DIGITS,
        "--sampler",
        "fm-euler",
        "--steps",
        "3",
        "--rate",
        "5",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--metrics-url",
        "none",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--quality",
        "--quality-guidance",
        "none,2",
        "--quality-samples",
        "200",
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    # The stand-in returns real digits of each requested class: the classifier agrees with the labels and
    # the Frechet distance sits at the floor of two real draws.
    assert [q["guidance"] for q in res["quality"]] == [None, 2.0]
    for q in res["quality"]:
        assert q["n"] == 200 and q["accuracy"] > 0.9
        assert q["frechet"] < 3 * q["frechet_data"]
    quality_bodies = stub.bodies[-20:]  # per w: 200 samples in 10 chunks of 20, one class each
    for chunk, w in ((quality_bodies[:10], None), (quality_bodies[10:], 2.0)):
        assert sorted(b["class_label"] for b in chunk) == list(range(10))
        assert {b.get("guidance") for b in chunk} == {w} and {b["num_samples"] for b in chunk} == {20}
    assert (tmp_path / "quality_vs_guidance.png").stat().st_size > 0
    header = next(line for line in proc.stdout.splitlines() if "frechet_data" in line)
    assert header.split()[:3] == ["sampler", "w", "K"]


def one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--steps", ""], "--steps: empty list"),
        (["--steps", "5,x"], "--steps"),
        (["--steps", "0,5"], ">= 1"),
        (["--steps", "5", "--rate", "0"], "--rate"),
        (["--steps", "5", "--duration", "-1"], "--duration"),
    ],
)
def test_bad_arguments_end_in_one_line(stub: StubService, tmp_path: Path, args: list[str], fragment: str) -> None:
    base = {"--url": stub.url, "--model": MODEL, "--sampler": "fm-euler", "--rate": "1", "--duration": "1"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    flat = [x for kv in base.items() for x in kv]
    one_line_error(loadtests(*flat, "--out", str(tmp_path)), fragment)


def test_missing_load_mode_and_unknown_model_and_sampler(stub: StubService, tmp_path: Path) -> None:
    common = ["--url", stub.url, "--steps", "5", "--duration", "1", "--out", str(tmp_path)]
    one_line_error(loadtests(*common, "--model", MODEL, "--sampler", "fm-euler"), "--concurrency --rate")
    one_line_error(
        loadtests(*common, "--model", "nope", "--sampler", "fm-euler", "--rate", "1"), "unknown model 'nope'"
    )
    one_line_error(loadtests(*common, "--model", MODEL, "--sampler", "ddim", "--rate", "1"), "does not accept sampler")
    bad_w = ["--model", MODEL, "--sampler", "fm-euler", "--rate", "1", "--quality", "--quality-guidance", "1,x"]
    one_line_error(loadtests(*common, *bad_w), "--quality-guidance: 'x'")
    assert not (tmp_path / "results.json").exists()


def test_unreachable_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = loadtests(
        "--url",
        url,
        "--model",
        "m",
        "--sampler",
        "s",
        "--steps",
        "5",
        "--rate",
        "1",
        "--duration",
        "1",
        "--out",
        str(tmp_path),
    )
    one_line_error(proc, f"cannot reach {url}/v1/models")
