"""The TensorRT backend where TensorRT cannot run: clear errors, and the profile's batch bounds.

Running an engine needs an NVIDIA GPU and the `tensorrt` package: see test_backends_cuda.py.
"""

from __future__ import annotations

import sys

import pytest

from serving.backends import BackendUnavailable, load_backend
from serving.backends.trt_backend import check_batch, find_plan_file
from tests.export.helpers import copy_checkpoint
from training.checkpoint import add_file, load_checkpoint


def test_no_engine_names_the_export_command(tiny_checkpoints):
    with pytest.raises(BackendUnavailable, match=r"no TensorRT engine .* --format tensorrt --weights ema"):
        load_backend("tensorrt", load_checkpoint(tiny_checkpoints["moons-fm"]))


def test_engine_recorded_but_tensorrt_missing(tiny_checkpoints, tmp_path, monkeypatch):
    """A checkpoint carried from a GPU node to a machine without TensorRT. The plan's bytes are not an
    engine (none can be built here); the backend must stop at the missing runtime before reading them."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    d = copy_checkpoint(tiny_checkpoints["moons-fm"], tmp_path)
    (d / "net-ema.plan").write_bytes(b"engine built elsewhere")
    add_file(d, "net-ema.plan", "tensorrt", weights="ema", fp16=False, profile={"min": 1, "opt": 8, "max": 64})
    ckpt = load_checkpoint(d)
    assert find_plan_file(ckpt, "ema", None) == "net-ema.plan"
    assert find_plan_file(ckpt, "ema", False) == "net-ema.plan"
    with pytest.raises(BackendUnavailable, match="no TensorRT engine"):
        find_plan_file(ckpt, "ema", True)
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        load_backend("tensorrt", ckpt)


def test_batches_outside_the_profile_are_refused():
    profile = {"min": 2, "opt": 8, "max": 64}
    check_batch(profile, 2)
    check_batch(profile, 64)
    with pytest.raises(ValueError, match=r"batch 65 is outside .* \[2, 64\]"):
        check_batch(profile, 65)
    with pytest.raises(ValueError, match="batch 1 is outside"):
        check_batch(profile, 1)
