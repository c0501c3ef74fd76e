"""bench.latent on a tiny latent model: every figure it reports is measured and consistent with the others."""

from __future__ import annotations

from pathlib import Path

from bench.latent import batched_against_one_at_a_time, decoder_throughput, latency_share
from training.checkpoint import load_checkpoint


def test_the_decode_figures_are_measured_and_consistent(tiny_latent: Path) -> None:
    ckpt = load_checkpoint(tiny_latent)
    rows = decoder_throughput(ckpt, "torch", (1, 8), rounds=2)
    assert [r["rows"] for r in rows] == [1, 8]
    assert all(r["median_s"] > 0 and abs(r["rows_per_s"] * r["median_s"] - r["rows"]) < 1e-6 for r in rows)
    b = batched_against_one_at_a_time(ckpt, requests=3, samples=2, rounds=2)
    assert b["speedup"] == b["one_at_a_time_s"] / b["batched_s"]
    (share,) = latency_share(ckpt, (2,), samples=3, repeats=1)
    assert 0 < share["decode_s"] < share["median_s"] and share["decode_share"] == share["decode_s"] / share["median_s"]
