import subprocess
import sys

import pytest
import torch

from sampling.driver import sample
from sampling.request import SampleSpec
from tests.conftest import DEFAULT_MODELS, ROOT
from training.__main__ import main as training_main
from training.checkpoint import load_checkpoint
from training.config import load_config
from training.data import load_dataset
from training.nets import build_net
from training.nets.embeddings import SinusoidalTimeEmbedding
from training.trainer import train

EXPECTED = {
    "moons-ddpm": ("mlp", "ddpm", (2,), 2),
    "moons-fm": ("mlp", "fm", (2,), 2),
    "digits-ddpm": ("dit", "ddpm", (1, 8, 8), 10),
    "digits-fm": ("dit", "fm", (1, 8, 8), 10),
}


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_tiny_training_run_of_each_default_config_loads_and_samples(name, tmp_path):
    # Its duration is measured by the training benchmark, not asserted here (shared, noisy machines).
    ckpt_dir = train(load_config(ROOT / "configs" / f"{name}.yaml"), tmp_path / name, max_steps=15, progress=False)
    ckpt = load_checkpoint(ckpt_dir)
    net_kind, obj_kind, shape, classes = EXPECTED[name]
    assert ckpt.manifest["net"]["kind"] == net_kind and ckpt.objective.kind == obj_kind
    assert ckpt.data_shape == shape and ckpt.num_classes == classes
    assert ckpt.manifest["net"]["t_scale"] == (1000.0 if obj_kind == "fm" else 1.0)
    sampler = "fm-euler" if obj_kind == "fm" else "ddim"
    x = sample(ckpt, ckpt.net(), SampleSpec(sampler, steps=3, num_samples=4, class_label=1, guidance=2.0))
    assert x.shape == (4, *shape) and torch.isfinite(x).all()


def test_training_reduces_the_loss():
    """A short moons-fm run: the trained (raw) weights' loss on fixed noise falls well below the initial one."""
    cfg = load_config(ROOT / "configs" / "moons-fm.yaml")
    data = load_dataset("moons", n=4000, seed=1)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        ckpt = load_checkpoint(train(cfg, d, max_steps=300, progress=False))
        obj = ckpt.objective
        y = data.y[:2000]

        def loss(net):
            return obj.loss(net, data.x[:2000], y, torch.Generator().manual_seed(0)).item()

        init = ckpt.build_net().eval()
        assert loss(ckpt.net("raw")) < 0.8 * loss(init)


def test_data_sets_and_normalization():
    moons = load_dataset("moons", n=1000, seed=0)
    assert moons.x.shape == (1000, 2) and set(moons.y.tolist()) == {0, 1}
    assert torch.allclose(moons.x.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(moons.x.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    digits = load_dataset("digits")
    assert digits.x.shape == (1797, 1, 8, 8) and digits.x.min() >= -1 and digits.x.max() <= 1
    back = digits.normalization.denormalize(digits.x)
    assert back.min() >= 0 and back.max() <= 1 and torch.allclose(digits.normalization.normalize(back), digits.x)
    with pytest.raises(ValueError, match="data.kind"):
        load_dataset("cifar")


def test_time_embedding_t_scale_spreads_fm_time_over_the_frequency_ladder():
    """Without t_scale the FM embedding of t in [0, 1] is nearly rank 2; with t_scale = 1000 it is not."""
    t = torch.linspace(0, 1, 60)
    ranks = {}
    for scale in (1.0, 1000.0):
        e = SinusoidalTimeEmbedding(32, t_scale=scale)(t)
        s = torch.linalg.svdvals(e - e.mean(0))
        ranks[scale] = int((s > 1e-2 * s[0]).sum())
    assert ranks[1.0] <= 3 and ranks[1000.0] >= 10, ranks


def test_dit_is_adaln_zero_and_norms_have_no_affine():
    net = build_net("dit", {"patch": 2, "hidden": 32, "depth": 2, "heads": 4}, (1, 8, 8), 10, 1.0)
    x = torch.randn(5, 1, 8, 8)
    out = net(x, torch.rand(5) * 999, torch.randint(0, 11, (5,)))
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # zero-initialised final layer
    for block in net.blocks:
        assert block.norm1.weight is None and block.norm2.weight is None
        h = torch.randn(5, 16, 32)
        assert torch.equal(block(h, torch.randn(5, 32)), h)  # zero gates: each block is the identity at init


def test_training_cli_errors_are_one_line(tmp_path, capsys):
    """The entry point in a subprocess for one bad config (exit status 2, one line naming the field); the other
    two cases through the same `main` in process, which prints and returns what the entry point exits with."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnet: {kind: mlp}\nobjective: {kind: fm}\ntrain: {stepz: 3}\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    r = subprocess.run(
        [sys.executable, "-m", "training", "--config", str(bad)], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "stepz" in r.stderr
    for config in (tmp_path / "missing.yaml", broken):
        assert training_main(["--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
