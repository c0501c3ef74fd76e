"""The four default checkpoints committed in models/ load with the current code and format."""

import pytest
import torch

from tests.conftest import DEFAULT_MODELS, ROOT
from training.checkpoint import load_checkpoint


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_committed_checkpoint_loads_and_runs(name):
    d = ROOT / "models" / name
    assert (d / "manifest.json").is_file(), f"{d} is missing: run `make train` and commit models/"
    ckpt = load_checkpoint(d)  # verifies every sha256
    assert ckpt.name == name
    assert ckpt.manifest["training"]["steps"] == ckpt.manifest["training"]["planned_steps"]  # fully trained
    net = ckpt.net("ema")
    x = torch.randn(3, *ckpt.data_shape)
    out = net(x, torch.zeros(3), torch.tensor([0, 1, ckpt.null_label]))
    assert out.shape == x.shape and torch.isfinite(out).all()
