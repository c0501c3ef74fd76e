"""bench.latent on a tiny latent model: batched decodes give each request the images it would get alone, and the
decode is part of a request's time."""

from __future__ import annotations

from pathlib import Path

from bench.latent import batched_against_one_at_a_time, decoder_throughput, latency_share
from training.checkpoint import load_checkpoint


def test_the_decode_figures_are_measured_and_consistent(tiny_latent: Path) -> None:
    ckpt = load_checkpoint(tiny_latent)
    rows = decoder_throughput(ckpt, "torch", (1, 8), rounds=2)
    assert [r["rows"] for r in rows] == [1, 8] and all(r["median_s"] > 0 for r in rows)
    b = batched_against_one_at_a_time(ckpt, requests=3, samples=2, rounds=2, chunk=4)
    assert b["max_abs_diff"] < 1e-5 and b["batched_s"] > 0 and b["in_chunks_s"] > 0 and b["one_at_a_time_s"] > 0
    (share,) = latency_share(ckpt, (2,), samples=3, repeats=3)
    assert 0 < share["decode_s"] < share["median_s"] and share["predicted_decode_s"] > 0


def test_the_preview_figures_are_measured_on_fresh_latents() -> None:
    from bench.latent import preview_against_decoder

    ckpt = load_checkpoint(Path(__file__).resolve().parents[2] / "models" / "shapes-latent-fm")
    pv = preview_against_decoder(ckpt, (1, 4), rounds=1, n=50)
    assert pv["psnr_db_vs_decoder"] > pv["psnr_db_vs_decoder_1x1"]  # a 3 x 3 neighbourhood beats one pixel
    assert pv["decoder_psnr_db_vs_data"] > pv["psnr_db_vs_data"]  # the stand-in is below the decoder it fits
    assert [t["rows"] for t in pv["times"]] == [1, 4] and all(t["preview_s"] > 0 for t in pv["times"])
