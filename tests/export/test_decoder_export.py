"""A latent model's decoder exported to ONNX (`python -m export onnx`): listed in the manifest with its hash,
dynamic batch, equal to the torch decoder, and what serving's onnxruntime decode runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from export.__main__ import main
from export.onnx_export import DECODER_ONNX, ExportError, export_decoder_onnx
from export.parity import decoder_parity
from sampling.request import decoder_of, onnx_decoder
from training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def exported(tiny_latent: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ckpt = tmp_path_factory.mktemp("exp") / "m"
    shutil.copytree(tiny_latent, ckpt)
    assert main(["--checkpoint", str(ckpt), "--format", "onnx"]) == 0
    return ckpt


def test_export_writes_the_decoder_beside_the_net_and_it_equals_torch(exported: Path) -> None:
    ckpt = load_checkpoint(exported)
    info = ckpt.manifest["files"][DECODER_ONNX]
    assert info["role"] == "decoder-onnx" and info["dynamic_axes"] == {"batch": 0}
    decode = onnx_decoder(ckpt.file(DECODER_ONNX))
    assert decoder_parity(ckpt, decode, batches=(1, 9)) <= 1e-4
    assert decode(torch.zeros(5, *ckpt.data_shape)).shape == (5, *ckpt.output_shape)


def test_servings_onnxruntime_decode_runs_the_export_and_agrees_with_torch(exported: Path) -> None:
    ckpt = load_checkpoint(exported)
    x = torch.randn(4, *ckpt.data_shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(decoder_of(ckpt, "onnxruntime")(x), decoder_of(ckpt, "torch")(x), atol=1e-4, rtol=0)


def test_a_model_of_data_space_has_no_decoder_to_export(tiny_checkpoints: dict[str, Path]) -> None:
    with pytest.raises(ExportError, match="not a latent model"):
        export_decoder_onnx(load_checkpoint(tiny_checkpoints["digits-fm"]))
