"""TensorRT build: the parts that run without TensorRT (profiles, names, the missing-TensorRT error).

The engine build itself needs an NVIDIA GPU and the `tensorrt` package; tests/serving/test_backends_cuda.py
builds and checks one where they exist (scripts/gpu_check.sh).
"""

from __future__ import annotations

import sys

import pytest

from export.tensorrt_build import (
    BatchProfile,
    TensorRTUnavailable,
    build_engine,
    default_timing_cache,
    plan_file_name,
    require_tensorrt,
)
from training.checkpoint import load_checkpoint


def test_profile_shapes_cover_every_input():
    shapes = BatchProfile(1, 64, 512).shapes((1, 8, 8))
    assert shapes == {
        "x": ((1, 1, 8, 8), (64, 1, 8, 8), (512, 1, 8, 8)),
        "t": ((1,), (64,), (512,)),
        "y": ((1,), (64,), (512,)),
    }
    assert BatchProfile(4, 4, 4).shapes((2,))["x"] == ((4, 2), (4, 2), (4, 2))
    assert BatchProfile(1, 8, 32).to_dict() == {"min": 1, "opt": 8, "max": 32}


@pytest.mark.parametrize(
    ("lo", "mid", "hi", "message"),
    [
        (0, 1, 2, "min-batch must be a positive integer, got 0"),
        (1, -3, 2, "opt-batch must be a positive integer, got -3"),
        (1, 2, 2.5, "max-batch must be a positive integer, got 2.5"),
        (1, 2, True, "max-batch must be a positive integer, got True"),
        (2, 1, 4, "min <= opt <= max"),
        (1, 8, 4, "min <= opt <= max"),
    ],
)
def test_bad_profiles_are_refused(lo, mid, hi, message):
    with pytest.raises(ValueError, match=message):
        BatchProfile(lo, mid, hi)


def test_plan_names_follow_weights_and_precision():
    assert plan_file_name("ema", False) == "net-ema.plan"
    assert plan_file_name("raw", True) == "net-raw-fp16.plan"


def test_timing_cache_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_timing_cache() == tmp_path / "stepserve" / "tensorrt-timing.cache"


def test_missing_tensorrt_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as it does on this CPU machine
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT is not installed .*pip install -e '\.\[gpu\]'"):
        require_tensorrt()


def test_build_engine_fails_before_touching_the_checkpoint(tiny_checkpoints, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    d = tiny_checkpoints["moons-fm"]
    before = (d / "manifest.json").read_text()
    with pytest.raises(TensorRTUnavailable):
        build_engine(load_checkpoint(d), "net-ema.onnx", BatchProfile(1, 8, 64))
    with pytest.raises(ValueError, match="workspace-mb"):
        build_engine(load_checkpoint(d), "net-ema.onnx", BatchProfile(1, 8, 64), workspace_mb=0)
    assert (d / "manifest.json").read_text() == before
    assert not list(d.glob("*.plan"))
