"""`python -m serving sample`: the real entry point in a subprocess once per behaviour that needs it (exit
status, output files, the missing-checkpoint line); the bad-input table through the same `main` in process,
which prints and returns exactly what the entry point exits with."""

import subprocess
import sys

import numpy as np
import pytest

from serving.__main__ import main
from tests.conftest import ROOT


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "serving", "sample", *args], capture_output=True, text=True, cwd=ROOT)


def test_sample_cli_writes_data_space_npy_and_png(tiny_checkpoints, tmp_path):
    request = f"--checkpoint {tiny_checkpoints['digits-fm']} --sampler fm-rk4 --steps 2 --num-samples 6 "
    request += "--guidance 2 --class-label 3 --seed 4"
    out = tmp_path / "s.npy"
    r = _cli(*request.split(), "--out", str(out), "--plot")
    assert r.returncode == 0, r.stderr
    x = np.load(out)
    assert x.shape == (6, 1, 8, 8) and x.min() >= 0.0 and x.max() <= 1.0
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = tmp_path / "t.npy"
    assert main(["sample", *request.split(), "--out", str(again)]) == 0
    assert np.array_equal(np.load(again), x)  # same seed, same samples


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sampler", "fm-euler", "--steps", "3"], "does not fit a ddpm model"),
        (["--sampler", "ddim", "--steps", "0"], "steps must be in [1, 1000], got 0"),
        (["--sampler", "ddim", "--steps", "3", "--guidance", "2"], "guidance needs a class_label"),
        (["--sampler", "ddim", "--steps", "3", "--class-label", "7"], "class_label must be in [0, 1]"),
        (["--sampler", "ddpm", "--steps", "3", "--eta", "0.5"], "eta is not an option of 'ddpm'"),
        (
            ["--sampler", "ddim", "--steps", "3", "--spacing", "cosine"],
            "spacing must be one of ['trailing', 'leading', 'linspace']",
        ),
        (["--sampler", "ddim", "--steps", "3", "--backend", "tpu"], "unknown backend"),
    ],
)
def test_sample_cli_bad_input_is_one_line(tiny_checkpoints, tmp_path, capsys, args, message):
    code = main(
        ["sample", "--checkpoint", str(tiny_checkpoints["moons-ddpm"]), "--out", str(tmp_path / "x.npy"), *args]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "x.npy").exists()


def test_sample_cli_missing_checkpoint(tmp_path):
    r = _cli("--checkpoint", str(tmp_path / "nope"), "--sampler", "ddim", "--steps", "3", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "checkpoint directory not found" in r.stderr
