"""The latency benchmark's mechanics (speed itself is measured by `make bench`, never asserted)."""

from __future__ import annotations

import pytest
import torch

from bench.export import compare, table
from tests.export.helpers import exported_checkpoints
from training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory):
    return exported_checkpoints(tiny_checkpoints, tmp_path_factory)


def test_compare_reports_medians_and_their_ratio(exported, monkeypatch):
    monkeypatch.setattr("bench.export.BLOCK_SECONDS", 0.005)
    threads = torch.get_num_threads()
    try:
        row = compare(load_checkpoint(exported["moons-fm"]), batch=3, repeats=3, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert row["batch"] == 3 and row["threads"] == 1 and row["repeats"] == 3
    assert row["torch_ms"] > 0 and row["onnxruntime_ms"] > 0
    assert row["speedup"] == pytest.approx(row["torch_ms"] / row["onnxruntime_ms"])
    md = table({"models": {"moons-fm": {"net": "moons MLP", "rows": [row]}}})
    assert md.splitlines()[2].startswith("| moons MLP | 1 | 3 | ")
