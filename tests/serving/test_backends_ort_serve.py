"""The onnxruntime backend in use: `python -m serving sample --backend onnxruntime`, and a Serve
application whose config names it, answering real HTTP requests on real Ray Serve. The reference is
the bare sampler driven in-process by the eager torch net."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from sampling.driver import sample
from sampling.request import SampleSpec, to_data_space
from serving.__main__ import main as serving_main
from tests.export.helpers import exported_checkpoints
from tests.serving.conftest import ServeCluster, app_args
from training.checkpoint import load_checkpoint

SAMPLE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    return exported_checkpoints(tiny_checkpoints, tmp_path_factory)


def _reference(ckpt_dir: Path, **request) -> np.ndarray:
    """Data-space samples from the eager torch net (EMA weights), driven in this process."""
    ckpt = load_checkpoint(ckpt_dir)
    net = ckpt.net()
    return to_data_space(ckpt, sample(ckpt, lambda x, t, y: net(x, t, y), SampleSpec(**request)))


def test_offline_sampling_cli_with_the_onnxruntime_backend(exported, tmp_path, capsys):
    d = exported["moons-ddpm"]
    args = ["sample", "--checkpoint", str(d), "--sampler", "ddim", "--steps", "10", "--num-samples", "64"]
    args += ["--guidance", "2", "--class-label", "1", "--seed", "5"]
    assert serving_main([*args, "--backend", "onnxruntime", "--out", str(tmp_path / "ort.npy")]) == 0
    assert "(onnxruntime)" in capsys.readouterr().out
    ref = _reference(d, sampler="ddim", steps=10, num_samples=64, guidance=2.0, class_label=1, seed=5)
    got = np.load(tmp_path / "ort.npy")
    assert got.shape == ref.shape == (64, 2)
    assert np.abs(got - ref).max() <= SAMPLE_TOLERANCE


def test_offline_cli_without_an_export_says_how_to_make_one(tiny_checkpoints, tmp_path, capsys):
    args = ["sample", "--checkpoint", str(tiny_checkpoints["moons-fm"]), "--sampler", "fm-euler", "--steps", "2"]
    assert serving_main([*args, "--backend", "onnxruntime", "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "python -m export --checkpoint" in err and "--format onnx" in err


@pytest.mark.slow
def test_serve_config_naming_onnxruntime_serves_requests(serve_cluster: ServeCluster, exported):
    models = ("moons-fm", "digits-ddpm")
    args = app_args(exported, models=models, backend="onnxruntime", backend_options={"num_threads": 1})
    base = serve_cluster.deploy("ort", "/ort", args)
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            for model in models:
                info = client.get(f"/v1/models/{model}")
                assert info.status_code == 200 and info.json()["backend"] == "onnxruntime"
            requests = [
                {"model": "moons-fm", "sampler": "fm-rk4", "steps": 4, "num_samples": 9, "seed": 1},
                {
                    "model": "moons-fm",
                    "sampler": "fm-euler",
                    "steps": 12,
                    "num_samples": 5,
                    "seed": 2,
                    "guidance": 3.0,
                    "class_label": 0,
                },
                {"model": "digits-ddpm", "sampler": "ddim", "steps": 6, "num_samples": 3, "seed": 3},
            ]
            for body in requests:
                r = client.post("/v1/samples", json=body)
                assert r.status_code == 200, r.text
                got = r.json()
                assert got["model"] == body["model"] and got["nfe"] > 0
                request = {k: v for k, v in body.items() if k != "model"}
                ref = _reference(exported[body["model"]], **request)
                assert list(ref.shape) == got["shape"]
                assert np.abs(np.asarray(got["samples"], dtype=np.float32) - ref).max() <= SAMPLE_TOLERANCE
            bad = client.post("/v1/samples", json={**requests[0], "steps": 0})
            assert bad.status_code == 422 and "steps" in bad.text
    finally:
        serve_cluster.delete("ort")
