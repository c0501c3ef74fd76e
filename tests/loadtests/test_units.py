"""Pure parts of the load tester: percentiles, cell statistics, Poisson arrivals, cost model, SLO table,
Prometheus differences and plots."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from loadtests import costmodel, plots, prom, report
from loadtests.client import Record
from loadtests.runner import poisson_arrivals
from loadtests.stats import percentiles, summarize


def record(i: int, start: float, latency: float, status: str = "200", warmup: bool = False, **kw) -> Record:
    return Record(
        index=i,
        sampler="fm-euler",
        steps=10,
        load=1.0,
        scheduled=start,
        start=start,
        end=start + latency,
        status=status,
        warmup=warmup,
        num_samples=kw.pop("n", 2),
        **kw,
    )


def test_percentiles_match_numpy_and_are_ordered() -> None:
    x = np.random.default_rng(0).lognormal(size=1001)
    p = percentiles(x)
    assert p["p50"] == pytest.approx(np.median(x))
    assert p["p99"] == pytest.approx(np.sort(x)[990])  # 1001 points: p99 is exactly order statistic 990
    assert p["p50"] <= p["p90"] <= p["p95"] <= p["p99"] <= p["max"] == x.max()
    assert percentiles([])["p95"] is None


def test_summarize_counts_windows_and_excludes_warmup() -> None:
    recs = [record(0, 0.0, 5.0, warmup=True)]  # warmup: never counted, even if slow
    recs += [record(i, 1.0 + 0.5 * i, 0.1, server_queue_s=0.01 * i) for i in range(1, 11)]
    recs += [record(11, 2.0, 0.2, status="503"), record(12, 2.1, 30.0, status="timeout")]
    s = summarize(recs)
    assert s["warmup_requests"] == 1 and s["requests"] == 12 and s["ok"] == 10
    assert s["errors"] == {"503": 1, "timeout": 1}
    # window: first measured start 1.5 to last measured end 2.1 + 30.0
    assert s["window_s"] == pytest.approx(30.6)
    assert s["throughput_rps"] == pytest.approx(10 / 30.6)
    assert s["samples_per_s"] == pytest.approx(20 / 30.6)
    assert s["latency_s"]["max"] == pytest.approx(0.1)  # errors are not latencies
    assert s["server_queue_s"]["mean"] == pytest.approx(0.055)
    assert s["server_compute_s"] is None


def test_poisson_arrivals_have_the_rate_and_exponential_gaps() -> None:
    t = poisson_arrivals(rate=50.0, horizon=200.0, seed=3)
    assert np.all(np.diff(t) > 0) and t[-1] < 200.0
    assert len(t) == pytest.approx(10_000, rel=0.05)  # Poisson(10000): sd 100
    assert sps.kstest(np.diff(t), "expon", args=(0, 1 / 50.0)).pvalue > 0.01
    np.testing.assert_array_equal(t, poisson_arrivals(50.0, 200.0, seed=3))


def cells_on_a_line(a: float, b: float, per_step: int, loads=(1.0,)) -> list[dict]:
    cells = []
    for load in loads:
        for k in (5, 10, 20, 50):
            nfe = k * per_step
            lat = {"p50": a + b * nfe, "p95": 1.5 * a + 2 * b * nfe, "p99": 2 * a + 3 * b * nfe, "max": 9.0}
            cells.append(
                {
                    "sampler": "fm-rk4",
                    "steps": k,
                    "mode": "closed",
                    "load": load,
                    "nfe": nfe,
                    "latency_s": lat,
                    "errors": {},
                }
            )
    return cells


def test_cost_model_recovers_a_line() -> None:
    (m,) = costmodel.fit_cost_models(cells_on_a_line(0.02, 0.001, per_step=4))
    assert m["nfe_per_step"] == 4 and m["points"] == 4
    assert m["p50"]["a_s"] == pytest.approx(0.02) and m["p50"]["b_s_per_nfe"] == pytest.approx(0.001)
    assert m["p95"]["a_s"] == pytest.approx(0.03) and m["p95"]["b_s_per_nfe"] == pytest.approx(0.002)
    assert m["p50"]["r2"] == pytest.approx(1.0)


def test_slo_table_measured_and_model() -> None:
    cells = cells_on_a_line(0.02, 0.001, per_step=4)  # p95 = 0.03 + 0.008 K: K=5 0.07, 10 0.11, 20 0.19, 50 0.43
    cells[2]["errors"] = {"503": 1}  # K=20 had errors: it does not meet any budget
    rows = costmodel.slo_table(cells, costmodel.fit_cost_models(cells), budgets=(0.05, 0.2, 0.5))
    by = {r["budget_s"]: r for r in rows}
    assert by[0.05]["k_measured"] is None and by[0.05]["k_model"] == 2  # floor((0.05 - 0.03) / 0.008)
    assert by[0.2]["k_measured"] == 10 and by[0.2]["k_model"] == 21  # floor(0.17 / 0.008) = 21
    assert by[0.5]["k_measured"] == 50 and by[0.5]["k_model"] == 58 and by[0.5]["extrapolated"]
    assert not by[0.2]["extrapolated"]


def test_slo_model_never_proposes_more_than_max_steps() -> None:
    cells = cells_on_a_line(0.02, 0.001, per_step=4)  # p95 = 0.03 + 0.008 K
    models = costmodel.fit_cost_models(cells)
    rows = costmodel.slo_table(cells, models, budgets=(0.2, 5.0), max_steps={"fm-rk4": 100})
    by = {r["budget_s"]: r for r in rows}
    assert by[5.0]["k_line"] == 621 and by[5.0]["k_model"] == 100 and by[5.0]["capped"]  # floor(4.97 / 0.008)
    assert by[0.2]["k_model"] == by[0.2]["k_line"] == 21 and not by[0.2]["capped"]
    text = report.slo_text(rows)
    assert "100* (line 621 > max_steps)" in text and "621*" not in text.replace("line 621", "")


def test_slo_model_needs_a_line_that_fits() -> None:
    cells = cells_on_a_line(0.02, 0.001, per_step=1)
    for c, noise in zip(cells, (0.5, -0.4, 0.45, -0.3), strict=True):  # p95 swamped by noise: r^2 < 0.5
        c["latency_s"]["p95"] += noise
    models = costmodel.fit_cost_models(cells)
    assert models[0]["p95"]["r2"] < costmodel.MIN_R2
    assert all(r["k_model"] is None for r in costmodel.slo_table(cells, models, budgets=(0.5, 1.0)))


def test_cost_model_needs_two_distinct_nfe() -> None:
    cells = cells_on_a_line(0.02, 0.001, per_step=1)[:1]
    (m,) = costmodel.fit_cost_models(cells)
    assert m["p50"] is None
    assert costmodel.slo_table(cells, [m], budgets=(1.0,))[0]["k_model"] is None


EXPOSITION_BEFORE = """\
# TYPE ray_stepserve_requests_total counter
ray_stepserve_requests_total{model="m",sampler="fm-euler",status="200"} 10
ray_stepserve_requests_total{model="m",sampler="fm-euler",status="503"} 1
# TYPE ray_stepserve_queue_wait_seconds histogram
ray_stepserve_queue_wait_seconds_bucket{model="m",le="+Inf"} 10
ray_stepserve_queue_wait_seconds_sum{model="m"} 1.0
ray_stepserve_queue_wait_seconds_count{model="m"} 10
# TYPE ray_serve_deployment_replica_healthy gauge
ray_serve_deployment_replica_healthy{deployment="Model",replica="a"} 1
"""
EXPOSITION_AFTER = """\
# TYPE ray_stepserve_requests_total counter
ray_stepserve_requests_total{model="m",sampler="fm-euler",status="200"} 25
ray_stepserve_requests_total{model="m",sampler="fm-euler",status="503"} 3
ray_stepserve_requests_total{model="m",sampler="fm-rk4",status="200"} 4
# TYPE ray_stepserve_nfe_total counter
ray_stepserve_nfe_total{model="m",sampler="fm-rk4"} 160
# TYPE ray_stepserve_queue_wait_seconds histogram
ray_stepserve_queue_wait_seconds_bucket{model="m",le="+Inf"} 30
ray_stepserve_queue_wait_seconds_sum{model="m"} 5.0
ray_stepserve_queue_wait_seconds_count{model="m"} 30
# TYPE ray_serve_replica_processing_queries gauge
ray_serve_replica_processing_queries{deployment="Model",replica="a",WorkerId="1"} 3
ray_serve_replica_processing_queries{deployment="Model",replica="b",WorkerId="2"} 0
ray_serve_replica_processing_queries{deployment="Ingress",replica="c",WorkerId="3"} 1
# TYPE ray_serve_autoscaling_target_replicas gauge
ray_serve_autoscaling_target_replicas{deployment="Model"} 3
# TYPE ray_serve_deployment_replica_healthy gauge
ray_serve_deployment_replica_healthy{deployment="Model",replica="a"} 1
ray_serve_deployment_replica_healthy{deployment="Model",replica="b"} 1
"""


def test_server_view_is_the_counter_difference() -> None:
    s = prom.summarize_server(prom.parse(EXPOSITION_BEFORE), prom.parse(EXPOSITION_AFTER))
    assert s["requests"] == 15 + 2 + 4  # a series new in the run counts from zero
    assert s["requests_by_status"] == {"200": 19, "503": 2}
    assert s["nfe"] == 160 and s["steps"] is None
    assert s["queue_wait_mean"] == pytest.approx(4.0 / 20)
    assert s["replicas_after"] == {
        "Ingress": {"running": 1.0},
        "Model": {"running": 2.0, "target": 3.0, "healthy": 2.0},
    }


def test_plots_write_pngs(tmp_path) -> None:
    cells = cells_on_a_line(0.02, 0.001, per_step=1, loads=(1.0, 4.0))
    for c in cells:
        c.update(
            throughput_rps=c["load"] / c["latency_s"]["p50"],
            samples_per_s=2 * c["load"] / c["latency_s"]["p50"],
        )
    recs = [record(i, 0.1 * i, 0.01 * (1 + i % 7)) for i in range(50)]
    rows = [
        {
            "sampler": "fm-rk4",
            "steps": k,
            "guidance": w,
            "latency_p50_s": 0.01 * k,
            "accuracy": 0.5 + k / 50,
            "frechet": 10 / k,
        }
        for k in (5, 10, 20)
        for w in (None, 1.0, 3.0)
    ]
    paths = [
        plots.latency_vs_k(cells, tmp_path / "a.png"),
        plots.throughput_vs_load(cells, tmp_path / "b.png"),
        plots.latency_cdf(recs, tmp_path / "c.png"),
        plots.quality_frontier(rows, "frechet", tmp_path / "d.png"),
        plots.quality_vs_guidance(rows, tmp_path / "e.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
