"""Reflow against closed forms: a Gaussian teacher's ODE map is affine (x = m + C^1/2 z), so its couplings are
known exactly and the ideal student's velocity is constant along each line: one Euler step lands on the teacher's
sample, where the teacher's own single Euler step collapses every sample onto the mean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.__main__ import main as distill_main
from distill.reflow import draw_couplings
from tests.conftest import ROOT
from tests.oracles import GaussianFM
from training.checkpoint import load_checkpoint
from training.config import config_from_dict
from training.data import Dataset, Normalization
from training.paths.objectives import FMObjective
from training.trainer import train

MEAN = torch.tensor([1.5, -0.5])
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]])


def _euler(forward, z: torch.Tensor, k: int, label: int) -> torch.Tensor:
    x, y = z.clone(), torch.full((len(z),), label)
    for i in range(k):
        x = x + forward(x, torch.full((len(z),), i / k), y) / k
    return x


def test_couplings_are_the_teachers_exact_flow_map() -> None:
    oracle = GaussianFM(MEAN, COV)
    z, x, y = draw_couplings(oracle, FMObjective(), (2,), 2, 3000, steps=32, null_fraction=0.25, seed=3)
    torch.testing.assert_close(x, oracle.flow_map(z), atol=2e-5, rtol=0)
    null = (y == 2).float().mean().item()
    assert 0.2 < null < 0.3 and set(y.unique().tolist()) == {0, 1, 2}
    z2, x2, y2 = draw_couplings(oracle, FMObjective(), (2,), 2, 3000, steps=32, null_fraction=0.25, seed=3)
    assert torch.equal(z, z2) and torch.equal(x, x2) and torch.equal(y, y2)  # deterministic in the seed


def test_a_student_on_straight_couplings_samples_in_one_step(tmp_path: Path) -> None:
    oracle = GaussianFM(MEAN, COV)
    z, x, y = draw_couplings(oracle, FMObjective(), (2,), 1, 8192, steps=16, null_fraction=0.0, seed=0)
    data = Dataset("moons", x, y, (2,), 1, Normalization([0.0, 0.0], [1.0, 1.0]), noise=z)
    cfg = config_from_dict(
        {
            "name": "gauss-reflow",
            "data": {"kind": "moons"},
            "net": {"kind": "mlp", "hidden": 64, "depth": 2},
            "objective": {"kind": "fm"},
            "train": {
                "steps": 1500,
                "batch_size": 256,
                "lr": 3e-3,
                "ema_decay": 0.99,
                "warmup_steps": 20,
                "checkpoint_every": 0,
            },
        }
    )
    out = train(cfg, tmp_path / "s", dataset=data, progress=False)
    student = load_checkpoint(out).net("ema")
    noise = torch.randn((4000, 2), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        one = _euler(student, noise, 1, 0)
        teacher_one = _euler(oracle, noise, 1, 0)
    exact = oracle.flow_map(noise)
    # The teacher's one step maps every z to E[x1] = m: no spread at all. The student's one step follows the map.
    assert teacher_one.std(0).max() < 1e-4
    assert (one - exact).pow(2).sum(1).mean().sqrt() < 0.05
    torch.testing.assert_close(torch.cov(one.T), COV, atol=0.05, rtol=0)


def _write(tmp: Path, **reflow) -> Path:
    path = tmp / "student.yaml"
    cfg = {
        "name": "moons-fm-reflow",
        "data": {"kind": "moons"},
        "net": {"kind": "mlp", "hidden": 16, "depth": 2},
        "objective": {"kind": "fm", "path": "linear"},
        "train": {"steps": 30, "batch_size": 64, "checkpoint_every": 0},
        "reflow": {"pairs": 256, "steps": 4, **reflow},
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """`python -m distill ARGS`, in this process: (exit code, stderr)."""
    capsys.readouterr()
    code = distill_main([*args, "--no-progress"])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = config_from_dict(
        {
            "name": "tiny-fm",
            "data": {"kind": "moons", "n": 2000},
            "net": {"kind": "mlp", "hidden": 16, "depth": 2},
            "objective": {"kind": "fm"},
            "train": {"steps": 20, "batch_size": 64, "checkpoint_every": 0},
        }
    )
    return train(cfg, tmp_path_factory.mktemp("teacher") / "tiny-fm", progress=False)


def test_cli_distills_a_student_that_records_its_teacher(tmp_path: Path, tiny_teacher: Path, capsys) -> None:
    config = str(_write(tmp_path, teacher="elsewhere/tiny-fm"))  # --teacher and --pairs override the config
    code, err = _cli(
        capsys, "--config", config, "--teacher", str(tiny_teacher), "--pairs", "200", "--out", str(tmp_path / "s")
    )
    assert code == 0, err
    ckpt = load_checkpoint(tmp_path / "s")
    teacher = load_checkpoint(tiny_teacher)
    rf = ckpt.manifest["training"]["reflow"]
    assert rf["teacher"] == "tiny-fm" and rf["pairs"] == 200 and rf["steps"] == 4
    assert rf["teacher_weights_sha256"] == teacher.manifest["files"]["ema.safetensors"]["sha256"]
    assert ckpt.objective == FMObjective() and ckpt.num_classes == teacher.num_classes
    assert ckpt.normalization == teacher.normalization
    # Started from the teacher's weights: 30 small steps leave it near them, far nearer than a fresh init is.
    t, s = teacher.net("ema").state_dict(), ckpt.net("raw").state_dict()
    fresh = ckpt.build_net().state_dict()
    moved = sum((s[k] - t[k]).norm() for k in t)
    assert moved < 0.5 * sum((fresh[k] - t[k]).norm() for k in t)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"teacher": "no/such/dir"}, "no/such/dir"),
        ({"sampler": "ddim"}, "reflow.sampler"),
        ({"null_fraction": 1.5}, "reflow.null_fraction"),
        ({"pairs": 0}, "reflow.pairs"),
        ({"solver": "rk4"}, "unknown config key(s) in 'reflow': solver"),
    ],
)
def test_cli_refuses_a_bad_reflow_config_in_one_line(tmp_path: Path, tiny_teacher: Path, edit, message, capsys):
    code, err = _cli(capsys, "--config", str(_write(tmp_path, **{"teacher": str(tiny_teacher), **edit})))
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "s").exists()


def test_cli_refuses_a_ddpm_teacher_and_a_different_net(tmp_path: Path, tiny_teacher: Path, capsys) -> None:
    code, err = _cli(capsys, "--config", str(_write(tmp_path, teacher=str(ROOT / "models" / "moons-ddpm"))))
    assert code == 2 and "a flow-matching checkpoint is needed" in err, err
    path = _write(tmp_path, teacher=str(tiny_teacher))
    cfg = json.loads(path.read_text())
    cfg["net"]["hidden"] = 32
    path.write_text(json.dumps(cfg))
    code, err = _cli(capsys, "--config", str(path))
    assert code == 2 and "differs from the teacher's" in err, err


def test_training_cli_points_a_reflow_config_to_distill(tmp_path: Path, tiny_teacher: Path) -> None:
    """The real command line, once: `python -m training` on a reflow config says which command trains it."""
    r = subprocess.run(
        [sys.executable, "-m", "training", "--config", str(_write(tmp_path, teacher=str(tiny_teacher)))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "python -m distill" in r.stderr, r.stderr
