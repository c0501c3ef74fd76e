"""The onnxruntime backend: found through the manifest, session options, providers, the forward contract."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from sampling.ort_session import default_threads
from serving.backends import BackendUnavailable, load_backend
from serving.backends.ort_backend import PROVIDER_PREFERENCE, OrtBackend, choose_providers
from tests.export.helpers import exported_checkpoints
from training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    return exported_checkpoints(tiny_checkpoints, tmp_path_factory)


def test_loads_through_the_registry_with_deliberate_session_options(exported):
    backend = load_backend("onnxruntime", load_checkpoint(exported["moons-fm"]), num_threads=1)
    assert isinstance(backend, OrtBackend)
    assert backend.name == "onnxruntime" and backend.max_batch is None
    assert backend.file_name == "net-ema.onnx"
    assert backend.num_threads == 1
    opts = backend.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert backend.session.get_providers() == ["CPUExecutionProvider"]  # what this CPU machine has


def test_threads_default_to_the_cpus_this_process_may_use(exported):
    backend = OrtBackend(load_checkpoint(exported["moons-fm"]))
    assert backend.session.get_session_options().intra_op_num_threads == default_threads() >= 1


def test_forward_contract(exported):
    ckpt = load_checkpoint(exported["digits-fm"])
    backend = OrtBackend(ckpt, optimization_level="basic")
    x = torch.randn(5, *ckpt.data_shape, dtype=torch.float64)  # dtypes are converted, like the torch backend
    t = torch.tensor([0, 1, 0.5, 0.25, 0.75])
    y = torch.tensor([0, 3, ckpt.null_label, 9, 1], dtype=torch.int32)
    out = backend(x, t, y)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.shape == (5, *ckpt.data_shape)
    with torch.inference_mode():
        ref = ckpt.net()(x.float(), t, y.long())
    assert (out - ref).abs().max() <= 1e-4


def test_provider_preference():
    gpu = [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
        "AzureExecutionProvider",
    ]
    assert choose_providers(None, gpu) == list(PROVIDER_PREFERENCE)
    assert choose_providers(None, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(None, ort.get_available_providers())[-1] == "CPUExecutionProvider"
    assert choose_providers(["CPUExecutionProvider"], gpu) == ["CPUExecutionProvider"]


def test_asking_for_a_provider_that_is_not_installed(exported):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(BackendUnavailable, match=r"\['CUDAExecutionProvider'\] not available here.*onnxruntime-gpu"):
        OrtBackend(load_checkpoint(exported["moons-fm"]), providers=["CUDAExecutionProvider"])


def test_checkpoint_without_export_names_the_command(tiny_checkpoints):
    ckpt = load_checkpoint(tiny_checkpoints["moons-ddpm"])
    assert not ckpt.files_with_role("onnx")
    with pytest.raises(BackendUnavailable, match=r"python -m export --checkpoint .* --format onnx --weights ema"):
        load_backend("onnxruntime", ckpt)


def test_raw_weights_need_their_own_export(exported):
    with pytest.raises(BackendUnavailable, match="no ONNX export of its raw weights"):
        OrtBackend(load_checkpoint(exported["moons-fm"]), weights="raw")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"optimization_level": "max"}, "optimization_level: unknown 'max'"),
        ({"num_threads": 0}, "num_threads"),
    ],
)
def test_bad_options(exported, options, message):
    with pytest.raises(ValueError, match=message):
        OrtBackend(load_checkpoint(exported["moons-fm"]), **options)
