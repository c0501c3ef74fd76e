"""onnxruntime against torch: per evaluation (<= 1e-4) and over whole sampler runs (<= 1e-3)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from export.onnx_export import export_onnx
from export.parity import EVAL_TOLERANCE, SAMPLE_TOLERANCE, eval_parity, random_inputs
from serving.backends import load_backend
from tests.conftest import DEFAULT_MODELS, ROOT
from tests.export.helpers import exported_checkpoints, sampler_run
from training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    return exported_checkpoints(tiny_checkpoints, tmp_path_factory)


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_eval_parity_at_batch_1_7_64(exported, name):
    ckpt = load_checkpoint(exported[name])
    backend = load_backend("onnxruntime", ckpt)
    results = eval_parity(ckpt, backend, (1, 7, 64))
    assert [r.batch for r in results] == [1, 7, 64]
    assert all(r.max_abs_diff <= EVAL_TOLERANCE for r in results), results
    # The comparison is not vacuous: the torch net's outputs are O(0.1) or more on these inputs.
    x, t, y = random_inputs(ckpt, 64)
    with torch.inference_mode():
        assert ckpt.net()(x, t, y).std() > 0.05


def test_random_inputs_cover_the_null_label_and_time_range(tiny_checkpoints):
    ckpt = load_checkpoint(tiny_checkpoints["moons-ddpm"])
    _, t, y = random_inputs(ckpt, 4096)
    assert set(y.tolist()) == set(range(ckpt.null_label + 1))
    assert t.min() >= 0 and t.max() <= 999 and t.max() > 900 and torch.equal(t, t.round())
    _, t, _ = random_inputs(load_checkpoint(tiny_checkpoints["moons-fm"]), 4096)
    assert 0 <= t.min() < 0.01 and 0.99 < t.max() <= 1


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_guided_sampler_runs_agree_from_the_same_seed(exported, name):
    ckpt = load_checkpoint(exported[name])
    net = ckpt.net()
    backend = load_backend("onnxruntime", ckpt)
    with torch.inference_mode():
        ref = sampler_run(ckpt, lambda x, t, y: net(x, t, y))
    out = sampler_run(ckpt, backend)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= SAMPLE_TOLERANCE
    # ...and the runs depend on the net: another seed gives other samples.
    assert (sampler_run(ckpt, backend, seed=4) - out).abs().max() > 10 * SAMPLE_TOLERANCE


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_parity_on_the_trained_default_models(name, tmp_path):
    """The committed models in models/ (exported into a temporary copy, models/ is left untouched)."""
    src = ROOT / "models" / name
    if not (src / "manifest.json").is_file():
        pytest.skip(f"models/{name} is not trained yet (`make train`)")
    d = tmp_path / name
    shutil.copytree(src, d)  # an export already there is overwritten and re-recorded in the copy
    export_onnx(load_checkpoint(d))
    ckpt = load_checkpoint(d)
    backend = load_backend("onnxruntime", ckpt)
    assert all(r.ok for r in eval_parity(ckpt, backend, (1, 7, 64))), eval_parity(ckpt, backend, (1, 7, 64))
    net = ckpt.net()
    with torch.inference_mode():
        ref = sampler_run(ckpt, lambda x, t, y: net(x, t, y))
    assert (sampler_run(ckpt, backend) - ref).abs().max() <= SAMPLE_TOLERANCE
