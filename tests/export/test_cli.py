"""python -m export: what it prints on success, one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from export.__main__ import main
from tests.conftest import ROOT
from tests.export.helpers import copy_checkpoint
from training.checkpoint import load_checkpoint


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    assert err[0].startswith("error: ")
    return err[0]


def test_onnx_export_prints_attention_hash_and_parity(tiny_checkpoints, tmp_path, capsys):
    d = copy_checkpoint(tiny_checkpoints["digits-ddpm"], tmp_path)
    assert main(["--checkpoint", str(d), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    sha = load_checkpoint(d).manifest["files"]["net-ema.onnx"]["sha256"]
    assert f"net-ema.onnx sha256 {sha}" in out
    assert "fused attention: 4 Attention node(s), no Softmax (opset 23)" in out
    assert "batch 1:" in out and "batch 64:" in out and "-> ok" in out


def test_missing_checkpoint(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope"), "--format", "onnx"]) == 2
    assert "checkpoint directory not found" in _error_line(capsys)


def test_directory_without_manifest(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path), "--format", "onnx"]) == 2
    assert "manifest.json is missing" in _error_line(capsys)


def test_corrupt_weights_are_refused(tiny_checkpoints, tmp_path, capsys):
    d = copy_checkpoint(tiny_checkpoints["moons-fm"], tmp_path)
    (d / "ema.safetensors").write_bytes(b"not a safetensors file")
    assert main(["--checkpoint", str(d), "--format", "onnx"]) == 2
    assert "sha256 mismatch for ema.safetensors" in _error_line(capsys)
    assert not (d / "net-ema.onnx").exists()


def test_unparsable_manifest_is_refused(tiny_checkpoints, tmp_path, capsys):
    d = copy_checkpoint(tiny_checkpoints["moons-fm"], tmp_path)
    (d / "manifest.json").write_text('{"format_version": 1, ')
    assert main(["--checkpoint", str(d), "--format", "onnx"]) == 2
    assert "not valid JSON" in _error_line(capsys)


def test_unknown_net_in_manifest_is_refused(tiny_checkpoints, tmp_path, capsys):
    d = copy_checkpoint(tiny_checkpoints["moons-fm"], tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["net"]["kind"] = "unet"
    (d / "manifest.json").write_text(json.dumps(m))
    assert main(["--checkpoint", str(d), "--format", "onnx"]) == 2
    assert "net.kind: unknown 'unet'" in _error_line(capsys)


def test_opset_out_of_range(tiny_checkpoints, capsys):
    assert main(["--checkpoint", str(tiny_checkpoints["moons-fm"]), "--format", "onnx", "--opset", "12"]) == 2
    assert "--opset 12 is below 17" in _error_line(capsys)


def test_tensorrt_without_tensorrt(tiny_checkpoints, tmp_path, capsys, monkeypatch):
    """This machine has no TensorRT; `sys.modules[...] = None` makes the import fail the same way on
    one that has it, so the test checks the message rather than the machine."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    d = copy_checkpoint(tiny_checkpoints["moons-fm"], tmp_path)
    before = (d / "manifest.json").read_text()
    assert main(["--checkpoint", str(d), "--format", "tensorrt"]) == 2
    line = _error_line(capsys)
    assert "TensorRT is not installed" in line and "[gpu]" in line
    assert (d / "manifest.json").read_text() == before  # nothing exported on the way to the error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-batch", "0"], "min-batch must be a positive integer, got 0"),
        (["--min-batch", "16", "--opt-batch", "8"], "min <= opt <= max, got min=16 opt=8 max=512"),
        (["--opt-batch", "64", "--max-batch", "32"], "min <= opt <= max, got min=1 opt=64 max=32"),
        (["--workspace-mb", "0"], "--workspace-mb must be a positive integer"),
    ],
)
def test_tensorrt_profile_errors_come_before_anything_else(tiny_checkpoints, capsys, args, message):
    assert main(["--checkpoint", str(tiny_checkpoints["moons-fm"]), "--format", "tensorrt", *args]) == 2
    assert message in _error_line(capsys)


def test_cli_subprocess_help_and_argparse_errors(capsys):
    run = [sys.executable, "-m", "export"]
    help_ = subprocess.run([*run, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0
    assert "Attention" in help_.stdout and "--max-batch" in help_.stdout
    # argparse's own errors through the same `main` in process: it exits 2 with its usage line
    with pytest.raises(SystemExit) as bad:
        main(["--checkpoint", "x", "--format", "torchscript"])
    err = capsys.readouterr().err
    assert bad.value.code == 2
    assert "invalid choice: 'torchscript'" in err and "Traceback" not in err
